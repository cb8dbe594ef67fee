"""``python -m catalog import-markdown``: turn an awesome README into ``papers/<id>.yaml`` files.

The README is parsed with mistune 3's AST, not line regexes. Each entry is a paragraph
followed by a two-item list, as in the awesome-list CONTRIBUTING format::

    Method. *Venue Year*.
    \\[[arXiv](https://arxiv.org/abs/2111.11837)\\]
    <[GitHub](https://github.com/owner/repo)>
    \\- One-sentence description.

    - Paper Title
    - First Author and Second Author

Headings give the sections (a "Contents" heading and its list are skipped). The same paper
listed under two headings becomes one file with two sections. Only mechanical, safe clean-ups
are applied (https, arXiv version suffixes, double spaces, trailing slashes on IEEE URLs);
link kinds and code-host labels come from ``catalog/data/link-kinds.yaml``;
factual corrections belong in the data afterwards. Any entry that cannot be parsed is reported
as ``FILE:line: message`` and nothing is written.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import mistune
import yaml
from mistune.block_parser import BlockParser
from mistune.core import BlockState

from catalog.text import title_key, url_host

CONTENTS_TITLES = {"contents", "table of contents", "toc"}

_ARXIV_URL = re.compile(
    r"^https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/"
    r"(?P<id>\d{4}\.\d{4,5}|[a-z-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?(?:\.pdf)?/?$"
)
_DOI_URL = re.compile(r"^https?://(?:dx\.)?doi\.org/(?P<doi>10\.\d{4,9}/\S+)$")
_VENUE_YEAR = re.compile(r"^(?P<venue>.*?)\s*(?P<year>(?:19|20)\d{2})?$")
_PLAIN_VENUE = re.compile(r"^(?P<venue>[A-Za-z][\w&-]*)\s+(?P<year>(?:19|20)\d{2})$")


class ImportFailed(Exception):
    """The README could not be imported; ``problems`` holds ``FILE:line: message`` strings."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class _Section:
    id: str
    title: str
    level: int
    line: int
    parent: "_Section | None" = None
    children: list["_Section"] = field(default_factory=list)
    intro: str = ""
    n_papers: int = 0


@dataclass
class ImportResult:
    """What an import produces: paper id -> data, the derived section tree, warnings."""

    papers: dict[str, dict]
    sections: list[dict] | None  # None when sections came from an existing file
    warnings: list[str]
    per_section: dict[str, int]  # section id -> number of entries written there


# --- mistune with source positions -------------------------------------------------------

class _State(BlockState):
    """Block state that records where each top-level paragraph starts (``_pos``)."""

    def add_paragraph(self, text):
        last = self.last_token()
        new = not (last and last["type"] == "paragraph")
        super().add_paragraph(text)
        if new and self.parent is None:
            self.tokens[-1]["_pos"] = self.cursor


class _Block(BlockParser):
    """Block parser whose top-level tokens carry ``_pos`` (offset in the source)."""

    state_cls = _State

    def parse_method(self, m, state):
        before = len(state.tokens)
        end = super().parse_method(m, state)
        if state.parent is None:
            for token in state.tokens[before:]:
                token.setdefault("_pos", m.start())
        return end


def _markdown() -> mistune.Markdown:
    """A mistune AST parser whose top-level block tokens carry ``_pos`` (offset in the source)."""
    return mistune.Markdown(renderer=None, block=_Block())


# --- small text helpers -----------------------------------------------------------------

def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _inline_text(children: list[dict]) -> str:
    """Inline tokens back to (markdown-flavoured) text; links keep only their text."""
    parts = []
    for tok in children:
        kind = tok["type"]
        if kind in ("text", "codespan_text"):
            parts.append(tok["raw"])
        elif kind == "codespan":
            parts.append(f"`{tok['raw']}`")
        elif kind in ("softbreak", "linebreak"):
            parts.append(" ")
        elif kind == "emphasis":
            parts.append(f"*{_inline_text(tok['children'])}*")
        elif kind == "strong":
            parts.append(f"**{_inline_text(tok['children'])}**")
        elif "children" in tok:
            parts.append(_inline_text(tok["children"]))
        elif "raw" in tok:
            parts.append(tok["raw"])
    return "".join(parts)


