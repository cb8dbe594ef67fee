"""``python -m catalog check``: every rule a paper file must follow, and the generated-files gate.

All problems are collected and printed at once as ``path:line: field: message``, then the command
exits 1. Bad data never raises: the loader turns unreadable, non-UTF-8, empty or malformed files
into problems too. The rules beyond the JSON Schema are here (contributors read them in
``.github/CONTRIBUTING.md``).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from catalog.loader import (
    FILE_FIELD,
    PAPERS_DIR,
    PLACEHOLDER_MESSAGE,
    PLACEHOLDER_RE,
    SECTIONS_FILE,
    Document,
    Problem,
    build_paper,
    build_sections,
    describe,
    did_you_mean,
    link_kinds,
    paper_files,
    parse_text,
    read_bytes,
    read_document,
    schema_problems,
)
from catalog.model import Catalog

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
ARXIV_ID = r"(?:\d{4}\.\d{4,5}|[a-z][a-z.-]*(?:\.[A-Z]{2})?/\d{7})"
ARXIV_URL_RE = re.compile(rf"^https://arxiv\.org/abs/({ARXIV_ID})$")
HTML_RE = re.compile(r"<\s*/?\s*[A-Za-z][^<>]*>|<!--|&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#x[0-9A-Fa-f]+);")
MD_LINK_RE = re.compile(r"\]\s*[(\[]|!\[|<(?:https?|ftp|mailto|javascript):", re.IGNORECASE)
SECTION_TITLE_RE = re.compile(r"^[A-Za-z0-9]+(?:[ -][A-Za-z0-9]+)*$")
RESERVED_TITLES = {"contents", "contributing", "using this repository", "footnotes", "related lists"}
MAX_SECTION_LEVEL = 5  # "#####"
FIRST_YEAR = 1990


def next_year() -> int:
    return datetime.date.today().year + 1


@dataclass
class Result:
    catalog: Catalog
    problems: list[Problem] = field(default_factory=list)
    kdimpl_files: dict[str, str] | None = None  # the kdimpl index, when it was needed


# --------------------------------------------------------------------------- text


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Words of characters that no plain-text rule objects to, separated by single spaces, and no
# placeholder: most values are like this and skip the rules. (One anchored match is several times
# faster than searching for each thing a rule could object to.)
_WORD = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029<>\[\]&!\s]+"
_CLEAN_RE = re.compile(rf"(?!TODO){_WORD}(?: {_WORD})*\Z")


def text_problems(doc: Document, where: tuple, value: str, sentence: bool = False) -> list[Problem]:
    """Plain-text rules shared by every text field."""
    if _CLEAN_RE.match(value) and (not sentence or value.endswith(".")):
        return []
    if PLACEHOLDER_RE.match(value):  # the other rules would only add noise about the placeholder text
        return [doc.problem(where, PLACEHOLDER_MESSAGE)]
    messages = []
    if _CONTROL_RE.search(value):
        messages.append("must be a single line of plain text (no line breaks, tabs or control characters)")
    if value != value.strip():
        messages.append("has leading or trailing spaces")
    if "  " in value:
        messages.append("has two spaces in a row")
    if HTML_RE.search(value):
        messages.append("raw HTML is not allowed; write plain text")
    if MD_LINK_RE.search(value):
        messages.append("Markdown link syntax is not allowed; put URLs under links or code")
    if sentence and not value.rstrip().endswith("."):
        messages.append("must end with a period")
    return [doc.problem(where, message) for message in messages]


# --------------------------------------------------------------------------- sections


def section_problems(doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    first: dict[str, int] = {}
    titles: dict[str, int] = {}

    def visit(nodes: list, where: tuple, level: int) -> None:
        for index, node in enumerate(nodes):
            here = where + (index,)
            line = doc.line(here + ("id",))
            if node["id"] in first:
                problems.append(
                    doc.problem(
                        here + ("id",), f"duplicate section id {node['id']!r} (first at line {first[node['id']]})"
                    )
                )
            else:
                first[node["id"]] = line
            if level > MAX_SECTION_LEVEL:
                problems.append(doc.problem(here, "sections nest at most four levels (## to #####)"))
            title = node["title"]
            title_problems = text_problems(doc, here + ("title",), title)
            problems.extend(title_problems)
            if not title_problems and not SECTION_TITLE_RE.match(title):
                problems.append(
                    doc.problem(
                        here + ("title",),
                        "section titles use ASCII letters, digits, single spaces and '-' only (they become GitHub anchors)",
                    )
                )
            if title.casefold() in RESERVED_TITLES:
                problems.append(doc.problem(here + ("title",), f"{title!r} is reserved for a README section"))
            if title.casefold() in titles:
                problems.append(
                    doc.problem(
                        here + ("title",), f"duplicate section title (first at line {titles[title.casefold()]})"
                    )
                )
            else:
                titles[title.casefold()] = doc.line(here + ("title",))
            if "intro" in node:
                problems.extend(text_problems(doc, here + ("intro",), node["intro"], sentence=True))
            visit(node.get("children", []), here + ("children",), level + 1)

    visit(doc.data, (), 2)
    return problems


def section_ids(data: list) -> list[str]:
    ids: list[str] = []
    stack = list(reversed(data))
    while stack:
        node = stack.pop()
        ids.append(node["id"])
        stack.extend(reversed(node.get("children", [])))
    return ids


# --------------------------------------------------------------------------- one paper


class _KdimplIndex:
    """The static kdimpl export index, computed on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, str] | None = None

    def get(self) -> dict[str, str]:
        if self._index is None:
            from catalog.kdimpl_index import scan

            self._index = scan(self.root)
        return self._index


