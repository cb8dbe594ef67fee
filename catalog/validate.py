"""Every rule a paper file and the section tree must follow (``python -m catalog check`` runs them).

All problems are collected as ``path:line: field: message``, each saying what to do. Bad data never
raises: the loader turns unreadable, non-UTF-8, empty or malformed files into problems too. The rules
beyond the JSON Schema are here, with the venue vocabulary (``catalog/data/venues.yaml``); contributors
read them in ``.github/CONTRIBUTING.md``.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

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
    read_regular_file,
    schema_problems,
)
from catalog.kdimpl_index import scan
from catalog.model import Catalog
from catalog.text import title_key, url_host

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


VENUES_FILE = Path(__file__).parent / "data" / "venues.yaml"


@functools.cache
def venues() -> dict[str, dict]:
    """The venue vocabulary, ``catalog/data/venues.yaml``: canonical label -> BibTeX type and container."""
    with open(VENUES_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


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
_CLEAN_RE = re.compile(rf"(?!TODO)(?!.*(?i:://|www\.)){_WORD}(?: {_WORD})*\Z")
# What GitHub turns into a link by itself (its autolink extension), wherever it is in the text.
_BARE_URL_RE = re.compile(r"(?i)[a-z][a-z0-9+.-]*://|\bwww\.")


def text_problems(doc: Document, where: tuple, value: str, sentence: bool = False) -> list[Problem]:
    """Plain-text rules shared by every text field."""
    if _CLEAN_RE.match(value) and (not sentence or value.endswith(".")):
        return []
    if PLACEHOLDER_RE.match(value):  # the other rules would only add noise about the placeholder text
        return [doc.problem(where, PLACEHOLDER_MESSAGE)]
    messages = []
    if value.endswith("\n") and not _CONTROL_RE.search(value.rstrip("\n")):
        messages.append("ends with a line break: write `>-` instead of `>` (or `|-` instead of `|`), or one line")
        value = value.rstrip("\n")
    elif _CONTROL_RE.search(value):
        messages.append("must be a single line of plain text (no line breaks, tabs or control characters)")
    if value != value.strip():
        messages.append("has leading or trailing spaces")
    if "  " in value:
        messages.append("has two spaces in a row")
    if HTML_RE.search(value):
        messages.append("raw HTML is not allowed; write plain text")
    if _BARE_URL_RE.search(value) and not MD_LINK_RE.search(value):
        messages.append("a web address in the text becomes a link on GitHub; put the URL under links or code")
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
                problems.extend(length_problems(doc, here + ("intro",), node["intro"]))
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
            self._index = scan(self.root)
        return self._index


MAX_TEXT = 400  # characters of a description, note or intro; the seed's longest description has 230
_YEAR_IN_VENUE = re.compile(r"\s*'?\b(?:19|20)\d\d\b\s*")
_SEVERAL_AUTHORS = re.compile(r"\s(?:and|&)\s|;")
_NAME_SUFFIXES = {"jr", "jr.", "sr", "sr.", "ii", "iii", "iv"}


def year_problems(doc: Document, year, limit: int) -> list[Problem]:
    if isinstance(year, float):  # JSON Schema counts 2023.0 as an integer
        message = f"must be a whole number such as 2023; write {year!r} without the decimal point"
        return [doc.problem(("year",), message)]
    if not FIRST_YEAR <= year <= limit:
        return [doc.problem(("year",), f"must be between {FIRST_YEAR} and {limit}")]
    return []


def venue_problems(doc: Document, venue: str) -> list[Problem]:
    """The venue must be a label of ``catalog/data/venues.yaml``, spelt as there."""
    known = venues()
    if venue in known or PLACEHOLDER_RE.match(venue):
        return []
    without_year = _YEAR_IN_VENUE.sub(" ", venue).strip()
    folded = {label.casefold(): label for label in known}
    match = folded.get(without_year.casefold())
    close = difflib.get_close_matches(without_year.casefold(), list(folded), n=1, cutoff=0.6)
    message = f"unknown venue {venue!r}"
    if match is not None:
        message += f"; write it as {match!r}"
    elif close:
        message += f"; did you mean {folded[close[0]]!r}"
    if without_year != venue:
        message += "; the year goes in `year`, not in the venue"
    if match is None:
        message += (
            f"; {'otherwise ' if close else ''}use a label of catalog/data/venues.yaml ({', '.join(known)}),"
            " or add the venue there with its BibTeX type and full name"
        )
    return [doc.problem(("venue",), message)]


def author_problems(doc: Document, index: int, author: str) -> list[Problem]:
    """One person per item, written ``First Last``."""
    where = ("authors", index)
    node = _scalar_node(doc, where)
    if node is not None and node.end_mark.line > node.start_mark.line and "\n" not in author:
        return [
            doc.problem(
                where,
                f"YAML joins line {node.start_mark.line + 2} to this item, giving {author!r}; "
                "put each author on its own line starting with '- ', at the same indentation",
            )
        ]
    if _SEVERAL_AUTHORS.search(author):
        return [doc.problem(where, f"{author!r} names several people; write one author per '- ' item")]
    if "," in author:
        parts = [part.strip() for part in author.split(",")]
        if len(parts) == 2 and parts[1].casefold() in _NAME_SUFFIXES:
            return []
        if len(parts) == 2 and len(parts[0].split()) == 1 and parts[1]:
            return [
                doc.problem(
                    where, f"{author!r} reads as 'Last, First'; write it as '{parts[1]} {parts[0]}' (First Last)"
                )
            ]
        return [doc.problem(where, f"{author!r} names several people; write one author per '- ' item")]
    return []


def length_problems(doc: Document, where: tuple, value: str) -> list[Problem]:
    if len(value) <= MAX_TEXT:
        return []
    return [
        doc.problem(
            where, f"is {len(value)} characters long; keep it to one or two sentences of at most {MAX_TEXT} characters"
        )
    ]


def _scalar_node(doc: Document, where: tuple):
    """The YAML node at ``where``, when the document was parsed into nodes."""
    node = doc.node
    for step in where:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            return None
    return node if isinstance(node, yaml.ScalarNode) else None


_TEXT_FIELDS = (("method", False), ("title", False), ("venue", False), ("description", True))


def field_problems(doc: Document, year_limit: int, skip: frozenset[str] = frozenset()) -> list[Problem]:
    """The rules on the year, venue, authors and text fields, on those of the right type and not in ``skip``.

    A file that fails the schema gets these too (``skip``: the fields the schema complained about), so
    a contributor sees every problem that can be found at once.
    """
    data = doc.data
    problems: list[Problem] = []
    year = data.get("year")
    if "year" not in skip and isinstance(year, (int, float)) and not isinstance(year, bool):
        problems.extend(year_problems(doc, year, year_limit))
    if "venue" not in skip and isinstance(data.get("venue"), str):
        problems.extend(venue_problems(doc, data["venue"]))
    if "description" not in skip and isinstance(data.get("description"), str):
        problems.extend(length_problems(doc, ("description",), data["description"]))
    # Most values break no text rule: text_problems's first test, inlined here, spares a call per value.
    clean = _CLEAN_RE.match
    for key, sentence in _TEXT_FIELDS:
        value = data.get(key)
        if key not in skip and isinstance(value, str) and (not clean(value) or (sentence and not value.endswith("."))):
            problems.extend(text_problems(doc, (key,), value, sentence=sentence))
    authors = data.get("authors")
    if "authors" not in skip and isinstance(authors, list):
        for index, author in enumerate(authors):
            if not isinstance(author, str):
                continue
            if not clean(author):
                problems.extend(text_problems(doc, ("authors", index), author))
            problems.extend(author_problems(doc, index, author))
    return problems


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
    problems.extend(field_problems(doc, year_limit))

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
        problems.extend(length_problems(doc, where, text))

    if data.get("implementations") and "no_implementation" in data:
        problems.append(
            doc.problem(
                ("no_implementation",),
                "the paper lists implementations: remove no_implementation, or the implementations if they are wrong",
            )
        )
    if "note" in data.get("no_implementation", {}):
        where = ("no_implementation", "note")
        problems.extend(text_problems(doc, where, data["no_implementation"]["note"], sentence=True))
        problems.extend(length_problems(doc, where, data["no_implementation"]["note"]))
    names: dict[str, int] = {}
    for index, item in enumerate(data.get("implementations", ())):
        if "covers" in item:
            where = ("implementations", index, "covers")
            problems.extend(text_problems(doc, where, item["covers"], sentence=True))
            problems.extend(length_problems(doc, where, item["covers"]))
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
# Characters that end or nest a Markdown link destination: a URL holding one could render as a second link.
_SPACE_RE = re.compile(r"[\s()<>\[\]\"'`\\]")
_SPACE_MESSAGE = "URL must not contain spaces, ( ) < > [ ] \\ ` or quotes; percent-encode them (( is %28, ) is %29)"


def _url_parts(url: str) -> tuple[str | None, str, str]:
    """``(problem message or None, lowercased host, _url_key(url))`` from a single match."""
    match = _URL_RE.match(url)
    if not match:
        return (_SPACE_MESSAGE if _SPACE_RE.search(url) else "must be an absolute https:// URL"), "", url
    user, _host, _port, rest = match.groups()
    host = url_host(url)
    if _SPACE_RE.search(url):
        message = _SPACE_MESSAGE
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
    return _key_from_parts(url_host(url), match.group(4))


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


# --------------------------------------------------------------------------- whole catalog


def _identities(doc: Document) -> dict[tuple, tuple]:
    """What makes two files the same paper -> where it is in ``doc``: arXiv id, DOI, title, paper links."""
    data = doc.data
    found: dict[tuple, tuple] = {}
    if "arxiv" in data:
        found[("arXiv id", data["arxiv"])] = ("arxiv",)
    if "doi" in data:
        found[("DOI", data["doi"].casefold())] = ("doi",)
    found[("title", title_key(data["title"]))] = ("title",)
    link_keys = doc.link_keys
    if link_keys is None:  # not checked by paper_problems
        link_keys = [_url_key(link["url"]) for link in data["links"]]
    for index, link in enumerate(data["links"]):
        where = ("links", index, "url")
        match = ARXIV_URL_RE.match(link["url"]) if link["kind"] == "arxiv" else None
        if match:
            found.setdefault(("arXiv id", match.group(1)), where)
        if link["kind"] == "doi":
            found.setdefault(("DOI", link["url"].removeprefix("https://doi.org/").casefold()), where)
        found.setdefault(("link", link_keys[index]), where)
    return found


def duplicate_problems(docs: list[Document], readme: str = "") -> list[Problem]:
    """The same paper in two files: same arXiv id, DOI, normalised title or paper link.

    The problem is reported on the newer file, the one whose entry (its exact run of paper-link lines)
    is not in the committed README.md yet: the file a pull request adds. When that cannot tell them
    apart, on the file whose name sorts later. The older file gets a line pointing to it.
    """
    lines = readme.splitlines()
    labels = {kind: value["label"] for kind, value in link_kinds()["paper"].items()}
    positions: dict[str, list[int]] = {}
    for number, line in enumerate(lines):
        positions.setdefault(line, []).append(number)

    def listed(doc: Document) -> bool:
        block = [f"\\[[{labels[link['kind']]}]({link['url']})\\]" for link in doc.data["links"]]
        for start in positions.get(block[0], ()):
            end = start + len(block)
            if (
                lines[start:end] == block
                and not (start and lines[start - 1].startswith("\\[["))
                and not (end < len(lines) and lines[end].startswith("\\[["))
            ):
                return True
        return False

    first: dict[tuple, Document] = {}
    identities: dict[str, dict[tuple, tuple]] = {}
    pairs: dict[tuple, list] = {}  # (newer path, older path) -> [(identity, where in newer, where in older)]
    by_path = {doc.path: doc for doc in docs}
    for doc in sorted(docs, key=lambda doc: doc.path):
        identities[doc.path] = _identities(doc)
        for identity, where in identities[doc.path].items():
            other = first.setdefault(identity, doc)
            if other is doc:
                continue
            other_where = identities[other.path][identity]
            if listed(doc) and not listed(other):
                pairs.setdefault((other.path, doc.path), []).append((identity, other_where, where))
            else:
                pairs.setdefault((doc.path, other.path), []).append((identity, where, other_where))
    problems: list[Problem] = []
    for (newer_path, older_path), matches in pairs.items():
        newer, older = by_path[newer_path], by_path[older_path]
        parts = [
            f"{kind} {value}" if kind in ("arXiv id", "DOI") else f"paper {kind}" for (kind, value), _, _ in matches
        ]
        what = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        if listed(older) and not listed(newer):
            why = f"{older_path} is already in README.md"
        elif listed(older):
            why = "README.md cannot tell the two files apart and this file's name sorts later"
        else:
            why = "neither file is in README.md yet and this file's name sorts later"
        problems.append(
            newer.problem(
                matches[0][1],
                f"same paper as {older_path} (same {what}); delete this file or move what it adds to "
                f"{older_path} (reported here because {why})",
            )
        )
        problems.append(
            older.problem(
                matches[0][2], f"{newer_path} repeats this paper (same {what}); the problem is reported there"
            )
        )
    return problems


def _paper_id(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".yaml")


def extension_problems(docs: list[Document], ids: set[str]) -> list[Problem]:
    """The ``extends`` rules: a journal version names an existing conference paper, not itself and not
    another extension (no chains or cycles), and shares a section with it.

    ``docs`` are the papers that passed the schema; ``ids`` the ids of every paper file, loaded or not
    (a file that failed the schema has its own problems, so naming it is not reported again).
    """
    by_id = {_paper_id(doc.path): doc for doc in docs}
    known = venues()
    problems: list[Problem] = []
    for doc in docs:
        target = doc.data.get("extends")
        if target is None:
            continue
        where = ("extends",)
        own = _paper_id(doc.path)
        venue = doc.data["venue"]
        if venue in known and known[venue].get("type") != "article":
            problems.append(
                doc.problem(
                    where,
                    f"only a journal version extends a conference paper, and {venue!r} is not a journal in "
                    "catalog/data/venues.yaml; remove extends, or put it in the journal version's file",
                )
            )
        if target == own:
            problems.append(
                doc.problem(where, "a paper cannot extend itself; write the id of the conference paper it extends")
            )
            continue
        other = by_id.get(target)
        if other is None:
            if target not in ids:
                hint = did_you_mean(target, sorted(ids - {own})) or (
                    "; write the id of the conference paper (its file name in papers/ without .yaml)"
                )
                problems.append(doc.problem(where, f"unknown paper id {target!r}{hint}"))
            continue
        if "extends" in other.data:
            problems.append(
                doc.problem(
                    where,
                    f"{target!r} is itself an extension of {other.data['extends']!r}; extensions do not chain: "
                    "name the original conference paper, and remove extends from one of the two files if they "
                    "name each other",
                )
            )
            continue
        shared = set(doc.data["sections"]) & set(other.data["sections"])
        if not shared:
            problems.append(
                doc.problem(
                    where,
                    f"shares no section with {target!r} ({', '.join(other.data['sections'])}); add its first "
                    f"section {other.data['sections'][0]!r} to sections, where the two are listed together",
                )
            )
    return problems


def check_file(root: Path, rel: str, known: list[str], kdimpl: _KdimplIndex, limit: int) -> tuple[Document, bool]:
    """Parse and check one paper file; ``ok`` is whether it passed the schema (and so can be loaded)."""
    raw = read_bytes(root, rel)
    if isinstance(raw, Document):
        return raw, False
    return _check_text(rel, raw, known, kdimpl, limit)


_QUOTED_VALUE = re.compile(r"""^\s*(?:- )?[A-Za-z_-]+: ['"]""")


def with_yaml_hint(problem: Problem, raw: bytes) -> Problem:
    """A YAML syntax error with what usually causes it and how to fix it."""
    if problem.field != "yaml" or not problem.message.startswith("invalid YAML"):
        return problem
    lines = raw.decode("utf-8", errors="replace").splitlines()
    line = lines[problem.line - 1] if 0 < problem.line <= len(lines) else ""
    value = line.split(": ", 1)[1] if ": " in line else ""
    if "\t" in line[: len(line) - len(line.lstrip())] or "tab" in problem.message:
        hint = "indent with spaces, not tabs"
    elif "mapping values are not allowed" in problem.message and ": " in value:
        value = value.strip()
        quoted = f'"{value}"' if '"' not in value else "'" + value.replace("'", "''") + "'"
        hint = f"a value that contains ': ' must be quoted: {line.split(': ', 1)[0].strip()}: {quoted}"
    elif _QUOTED_VALUE.match(line):
        hint = "a quoted value must end with the quote it starts with; write a ' inside '...' as ''"
    else:
        return problem
    return Problem(problem.path, problem.line, problem.field, f"{problem.message}; {hint}")


def _check_text(rel: str, raw: bytes, known: list[str], kdimpl: _KdimplIndex, limit: int) -> tuple[Document, bool]:
    doc = parse_text(rel, raw)
    if doc.problems:
        doc.problems = [with_yaml_hint(problem, raw) for problem in doc.problems]
        return doc, False
    if not isinstance(doc.data, dict):
        doc.problems.append(doc.problem((), f"expected a mapping of paper fields, got {describe(doc.data)}"))
        return doc, False
    schema_errors = schema_problems(doc, "paper")
    if schema_errors:
        doc.problems.extend(schema_errors)
        failed = frozenset(problem.field.split(".")[0].split("[")[0] for problem in schema_errors)
        doc.problems.extend(field_problems(doc, limit, skip=failed))
        return doc, False
    doc.problems.extend(paper_problems(doc, known, kdimpl, limit))
    return doc, True


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
        if sections_doc.problems:
            raw = read_bytes(root, sections_rel)
            raw = raw if isinstance(raw, bytes) else b""
            problems.extend(with_yaml_hint(problem, raw) for problem in sections_doc.problems)
        if not sections_doc.problems:
            schema_errors = schema_problems(sections_doc, "sections")
            problems.extend(schema_errors)
            if not schema_errors:
                problems.extend(section_problems(sections_doc))
                sections = build_sections(sections_doc.data)
                known = section_ids(sections_doc.data)

    try:
        files = paper_files(root)
    except OSError as error:
        problems.append(Problem(PAPERS_DIR, 1, FILE_FIELD, f"cannot list the folder: {error.strerror or error}"))
        files = []
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
    for rel in yaml_files:
        doc, ok = check_file(root, rel, known, kdimpl, limit)
        problems.extend(doc.problems)
        if ok:
            loaded.append(doc)
            papers.append(build_paper(doc))
    try:
        readme = read_regular_file(root / "README.md").decode("utf-8", errors="replace")
    except OSError:
        readme = ""
    problems.extend(duplicate_problems(loaded, readme))
    problems.extend(extension_problems(loaded, {_paper_id(rel) for rel in yaml_files}))
    problems.sort()
    catalog = Catalog(papers=tuple(papers), sections=sections, root=str(root))
    return Result(catalog, problems, kdimpl._index)


def load_catalog(root: str | Path) -> tuple[Catalog, list[Problem]]:
    """Load and validate everything; the catalog holds the papers that loaded, problems are sorted."""
    result = validate_root(Path(root))
    return result.catalog, result.problems