def slugify(text: str) -> str:
    """Lower-case ASCII id: ``D^3^ETR`` -> ``d3etr``, ``G-DetKD`` -> ``g-detkd``, ``RM+PFI`` -> ``rm-pfi``."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[\s_/+&.,:;]+", "-", text)
    text = re.sub(r"[^a-z0-9-]", "", text)
    return re.sub(r"-{2,}", "-", text).strip("-")


def _normalise_url(url: str) -> str:
    """Mechanical URL clean-up: https, arXiv abs form without version, no trailing slash on IEEE."""
    url = url.strip()
    if url.startswith("http://"):
        url = "https://" + url[len("http://"):]
    m = _ARXIV_URL.match(url)
    if m:
        return f"https://arxiv.org/abs/{m.group('id')}"
    if url_host(url) == "ieeexplore.ieee.org" and url.endswith("/"):
        url = url.rstrip("/")
    return url


# --- link kinds ----------------------------------------------------------------------------

LINK_KINDS_FILE = Path(__file__).with_name("data") / "link-kinds.yaml"


def load_link_kinds(path: Path = LINK_KINDS_FILE) -> tuple[list[tuple[str, str, tuple[str, ...]]], dict[str, str]]:
    """Paper link kinds as (kind, README label, hosts) and code host -> default label, from the data file."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    kinds = [(str(kind), str(spec["label"]), tuple(spec["hosts"])) for kind, spec in data["paper"].items()]
    return kinds, {str(host): str(label) for host, label in data.get("code", {}).items()}


# --- the importer --------------------------------------------------------------------------

@dataclass
class _Entry:
    line: int
    section: _Section
    data: dict
    key: str  # identity: arXiv id, else normalised title