_TEXT_FIELDS = (("method", False), ("title", False), ("venue", False), ("description", True))


def paper_problems(doc: Document, known_sections: list[str], kdimpl: _KdimplIndex, year_limit: int) -> list[Problem]:
    """The rules beyond the schema for one paper whose data passed the schema.

    Also leaves the duplicate keys of the paper's links in ``doc.link_keys`` for
    :func:`duplicate_problems`.
    """
    data = doc.data
    problems: list[Problem] = []
    stem = doc.path.rsplit("/", 1)[-1].removesuffix(".yaml")
    if not ID_RE.match(stem):
        problems.append(
            Problem(doc.path, 1, FILE_FIELD, "file name must be <id>.yaml, the id in lowercase letters, digits and '-'")
        )
    if data["year"] > year_limit:
        problems.append(doc.problem(("year",), f"must be between {FIRST_YEAR} and {year_limit}"))

    # Most values break no text rule: text_problems's first test, inlined here, spares a call per value.
    clean = _CLEAN_RE.match
    for key, sentence in _TEXT_FIELDS:
        if key in data:
            value = data[key]
            if not clean(value) or (sentence and not value.endswith(".")):
                problems.extend(text_problems(doc, (key,), value, sentence=sentence))
    for index, author in enumerate(data["authors"]):
        if not clean(author):
            problems.extend(text_problems(doc, ("authors", index), author))

    kinds = link_kinds()
    paper_kinds = kinds["paper"]
    seen_urls: dict[str, tuple] = {}
    keys: list[str] = []
    for index, link in enumerate(data["links"]):
        where = ("links", index, "url")
        url = link["url"]
        kind = link["kind"]
        message, host, key = _url_parts(url)
        if message:
            problems.append(doc.problem(where, message))
        hosts = paper_kinds[kind]["hosts"]
        if host not in hosts:
            problems.append(
                doc.problem(where, f"host {host!r} does not match kind {kind!r} (expected {' or '.join(hosts)})")
            )
        elif kind == "arxiv":
            match = ARXIV_URL_RE.match(url)
            if not match:
                problems.append(
                    doc.problem(where, "arXiv links must be https://arxiv.org/abs/<id> with no version suffix")
                )
            elif "arxiv" in data and match.group(1) != data["arxiv"]:
                problems.append(
                    doc.problem(
                        where, f"arXiv id {match.group(1)!r} does not match the arxiv field ({data['arxiv']!r})"
                    )
                )
        elif kind == "doi" and "doi" in data and url != f"https://doi.org/{data['doi']}":
            problems.append(doc.problem(where, f"DOI link does not match the doi field ({data['doi']!r})"))
        keys.append(key)
        if key in seen_urls:
            problems.append(doc.problem(where, f"same URL as links[{seen_urls[key][1]}]"))
        else:
            seen_urls[key] = where
    doc.link_keys = keys

    for index, code in enumerate(data.get("code", ())):
        where = ("code", index, "url")
        message, host, _key = _url_parts(code["url"])
        if message:
            problems.append(doc.problem(where, message))
        if host not in kinds["code"]:
            accepted = ", ".join(kinds["code"])
            problems.append(
                doc.problem(
                    where, f"code host {host!r} is not accepted ({accepted}); add it to catalog/data/link-kinds.yaml"
                )
            )
        if "label" in code:
            problems.extend(text_problems(doc, ("code", index, "label"), code["label"]))

    for index, section in enumerate(data["sections"]):
        if section not in known_sections:
            problems.append(
                doc.problem(("sections", index), f"unknown section {section!r}" + did_you_mean(section, known_sections))
            )
    for section, text in data.get("notes", {}).items():
        where = ("notes", section)
        if section == data["sections"][0]:
            problems.append(
                doc.problem(where, "the first section shows the description; notes are for the paper's other sections")
            )
        elif section not in data["sections"]:
            problems.append(doc.problem(where, f"{section!r} is not one of the paper's sections"))
        problems.extend(text_problems(doc, where, text, sentence=True))

    names: dict[str, int] = {}
    for index, item in enumerate(data.get("implementations", ())):
        where = ("implementations", index, "name")
        name = item["name"]
        if name in names:
            problems.append(doc.problem(where, f"listed twice (implementations[{names[name]}])"))
            continue
        names[name] = index
        index_ = kdimpl.get()
        if name not in index_:
            problems.append(doc.problem(where, f"kdimpl exports no object named {name!r}" + did_you_mean(name, index_)))
    return problems


