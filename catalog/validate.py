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
    SECTIONS_FILE,
    Document,
    Problem,
    build_paper,
    build_sections,
    describe,
    did_you_mean,
    link_kinds,
    paper_files,
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
# Anything a plain-text rule could object to; most values contain none of it and skip the rules.
_SUSPECT_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029<>\[\]&!]|  |^\s|\s$")


def text_problems(doc: Document, where: tuple, value: str, sentence: bool = False) -> list[Problem]:
    """Plain-text rules shared by every text field."""
    if not _SUSPECT_RE.search(value) and (not sentence or value.endswith(".")):
        return []
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


def paper_problems(doc: Document, known_sections: list[str], kdimpl: _KdimplIndex, year_limit: int) -> list[Problem]:
    """The rules beyond the schema for one paper whose data passed the schema."""
    data = doc.data
    problems: list[Problem] = []
    stem = doc.path.rsplit("/", 1)[-1].removesuffix(".yaml")
    if not ID_RE.match(stem):
        problems.append(
            Problem(doc.path, 1, FILE_FIELD, "file name must be <id>.yaml, the id in lowercase letters, digits and '-'")
        )
    if data["year"] > year_limit:
        problems.append(doc.problem(("year",), f"must be between {FIRST_YEAR} and {year_limit}"))

    for key, sentence in (("method", False), ("title", False), ("venue", False), ("description", True)):
        if key in data:
            problems.extend(text_problems(doc, (key,), data[key], sentence=sentence))
    for index, author in enumerate(data["authors"]):
        problems.extend(text_problems(doc, ("authors", index), author))

    kinds = link_kinds()
    seen_urls: dict[str, tuple] = {}
    for index, link in enumerate(data["links"]):
        where = ("links", index, "url")
        url = link["url"]
        problems.extend(_url_problems(doc, where, url))
        host = url_host(url)
        hosts = kinds["paper"][link["kind"]]["hosts"]
        if host not in hosts:
            problems.append(
                doc.problem(
                    where, f"host {host!r} does not match kind {link['kind']!r} (expected {' or '.join(hosts)})"
                )
            )
        elif link["kind"] == "arxiv":
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
        elif link["kind"] == "doi" and "doi" in data and url != f"https://doi.org/{data['doi']}":
            problems.append(doc.problem(where, f"DOI link does not match the doi field ({data['doi']!r})"))
        key = _url_key(url)
        if key in seen_urls:
            problems.append(doc.problem(where, f"same URL as links[{seen_urls[key][1]}]"))
        else:
            seen_urls[key] = where

    for index, code in enumerate(data.get("code", ())):
        where = ("code", index, "url")
        problems.extend(_url_problems(doc, where, code["url"]))
        host = url_host(code["url"])
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


def _url_problems(doc: Document, where: tuple, url: str) -> list[Problem]:
    if _SPACE_RE.search(url):
        return [doc.problem(where, "URL must not contain spaces")]
    match = _URL_RE.match(url)
    if not match or not match.group(2):
        return [doc.problem(where, "must be an absolute https:// URL")]
    if match.group(1) is not None:
        return [doc.problem(where, "URL must not contain a user name or password")]
    return []


def _url_key(url: str) -> str:
    """URLs that GitHub renders as the same link compare equal: host case, trailing slash."""
    match = _URL_RE.match(url)
    if not match:
        return url
    rest = match.group(4) or ""
    path, _, tail = rest.partition("?") if "?" in rest else rest.partition("#")
    separator = "?" if "?" in rest else ("#" if "#" in rest else "")
    return f"{match.group(2).lower()}{path.rstrip('/')}{separator}{tail}"


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
        for index, link in enumerate(data["links"]):
            key = _url_key(link["url"])
            if urls.setdefault(key, doc.path) != doc.path:
                problems.append(doc.problem(("links", index, "url"), f"same link as {urls[key]}"))
    return problems


def check_file(root: Path, rel: str, known: list[str], kdimpl: _KdimplIndex, limit: int) -> tuple[Document, bool]:
    """Parse and check one paper file; ``ok`` is whether it passed the schema (and so can be loaded)."""
    doc = read_document(root, rel)
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


def check_files(root: Path, files: list[str], known: list[str], kdimpl: _KdimplIndex, limit: int):
    """:func:`check_file` for each file, in file order."""
    return [check_file(root, rel, known, kdimpl, limit) for rel in files]


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
    for doc, ok in check_files(root, yaml_files, known, kdimpl, limit):
        problems.extend(doc.problems)
        if ok:
            loaded.append(doc)
            papers.append(build_paper(doc))
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
