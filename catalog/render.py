"""``python -m catalog build``: render README.md (Jinja, ``templates/``) and papers.bib from the data.

The output depends only on the data and the templates: papers are sorted within each section by
year, then title (case-insensitive), then id, so neither file-listing order nor the machine
changes a byte. Anchors are GitHub's (:mod:`catalog.slug`). Everything is rendered in memory
first; files are then written with :func:`catalog.atomic.write_files`, so a failure leaves every
existing file untouched.

Rules that keep awesome-lint's ``double-link`` rule happy (every URL is linked once):

* a paper in several sections is written in full in its first section only; the others show a
  short reference (its ``notes`` text for that section when given, else the description);
* a code URL or kdimpl file already linked higher up in the README is named in plain text;
* a journal version that ``extends`` a conference paper is written inside the conference paper's
  full entry (its links, code not already there, description when different); in its sections that
  the conference paper does not have, it is a short reference to that entry.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from catalog import bibtex
from catalog.kdimpl_index import scan
from catalog.model import NO_IMPLEMENTATION_REASONS, Catalog, Paper, Section
from catalog.slug import Slugger

README = "README.md"
BIBTEX = "papers.bib"
TEMPLATE = "README.md.j2"
TITLE = "Awesome Knowledge Distillation for Object Detection"
TOC_TITLE = "Contents"
USAGE_TITLE = "Using this Repository"

VERIFICATION_WORDS = {
    "parity": "matching the official code's numbers",
    "paper": "checked against the paper's equations",
    "unverified": "following secondary descriptions (the paper's text was not checked)",
}


class RenderError(Exception):
    """Rendering failed (missing template, template error, BibTeX failure); nothing was written."""


_INLINE_SPECIAL = re.compile(r"[\\`*_\[\]<>|~]")
_LINE_START = re.compile(r"^(#|>|[-+=]|\d+[.)])")


def md(text: str) -> str:
    """Escape Markdown syntax in plain text that is shown inline (a backslash before ``\\`*_[]<>|~``)."""
    return _INLINE_SPECIAL.sub(r"\\\g<0>", text)


def md_line(text: str) -> str:
    """Like :func:`md`, for text that starts a line (so it never turns into a heading or a list)."""
    text = md(text)
    match = _LINE_START.match(text)
    if match:
        text = text[: match.end() - 1] + "\\" + text[match.end() - 1 :]
    return text


def sort_key(paper: Paper) -> tuple:
    """Order within a section: year, then title (case-insensitive), then id."""
    return (paper.year, paper.title.casefold(), paper.id)


@dataclass
class Heading:
    title: str
    anchor: str
    level: int
    intro: str = ""
    children: list["Heading"] = field(default_factory=list)
    entries: list["Entry"] = field(default_factory=list)


# The template's view of an entry.


@dataclass
class LinkView:
    label: str
    url: str


@dataclass
class CodeView:
    label: str
    url: str | None  # None: the URL is linked higher up, by ``ref``
    third_party: bool
    ref: str | None


@dataclass
class ImplementationFile:
    names: str  # "`FGDLoss`" or "`DeFeatLoss` and `DeFeatRoIKDLoss`"
    path: str
    link: bool  # False: the file is linked higher up in the README


@dataclass
class ImplementationGroup:
    verification: str  # in words
    files: list[ImplementationFile]


@dataclass
class Extension:
    """A journal version written inside its conference paper's entry."""

    line: str  # "Journal extension (*TPAMI 2023*): Title, by Authors."
    description: str  # "" when it is the conference paper's
    links: list[LinkView] = field(default_factory=list)
    code: list[CodeView] = field(default_factory=list)
    implementations: list[ImplementationGroup] = field(default_factory=list)


@dataclass
class Entry:
    full: bool  # written in full (the paper's first section) or as a reference
    header: str
    title: str
    authors: str
    description: str
    home: str = ""  # reference entries: the title of the section holding the full entry
    links: list[LinkView] = field(default_factory=list)
    code: list[CodeView] = field(default_factory=list)
    implementations: list[ImplementationGroup] = field(default_factory=list)
    no_implementation: str = ""  # "No implementation in kdimpl: why." when the paper says why it has none
    extensions: list[Extension] = field(default_factory=list)


def _venue_year(paper: Paper) -> str:
    return f"{paper.venue} {paper.year}" if paper.venue else str(paper.year)


def _header(paper: Paper) -> str:
    when = f"*{md(_venue_year(paper))}*."
    return f"{md_line(paper.method)}. {when}" if paper.method else when


def _reference_name(paper: Paper) -> str:
    return f"{paper.method} ({_venue_year(paper)})" if paper.method else f"{paper.title} ({_venue_year(paper)})"


def extensions(catalog: Catalog) -> dict[str, list[Paper]]:
    """Conference paper id -> the journal versions written inside its entry, in README order.

    Only an ``extends`` that names a loaded paper which is not an extension itself counts; ``check``
    reports the others, and those papers are rendered as entries of their own.
    """
    by_id = {paper.id: paper for paper in catalog.papers}
    found: dict[str, list[Paper]] = {}
    for paper in sorted(catalog.papers, key=sort_key):
        target = by_id.get(paper.extends) if paper.extends else None
        if target is not None and target is not paper and target.extends is None:
            found.setdefault(target.id, []).append(paper)
    return found


def statistics(catalog: Catalog) -> dict[str, int]:
    """The counts of the README's statistics line; ``papers`` counts every paper file."""
    implemented = [paper for paper in catalog.papers if paper.implementations]
    return {
        "papers": len(catalog.papers),
        "extensions": sum(len(papers) for papers in extensions(catalog).values()),
        "official_code": sum(any(code.official for code in paper.code) for paper in catalog.papers),
        "kdimpl": len(implemented),
        "parity": sum(all(impl.verification == "parity" for impl in paper.implementations) for paper in implemented),
        # Papers with no implementation: nothing to implement (surveys, no objective, unreadable) or awaiting one.
        "nothing_to_implement": sum(
            not paper.implementations
            and paper.no_implementation is not None
            and paper.no_implementation.reason != "pending"
            for paper in catalog.papers
        ),
        "awaiting": sum(
            not paper.implementations and (paper.no_implementation is None or paper.no_implementation.reason == "pending")
            for paper in catalog.papers
        ),
    }


def no_implementation_line(paper: Paper) -> str:
    """The README's line for a paper that says why kdimpl has no implementation of it; "" otherwise."""
    if paper.implementations or paper.no_implementation is None:
        return ""
    why = paper.no_implementation.note or NO_IMPLEMENTATION_REASONS[paper.no_implementation.reason] + "."
    return "No implementation in kdimpl: " + md(why)


def build_view(catalog: Catalog, kdimpl_files: dict[str, str]) -> dict:
    """The template's context: headings with anchors, ToC, and entries with every decision made."""
    slugger = Slugger()
    slugger.slug(f"{TITLE} Awesome")  # the H1 (badge alt text included), then "Contents"
    slugger.slug(TOC_TITLE)
    nested = extensions(catalog)
    by_id = {paper.id: paper for paper in catalog.papers}
    homes = {paper.id: by_id[conference].sections[0] for conference, papers in nested.items() for paper in papers}
    by_section: dict[str, list[Paper]] = {}
    for paper in catalog.papers:
        for section_id in paper.sections:
            if paper.id in homes and section_id in by_id[paper.extends].sections:
                continue  # written with the conference paper, or referenced with it
            by_section.setdefault(section_id, []).append(paper)
    titles = {section.id: section.title for section in catalog.walk_sections()}
    linked: dict[str, str] = {}  # URL -> who linked it first (README order)
    labels: dict[str, str] = {}  # link and code labels repeat: escape each once

    def label(text: str) -> str:
        escaped = labels.get(text)
        if escaped is None:
            escaped = labels[text] = md(text)
        return escaped

    def entry(paper: Paper, section_id: str) -> Entry:
        head = (_header(paper), md_line(paper.title), md_line(" and ".join(paper.authors)))
        home = homes.get(paper.id, paper.sections[0])
        if home != section_id:
            return Entry(False, *head, md(paper.notes.get(section_id, paper.description)), md(titles.get(home, home)))
        item = Entry(True, *head, md(paper.description))
        item.links = [LinkView(label(link.label), link.url) for link in paper.links]
        item.code = code_views(paper, paper.code)
        item.implementations = implementation_groups(paper, paper.implementations)
        item.no_implementation = no_implementation_line(paper)
        item.extensions = [extension(journal, paper) for journal in nested.get(paper.id, ())]
        return item

    def extension(paper: Paper, conference: Paper) -> Extension:
        method = f"{md(paper.method)} " if paper.method and paper.method != conference.method else ""
        line = f"Journal extension, {method}" if method else "Journal extension "
        line += f"(*{md(_venue_year(paper))}*): {md(paper.title)}"
        if paper.authors != conference.authors:
            line += ", by " + md(" and ".join(paper.authors))
        own = {(impl.name, impl.verification) for impl in conference.implementations}
        return Extension(
            line + ("" if line.endswith((".", "?", "!")) else "."),
            md(paper.description) if paper.description != conference.description else "",
            [LinkView(label(link.label), link.url) for link in paper.links],
            code_views(paper, [code for code in paper.code if code.url not in {c.url for c in conference.code}]),
            implementation_groups(
                paper, [impl for impl in paper.implementations if (impl.name, impl.verification) not in own]
            ),
        )

    def code_views(paper: Paper, codes) -> list[CodeView]:
        views = []
        for code in codes:
            ref = linked.get(code.url)
            if ref is None:
                views.append(CodeView(label(code.label), code.url, not code.official, None))
                linked[code.url] = _reference_name(paper)
            else:
                views.append(CodeView(label(code.label), None, not code.official, md(ref)))
        return views

    def implementation_groups(paper: Paper, implementations) -> list[ImplementationGroup]:
        """Objects grouped by verification level, then by defining file, in the YAML's order."""
        grouped: dict[str, dict[str, list[str]]] = {}
        for impl in implementations:
            path = kdimpl_files.get(impl.name, "kdimpl")  # unknown names fail `check`; build still renders
            name = f"`{impl.name}` ({md(impl.covers.rstrip('.'))})" if impl.covers else f"`{impl.name}`"
            grouped.setdefault(impl.verification, {}).setdefault(path, []).append(name)
        groups = []
        for verification, files in grouped.items():
            views = []
            for path, names in files.items():
                listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
                views.append(ImplementationFile(listed, path, path not in linked))
                linked.setdefault(path, paper.id)
            groups.append(ImplementationGroup(VERIFICATION_WORDS[verification], views))
        return groups

    def heading(section: Section) -> Heading:
        node = Heading(md(section.title), slugger.slug(section.title), section.level, md_line(section.intro))
        papers = sorted(by_section.get(section.id, ()), key=sort_key)
        node.entries = [entry(paper, section.id) for paper in papers]
        flat.append(node)
        node.children = [heading(child) for child in section.children]
        return node

    flat: list[Heading] = []
    top = [heading(section) for section in catalog.sections]
    usage_anchor = slugger.slug(USAGE_TITLE)
    return {
        "title": TITLE,
        "toc": top,
        "sections": flat,
        "usage": {"title": USAGE_TITLE, "anchor": usage_anchor},
        "paper_count": len(catalog.papers),
        "stats": statistics(catalog),
    }


def _environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root / "templates")),
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_readme(catalog: Catalog, root: Path, kdimpl_files: dict[str, str] | None = None) -> str:
    if kdimpl_files is None:
        kdimpl_files = scan(root) if any(paper.implementations for paper in catalog.papers) else {}
    text = _environment(root).get_template(TEMPLATE).render(**build_view(catalog, kdimpl_files))
    return text.rstrip("\n") + "\n"


def render_outputs(catalog: Catalog, root: Path, kdimpl_files: dict[str, str] | None = None) -> dict[Path, str]:
    """Every generated file, rendered in memory: ``{path: text}``. Raises :class:`RenderError`."""
    root = Path(root)
    if kdimpl_files is None and any(paper.implementations for paper in catalog.papers):
        try:
            kdimpl_files = scan(root)
        except Exception as error:
            raise RenderError(f"rendering {README} failed: {type(error).__name__}: {error}") from error
    outputs: dict[Path, str] = {}
    try:
        outputs[root / README] = render_readme(catalog, root, kdimpl_files or {})
    except Exception as error:  # a template or data error must not leave a traceback or half a build
        raise RenderError(f"rendering {README} failed: {type(error).__name__}: {error}") from error
    try:
        outputs[root / BIBTEX] = bibtex.render_bibtex(catalog)
    except Exception as error:
        raise RenderError(f"rendering {BIBTEX} failed: {type(error).__name__}: {error}") from error
    return outputs


def diff_against_file(path: Path, text: str, rel: str) -> str | None:
    """A unified diff from the file on disk to ``text``, or None when they are identical."""
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if current is not None and current == text.encode("utf-8"):
        return None
    old = [] if current is None else current.decode("utf-8", errors="replace").splitlines(keepends=True)
    lines = difflib.unified_diff(
        old,
        text.splitlines(keepends=True),
        fromfile=f"{rel} (on disk{', missing' if current is None else ''})",
        tofile=f"{rel} (rendered)",
    )
    out = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
    return out