# scheme, optional user info, host, optional port, then the rest; the schema already required https://
_URL_RE = re.compile(r"^https://(?:([^/?#@]*)@)?([^/?#:@]*)(?::(\d*))?([/?#].*)?$", re.DOTALL)
_SPACE_RE = re.compile(r"\s")


def url_host(url: str) -> str:
    """The lowercased host of an https URL ('' when there is none)."""
    match = _URL_RE.match(url)
    return match.group(2).lower() if match else ""


def _url_parts(url: str) -> tuple[str | None, str, str]:
    """``(problem message or None, url_host(url), _url_key(url))`` from a single match."""
    match = _URL_RE.match(url)
    if not match:
        return ("URL must not contain spaces" if _SPACE_RE.search(url) else "must be an absolute https:// URL"), "", url
    user, host, _port, rest = match.groups()
    host = host.lower()
    if _SPACE_RE.search(url):
        message = "URL must not contain spaces"
    elif not host:
        message = "must be an absolute https:// URL"
    elif user is not None:
        message = "URL must not contain a user name or password"
    else:
        message = None
    return message, host, _key_from_parts(host, rest)


def _url_key(url: str) -> str:
    """URLs that GitHub renders as the same link compare equal: host case, trailing slash."""
    match = _URL_RE.match(url)
    if not match:
        return url
    return _key_from_parts(match.group(2).lower(), match.group(4))