class _Importer:
    def __init__(self, src: str, filename: str, section_titles: list[dict] | None):
        self.src = src
        self.filename = filename
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.link_kinds, self.code_labels = load_link_kinds()
        self.existing = self._index_sections(section_titles) if section_titles is not None else None
        self.roots: list[_Section] = []
        self.entries: list[_Entry] = []

    # messages
    def _line(self, pos: int) -> int:
        return self.src.count("\n", 0, pos) + 1

    def error(self, line: int, message: str) -> None:
        self.problems.append(f"{self.filename}:{line}: {message}")

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(f"{self.filename}:{line}: warning: {message}")

    # sections
    @staticmethod
    def _index_sections(nodes: list[dict]) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
        """Normalised title -> [(id, ancestor ids)] of an existing section tree."""
        index: dict[str, list[tuple[str, tuple[str, ...]]]] = {}

        def walk(items, ancestors):
            for node in items or []:
                index.setdefault(_clean(str(node["title"])).casefold(), []).append((node["id"], ancestors))
                walk(node.get("children"), ancestors + (node["id"],))

        walk(nodes, ())
        return index

    def _section_id(self, title: str, parent: _Section | None) -> str | None:
        if self.existing is not None:
            candidates = self.existing.get(_clean(title).casefold(), [])
            if parent is not None and len(candidates) > 1:
                candidates = [c for c in candidates if c[1] and c[1][-1] == parent.id]
            if len(candidates) == 1:
                return candidates[0][0]
            return None  # reported only if an entry is written under it
        used = {s.id for s in self._all_sections()}
        base = slugify(title) or "section"
        candidate = base
        if candidate in used and parent is not None:
            candidate = f"{parent.id}-{base}"
        n = 2
        while candidate in used:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def _all_sections(self):
        stack = list(self.roots)
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children)

    def _open_section(self, level: int, title: str, line: int, stack: list[_Section]) -> _Section:
        while stack and stack[-1].level >= level:
            stack.pop()
        parent = stack[-1] if stack else None
        section = _Section(id=self._section_id(title, parent) or "", title=title, level=level, line=line, parent=parent)
        (parent.children if parent else self.roots).append(section)
        stack.append(section)
        return section

    # the document
    def run(self) -> None:
        tokens, _ = _markdown().parse(self.src)
        blocks = [t for t in tokens if t["type"] != "blank_line"]
        stack: list[_Section] = []
        section: _Section | None = None
        base_level: int | None = None
        skipping = False
        i = 0
        while i < len(blocks):
            tok = blocks[i]
            line = self._line(tok.get("_pos", 0))
            if tok["type"] == "heading":
                level = tok["attrs"]["level"]
                title = _clean(_inline_text(tok["children"]))
                if base_level is None and level == 1:
                    i += 1
                    continue  # the list's own title
                if title.casefold() in CONTENTS_TITLES:
                    skipping, section = True, None
                    i += 1
                    continue
                skipping = False
                if base_level is None:
                    base_level = level
                section = self._open_section(max(level, base_level), title, line, stack)
                i += 1
                continue
            if skipping:
                i += 1
                continue
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            if tok["type"] == "paragraph" and nxt is not None and nxt["type"] == "list":
                if section is None:
                    if self._looks_like_entry(tok):
                        self.error(line, "entry before the first section heading")
                    i += 2
                    continue
                self._entry(tok, nxt, line, self._line(nxt.get("_pos", 0)), section)
                i += 2
                continue
            if section is not None and tok["type"] == "paragraph":
                if self._looks_like_entry(tok):
                    self.error(line, "entry is not followed by a two-item list (title, authors)")
                elif section.n_papers == 0 and not section.children:
                    section.intro = _clean(" ".join(filter(None, [section.intro, _inline_text(tok["children"])])))
                else:
                    self.error(line, "unexpected paragraph between entries; expected 'Method. *Venue Year*.' and links")
            elif section is not None and tok["type"] == "list":
                self.error(line, "list without an entry paragraph before it")
            i += 1

    @staticmethod
    def _looks_like_entry(tok: dict) -> bool:
        children = tok.get("children", [])
        return any(c["type"] == "link" for c in children) or any(
            c["type"] == "text" and c["raw"].lstrip().startswith("- ") for c in children
        )

    @staticmethod
    def _split_lines(children: list[dict]) -> list[list[dict]]:
        lines: list[list[dict]] = [[]]
        for tok in children:
            if tok["type"] in ("softbreak", "linebreak"):
                lines.append([])
            else:
                lines[-1].append(tok)
        return [line for line in lines if line]

    # one entry
    def _entry(self, para: dict, lst: dict, line: int, list_line: int, section: _Section) -> None:
        lines = self._split_lines(para["children"])
        before = len(self.problems)
        header = self._header(lines[0], line)
        links, code, description = [], [], []
        for offset, parts in enumerate(lines[1:], start=1):
            lineno = line + offset
            kind = self._line_kind(parts)
            if description and kind == "text":
                description.append(_inline_text(parts))
            elif kind == "paper":
                links.append((parts[1], lineno))
            elif kind == "code":
                code.append((parts[1], lineno))
            elif kind == "text" and _inline_text(parts).lstrip().startswith("- "):
                description.append(_inline_text(parts).lstrip()[2:])
            else:
                self.error(lineno, f"cannot parse entry line {_inline_text(parts)!r}: expected \\[[Label](url)\\], "
                           "<[Label](url)> or \\- description")
        items = lst.get("children", [])
        if len(items) != 2:
            self.error(list_line, "expected a two-item list (title, authors) after the entry, "
                       f"found {len(items)} item(s)")
            return
        title = _clean(_inline_text(items[0]["children"][0].get("children", []))) if items[0]["children"] else ""
        authors_text = _clean(_inline_text(items[1]["children"][0].get("children", []))) if items[1]["children"] else ""
        if not title:
            self.error(list_line, "empty paper title")
        if not authors_text:
            self.error(list_line + 1, "empty author list")
        if not description:
            self.error(line, "entry has no '\\- description' line")
        paper_links = [self._paper_link(tok, lineno) for tok, lineno in links]
        paper_links = [link for link in paper_links if link is not None]
        code_links = [c for c in (self._code_link(tok, lineno) for tok, lineno in code) if c is not None]
        if not links:
            self.error(line, "entry has no paper link \\[[Label](url)\\]")
        if header is None or len(self.problems) > before:
            return
        method, venue, year = header
        data: dict = {}
        if method:
            data["method"] = method
        data["title"] = title
        data["authors"] = [_clean(a) for a in re.split(r"\s+and\s+", authors_text) if _clean(a)]
        arxiv = next((link["url"].rsplit("/", 1)[1] for link in paper_links if link["kind"] == "arxiv"), None)
        doi = next((_DOI_URL.match(link["url"]).group("doi") for link in paper_links if link["kind"] == "doi"), None)
        if venue is None and arxiv is not None and re.match(r"^\d{4}\.", arxiv):
            venue, year = "arXiv", 2000 + int(arxiv[:2])
            self.warn(line, f"no venue; recorded as arXiv {year} from the arXiv id")
        if venue is None:
            self.warn(line, "no venue and no arXiv link; fill in venue and year")
        elif year is None:
            self.warn(line, f"venue {venue!r} has no year; fill it in")
        if venue is not None:
            data["venue"] = venue
        if year is not None:
            data["year"] = year
        if arxiv:
            data["arxiv"] = arxiv
        if doi:
            data["doi"] = doi
        data["sections"] = [section.id]
        data["description"] = _clean(" ".join(description))
        data["links"] = paper_links
        if code_links:
            data["code"] = code_links
        if section.id == "":
            self.error(line, f"section {section.title!r} (line {section.line}) has no id in the sections file")
            return
        if len(self.problems) > before:
            return
        key = f"arxiv:{arxiv}" if arxiv else f"title:{title_key(title)}"
        section.n_papers += 1
        self.entries.append(_Entry(line=line, section=section, data=data, key=key))

    def _line_kind(self, parts: list[dict]) -> str:
        if len(parts) == 3 and parts[1]["type"] == "link" and parts[0]["type"] == parts[2]["type"] == "text":
            brackets = (parts[0]["raw"].strip(), parts[2]["raw"].strip())
            if brackets == ("[", "]"):
                return "paper"
            if brackets == ("<", ">"):
                return "code"
        return "text"

    def _header(self, parts: list[dict], line: int) -> tuple[str | None, str | None, int | None] | None:
        """``Method. *Venue Year*.`` -> (method, venue, year); tolerates the usual slips."""
        if any(p["type"] not in ("text", "emphasis") for p in parts):
            self.error(line, f"cannot parse entry header {_inline_text(parts)!r}: expected 'Method. *Venue Year*.'")
            return None
        emphasis = [i for i, p in enumerate(parts) if p["type"] == "emphasis"]
        if len(emphasis) > 1:
            self.error(line, f"entry header {_inline_text(parts)!r} has more than one italic part")
            return None
        if emphasis:
            k = emphasis[0]
            method = _clean(_inline_text(parts[:k])).rstrip(".").strip()
            venue_text = _clean(_inline_text(parts[k]["children"])).rstrip(".")
            tail = _clean(_inline_text(parts[k + 1:]))
            if tail not in ("", "."):
                self.error(line, f"unexpected text {tail!r} after the venue in the entry header")
                return None
            if tail == "":
                self.warn(line, "entry header lacks its trailing period")
        else:
            text = _clean(_inline_text(parts))
            if not text.endswith("."):
                self.warn(line, "entry header lacks its trailing period")
            text = text.rstrip(".").strip()
            method, dot, rest = text.partition(". ")
            venue_text = rest if dot else ""
            if not dot and _PLAIN_VENUE.match(text):
                method, venue_text = "", text
            if venue_text:
                self.warn(line, "venue is not italicised")
        if not method and not venue_text:
            self.error(line, f"cannot parse entry header {_inline_text(parts)!r}: no method and no venue")
            return None
        if re.search(r"\s", method) and len(method) > 40:
            self.error(line, f"cannot parse entry header {_inline_text(parts)!r}: expected 'Method. *Venue Year*.'")
            return None
        venue, year = None, None
        if venue_text:
            m = _VENUE_YEAR.match(venue_text)
            venue = m.group("venue").strip() or None
            year = int(m.group("year")) if m.group("year") else None
            if venue is None:
                self.error(line, f"entry header {_inline_text(parts)!r} has a year but no venue")
                return None
        return (method or None, venue, year)

    def _paper_link(self, tok: dict, line: int) -> dict | None:
        label = _clean(_inline_text(tok["children"]))
        url = _normalise_url(tok["attrs"]["url"])
        host = url_host(url)
        by_host = next((kind for kind, _, hosts in self.link_kinds if host in hosts), None)
        by_label = next((kind for kind, lab, _ in self.link_kinds if lab.casefold() == label.casefold()), None)
        if by_host is None and by_label is None:
            self.error(line, f"unknown paper link {label!r} ({url}): no link kind for this label or host")
            return None
        if by_host is None:
            self.error(line, f"paper link {label!r} points to {host!r}, which kind {by_label!r} does not allow")
            return None
        if by_label is not None and by_label != by_host:
            self.warn(line, f"link labelled {label!r} points to {host}; recorded as kind {by_host!r}")
        return {"kind": by_host, "url": url}

    def _code_link(self, tok: dict, line: int) -> dict | None:
        label = _clean(_inline_text(tok["children"]))
        url = _normalise_url(tok["attrs"]["url"])
        host = url_host(url)
        if not url.startswith("https://") or not host:
            self.error(line, f"code link {label!r} has no valid https URL: {url!r}")
            return None
        official = not re.search(r"third[- ]party|unofficial", label, re.IGNORECASE)
        link = {"url": url, "official": official}
        if label and label != self.code_labels.get(host):
            link["label"] = label
        return link

    # merging and ids
    def result(self) -> ImportResult:
        papers_by_key: dict[str, dict] = {}
        first_line: dict[str, int] = {}
        per_section: dict[str, int] = {}
        title_to_key: dict[str, str] = {}
        for entry in self.entries:
            per_section[entry.section.id] = per_section.get(entry.section.id, 0) + 1
            key = title_to_key.get(title_key(entry.data["title"]), entry.key)
            title_to_key.setdefault(title_key(entry.data["title"]), key)
            if key not in papers_by_key:
                papers_by_key[key] = entry.data
                first_line[key] = entry.line
                continue
            self._merge(papers_by_key[key], entry, first_line[key])
        papers: dict[str, dict] = {}
        for key, data in papers_by_key.items():
            papers[self._paper_id(data, papers)] = data
        sections = None if self.existing is not None else self._section_tree()
        return ImportResult(papers=papers, sections=sections, warnings=self.warnings, per_section=per_section)

    def _merge(self, kept: dict, entry: _Entry, kept_line: int) -> None:
        data = entry.data
        if entry.section.id in kept["sections"]:
            self.warn(entry.line, f"duplicate of the entry at line {kept_line} in the same section; ignored")
            return
        kept["sections"].append(entry.section.id)
        for field_name in ("method", "title", "authors", "venue", "year"):
            if data.get(field_name) != kept.get(field_name):
                self.warn(entry.line, f"same paper as line {kept_line} but its {field_name} differs; "
                          f"kept {kept.get(field_name)!r}")
        if data["description"] != kept["description"]:
            kept.setdefault("notes", {})[entry.section.id] = data["description"]
        for name in ("links", "code"):
            have = {item["url"] for item in kept.get(name, [])}
            kept[name] = kept.get(name, []) + [item for item in data.get(name, []) if item["url"] not in have]

    @staticmethod
    def _paper_id(data: dict, taken: dict) -> str:
        if data.get("method"):
            base = slugify(data["method"])
        else:
            surname = slugify(data["authors"][0].split()[-1]) if data["authors"] else "paper"
            base = f"{surname}{data.get('year', '')}"
        base = base or "paper"
        candidates = [base]
        if data.get("venue"):
            candidates.append(f"{base}-{slugify(data['venue'])}")
            if data.get("year"):
                candidates.append(f"{base}-{slugify(data['venue'])}{data['year']}")
        for candidate in candidates:
            if candidate not in taken:
                return candidate
        n = 2
        while f"{base}-{n}" in taken:
            n += 1
        return f"{base}-{n}"

    def _section_tree(self) -> list[dict]:
        def has_papers(node: _Section) -> bool:
            return node.n_papers > 0 or any(has_papers(c) for c in node.children)

        def convert(node: _Section) -> dict:
            out = {"id": node.id, "title": node.title}
            if node.intro:
                out["intro"] = node.intro
            children = [convert(c) for c in node.children if has_papers(c)]
            if children:
                out["children"] = children
            return out

        for node in self._all_sections():
            if not has_papers(node):
                self.warn(node.line, f"section {node.title!r} has no entries; left out")
        return [convert(node) for node in self.roots if has_papers(node)]


def import_markdown(src: str, filename: str = "README.md", sections: list[dict] | None = None) -> ImportResult:
    """Parse an awesome README. ``sections``: an existing section tree to map headings onto (by title).

    Raises :class:`ImportFailed` listing every problem found.
    """
    importer = _Importer(src, filename, sections)
    importer.run()
    if importer.problems:
        raise ImportFailed(importer.problems)
    return importer.result()