def _key_from_parts(host: str, rest: str | None) -> str:
    if not rest:
        return host
    if "?" in rest:
        path, _, tail = rest.partition("?")
        return f"{host}{path.rstrip('/')}?{tail}"
    if "#" in rest:
        path, _, tail = rest.partition("#")
        return f"{host}{path.rstrip('/')}#{tail}"
    return host + rest.rstrip("/")


_NOT_ALNUM = re.compile(r"[\W_]+")


def normalised_title(title: str) -> str:
    """Case, accents' composition, spacing and punctuation do not make a title different."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", title).casefold())


# --------------------------------------------------------------------------- whole catalog


def duplicate_problems(docs: list[Document]) -> list[Problem]:
    """The same paper twice: same arXiv id, same normalised title, or the same paper link."""
    problems: list[Problem] = []
    arxiv: dict[str, str] = {}
    titles: dict[str, str] = {}
    urls: dict[str, str] = {}
    for doc in docs:
        data = doc.data
        ids: dict[str, tuple] = {}
        if "arxiv" in data:
            ids[data["arxiv"]] = ("arxiv",)
        for index, link in enumerate(data["links"]):
            match = ARXIV_URL_RE.match(link["url"]) if link["kind"] == "arxiv" else None
            if match:
                ids.setdefault(match.group(1), ("links", index, "url"))
        for arxiv_id, where in ids.items():
            if arxiv.setdefault(arxiv_id, doc.path) != doc.path:
                problems.append(doc.problem(where, f"same arXiv id ({arxiv_id}) as {arxiv[arxiv_id]}"))
        title = normalised_title(data["title"])
        if titles.setdefault(title, doc.path) != doc.path:
            problems.append(doc.problem(("title",), f"same title as {titles[title]}"))
        link_keys = doc.link_keys
        if link_keys is None:  # not checked by paper_problems
            link_keys = [_url_key(link["url"]) for link in data["links"]]
        for index, key in enumerate(link_keys):
            if urls.setdefault(key, doc.path) != doc.path:
                problems.append(doc.problem(("links", index, "url"), f"same link as {urls[key]}"))
    return problems


def check_file(root: Path, rel: str, known: list[str], kdimpl: _KdimplIndex, limit: int) -> tuple[Document, bool]:
    """Parse and check one paper file; ``ok`` is whether it passed the schema (and so can be loaded)."""
    raw = read_bytes(root, rel)
    if isinstance(raw, Document):
        return raw, False
    return _check_text(rel, raw, known, kdimpl, limit)


def _check_text(rel: str, raw: bytes, known: list[str], kdimpl: _KdimplIndex, limit: int) -> tuple[Document, bool]:
    doc = parse_text(rel, raw)
    if doc.problems:
        return doc, False
    if not isinstance(doc.data, dict):
        doc.problems.append(doc.problem((), f"expected a mapping of paper fields, got {describe(doc.data)}"))
        return doc, False
    schema_errors = schema_problems(doc, "paper")
    if schema_errors:
        doc.problems.extend(schema_errors)
        return doc, False
    doc.problems.extend(paper_problems(doc, known, kdimpl, limit))
    return doc, True


# ``build`` then ``check`` in one process (the benchmark, a script, a test session) read the same
# files. A paper whose bytes and rule inputs (section ids, year limit, and the kdimpl index when it
# lists implementations) are unchanged gets its earlier result back instead of being parsed and
# checked again; every input of the rules is in the comparison, so the result is the same.
# Only the last root's papers are kept.
_reuse: dict = {"root": None, "files": {}}


def _checked_paper(root: Path, rel: str, known: tuple, kdimpl: _KdimplIndex, limit: int):
    """``(doc, ok, paper or None)`` for one paper file, reusing an identical earlier check."""
    raw = read_bytes(root, rel)
    if isinstance(raw, Document):
        return raw, False, None
    files = _reuse["files"]
    earlier = files.get(rel)
    if earlier is not None and earlier[0] == raw and earlier[1] == known and earlier[2] == limit:
        if earlier[3] is None or earlier[3] == kdimpl.get():
            doc = earlier[4]
            doc.problems = list(earlier[5])
            return doc, earlier[6], earlier[7]
    doc, ok = _check_text(rel, raw, known, kdimpl, limit)
    paper = build_paper(doc) if ok else None
    index = kdimpl.get() if ok and doc.data.get("implementations") else None
    files[rel] = (raw, known, limit, index, doc, tuple(doc.problems), ok, paper)
    return doc, ok, paper


def forget_earlier_results() -> None:
    """Drop what this process kept from earlier checks and renders (the benchmark times both ways)."""
    from catalog import render

    _reuse["root"], _reuse["files"] = None, {}
    render._last_render.clear()


def validate_root(root: Path) -> Result:
    """Load ``root/papers`` and check every rule; the catalog holds the papers that passed the schema."""
    root = Path(root)
    problems: list[Problem] = []

    sections_rel = f"{PAPERS_DIR}/{SECTIONS_FILE}"
    sections = ()
    known: list[str] = []
    if not (root / sections_rel).exists():
        problems.append(Problem(sections_rel, 1, FILE_FIELD, "missing: the section tree is required"))
    else:
        sections_doc = read_document(root, sections_rel)
        problems.extend(sections_doc.problems)
        if not sections_doc.problems:
            schema_errors = schema_problems(sections_doc, "sections")
            problems.extend(schema_errors)
            if not schema_errors:
                problems.extend(section_problems(sections_doc))
                sections = build_sections(sections_doc.data)
                known = section_ids(sections_doc.data)

    files = paper_files(root)
    yaml_files = []
    for rel in files:
        if rel.endswith(".yaml"):
            yaml_files.append(rel)
        else:
            problems.append(Problem(rel, 1, FILE_FIELD, "papers/ holds only <id>.yaml files (and _sections.yaml)"))

    kdimpl = _KdimplIndex(root)
    limit = next_year()
    loaded: list[Document] = []
    papers = []
    if _reuse["root"] != str(root.resolve()):
        _reuse["root"], _reuse["files"] = str(root.resolve()), {}
    known_key = tuple(known)
    for rel in yaml_files:
        doc, ok, paper = _checked_paper(root, rel, known_key, kdimpl, limit)
        problems.extend(doc.problems)
        if ok:
            loaded.append(doc)
            papers.append(paper)
    problems.extend(duplicate_problems(loaded))
    problems.sort()
    catalog = Catalog(papers=tuple(papers), sections=sections, root=str(root))
    return Result(catalog, problems, kdimpl._index)


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-generated",
        action="store_true",
        help="skip comparing README.md and papers.bib with what `build` would write",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the data and the generated files; print every problem; 0 when all is well, else 1."""
    from catalog import render

    root = Path(args.root)
    result = validate_root(root)
    for problem in result.problems:
        print(problem)
    if result.problems:
        print(
            f"catalog check: {len(result.problems)} problem(s) in the data; README.md and papers.bib were not compared",
            file=sys.stderr,
        )
        return 1
    if getattr(args, "no_generated", False):
        print(f"catalog check: {len(result.catalog.papers)} papers OK", file=sys.stderr)
        return 0
    try:
        outputs = render.render_outputs(result.catalog, root, result.kdimpl_files)
    except render.RenderError as error:
        print(f"catalog check: {error}", file=sys.stderr)
        return 1
    stale = 0
    for path, text in outputs.items():
        rel = path.relative_to(root).as_posix()
        diff = render.diff_against_file(path, text, rel)
        if diff is not None:
            stale += 1
            print(f"{rel}:1: {FILE_FIELD}: out of date; run `python -m catalog build` and commit the result")
            sys.stdout.write(diff)
    if stale:
        return 1
    print(
        f"catalog check: {len(result.catalog.papers)} papers OK; README.md and papers.bib are up to date",
        file=sys.stderr,
    )
    return 0
