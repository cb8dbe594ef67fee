"""arXiv metadata for ``python -m catalog new`` (a YAML stub) and ``python -m catalog verify``.

Both read the arXiv API's Atom feed (https://info.arxiv.org/help/api/user-manual.html) through
:mod:`catalog.http` (bodies capped at :data:`catalog.http.MAX_BODY_BYTES`); the base URL comes from
``CATALOG_ARXIV_API`` when set (tests point it at a local server). ``verify`` asks for all ids in
batched ``id_list`` queries, caches the records like ``links`` does, and compares titles
(:func:`catalog.text.same_title`) and authors (accents, case, punctuation, hyphens, initials), so only
real differences are reported, as ``path:line: field: message``.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from catalog.bibtex import ascii_fold, base_key, surname, venue_table
from catalog.http import Deadline, JsonCache, Policy, Throttle, request_with_retries
from catalog.loader import PAPERS_DIR, SECTIONS_FILE, Problem, parse_text, read_regular_file
from catalog.text import same_title, title_key, url_host

DEFAULT_API = "https://export.arxiv.org/api/query"
ENV_API = "CATALOG_ARXIV_API"
DEFAULT_CACHE = Path(".cache") / "catalog-arxiv.json"
NS = {"atom": "http://www.w3.org/2005/Atom", "arxiv": "http://arxiv.org/schemas/atom"}
TODO_SECTION = "TODO-section-id"
TODO_DESCRIPTION = "TODO: say in one or two sentences what the paper distils and how"

_NEW_ID = r"\d{4}\.\d{4,5}"
_OLD_ID = r"[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7}"
_REF_RE = re.compile(
    rf"""^(?:arxiv:\s*|(?:https?://)?(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/)?
         (?P<id>{_NEW_ID}|{_OLD_ID})(?P<version>v\d+)?(?:\.pdf)?/?$""",
    re.IGNORECASE | re.VERBOSE,
)
_GITHUB_RE = re.compile(r"(?:https?://)?(?:www\.)?github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", re.IGNORECASE)
_PAPER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


#: What :func:`catalog.http.error_kind` names mean, for one-line messages.
_REASONS = {
    "dns": "DNS lookup failed",
    "refused": "connection refused",
    "reset": "connection reset",
    "timeout": "timed out",
    "deadline": "out of time",
    "redirects": "too many redirects",
    "too-large": "answer too large",
    "connection": "connection failed",
}


class ArxivError(RuntimeError):
    """The arXiv API could not be reached or answered something unusable."""


class ArxivUnreachable(ArxivError):
    """No answer from the arXiv API: ``host`` and a short ``reason``."""

    def __init__(self, host: str, reason: str):
        super().__init__(f"could not reach arXiv ({host}: {reason})")
        self.host = host
        self.reason = reason


def api_url() -> str:
    return os.environ.get(ENV_API) or DEFAULT_API


def parse_ref(text: str) -> tuple[str, str | None]:
    """``arxiv:2205.01529``, ``2205.01529v2``, ``https://arxiv.org/abs|pdf/…`` -> ``(id, version or None)``."""
    match = _REF_RE.match(text.strip())
    if not match:
        raise ValueError(
            f"not an arXiv reference: {text!r}; expected arxiv:ID, ID, or https://arxiv.org/abs/ID "
            "(ID like 2205.01529 or cs/0601001, optional vN)"
        )
    version = match.group("version")
    return match.group("id"), version.lower() if version else None


@dataclass
class ArxivRecord:
    """The fields of one Atom ``<entry>`` that the catalog uses."""

    id: str  # without version
    version: str | None
    title: str
    authors: list[str]
    year: int
    summary: str = ""
    comment: str = ""
    journal_ref: str = ""
    doi: str = ""
    primary_category: str = ""

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.id}"


def _text(node, path: str) -> str:
    found = node.find(path, NS)
    return " ".join((found.text or "").split()) if found is not None else ""


def parse_feed(xml_text: str | bytes) -> list[ArxivRecord]:
    """Parse an arXiv API Atom feed; raise :class:`ArxivError` on an error entry or malformed XML."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ArxivError(f"arXiv API answer is not valid XML: {exc}") from exc
    records = []
    for entry in root.findall("atom:entry", NS):
        entry_id = _text(entry, "atom:id")
        if "/api/errors" in entry_id:
            raise ArxivError(f"arXiv API error: {_text(entry, 'atom:summary') or _text(entry, 'atom:title')}")
        match = re.search(r"arxiv\.org/abs/(.+?)(v\d+)?$", entry_id)
        if not match:
            continue
        published = _text(entry, "atom:published")
        records.append(ArxivRecord(
            id=match.group(1),
            version=match.group(2),
            title=_text(entry, "atom:title"),
            authors=[_text(a, "atom:name") for a in entry.findall("atom:author", NS)],
            year=int(published[:4]) if published[:4].isdigit() else 0,
            summary=_text(entry, "atom:summary"),
            comment=_text(entry, "arxiv:comment"),
            journal_ref=_text(entry, "arxiv:journal_ref"),
            doi=_text(entry, "arxiv:doi"),
            primary_category=(entry.find("arxiv:primary_category", NS).get("term", "")
                              if entry.find("arxiv:primary_category", NS) is not None else ""),
        ))
    return records


def github_link(record: ArxivRecord) -> str | None:
    """The first GitHub repository named in the comments, else in the abstract, as an https URL."""
    for text in (record.comment, record.summary):
        match = _GITHUB_RE.search(text)
        if match:
            url = match.group(0).rstrip(".,;:)")
            if url.endswith(".git"):
                url = url[:-4]
            url = re.sub(r"^(?:https?://)?(?:www\.)?", "https://", url, flags=re.IGNORECASE)
            return url
    return None


def fetch_records(ids, *, policy: Policy | None = None, batch: int = 50, pause: float = 3.0,
                  deadline: float | None = 120.0, cache: JsonCache | None = None) -> dict[str, ArxivRecord]:
    """Records for ``ids`` (without versions) through batched ``id_list`` queries; cached records reused.

    ``pause`` is the wait between two API calls that arXiv's terms of use ask for (3 s).
    """
    policy = policy or Policy(timeout=30.0, retries=3, backoff=3.0, host_concurrency=1)
    throttle, limit = Throttle(policy), Deadline(deadline)
    found: dict[str, ArxivRecord] = {}
    todo = []
    for arxiv_id in dict.fromkeys(ids):
        cached = cache.get(arxiv_id) if cache is not None else None
        record = _cached_record(cached)
        if record is not None:
            found[arxiv_id] = record
            continue
        if cached is not None:
            cache.warn(f"arXiv {arxiv_id}: malformed cache record; asking arXiv again")
        todo.append(arxiv_id)
    for start in range(0, len(todo), batch):
        if start and pause:
            time.sleep(pause)
        chunk = todo[start:start + batch]
        out = request_with_retries("GET", api_url(), policy, throttle, limit, stream=False,
                                   params={"id_list": ",".join(chunk), "max_results": str(len(chunk))})
        if out.response is None:
            host = url_host(api_url()) or api_url()
            raise ArxivUnreachable(host, _REASONS.get(out.error or "", out.error or "no answer"))
        if out.response.status_code != 200:
            raise ArxivError(f"arXiv API {api_url()} answered HTTP {out.response.status_code}")
        for record in parse_feed(out.response.content):
            if record.id in chunk:
                found[record.id] = record
                if cache is not None:
                    cache.put(record.id, asdict(record))
    if cache is not None:
        cache.save()
    return found


def _cached_record(record: dict | None) -> ArxivRecord | None:
    """The record a cache entry holds, or None when there is none or it is malformed."""
    if record is None:
        return None
    names = {item.name for item in fields(ArxivRecord)}
    values = {key: value for key, value in record.items() if key in names}
    try:
        parsed = ArxivRecord(**values)
    except TypeError:  # a field is missing
        return None
    text_fields = (parsed.id, parsed.title, parsed.summary, parsed.comment, parsed.journal_ref, parsed.doi,
                   parsed.primary_category)
    if not (all(isinstance(value, str) for value in text_fields) and isinstance(parsed.year, int)
            and isinstance(parsed.version, (str, type(None))) and isinstance(parsed.authors, list)
            and all(isinstance(name, str) for name in parsed.authors)):
        return None
    return parsed


# --- normalisation and comparison ----------------------------------------------------------------

_TEX = re.compile(r"\$|\\[a-zA-Z]+|[{}^_]")


def detex(text: str) -> str:
    """arXiv titles may carry LaTeX math markup: drop it (``$\\mathcal{X}$`` -> `` X ``)."""
    return _TEX.sub(" ", text)


def fold(text: str) -> str:
    """NFKD, accents dropped, casefolded, LaTeX markup dropped, punctuation/hyphens -> spaces, collapsed."""
    text = unicodedata.normalize("NFKD", detex(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = "".join(c if c.isalnum() else " " for c in text)
    return " ".join(text.split())


def names_match(a: str, b: str) -> bool:
    """Same person up to accents, case, punctuation, hyphens, initials and a missing middle name."""
    fa, fb = fold(a), fold(b)
    if fa.replace(" ", "") == fb.replace(" ", ""):
        return True
    ta, tb = fa.split(), fb.split()
    if not ta or not tb or ta[-1] != tb[-1]:
        return False
    ga, gb = ta[:-1], tb[:-1]
    if not ga or not gb:
        return True  # one side has the surname only
    def same(x: str, y: str) -> bool:
        return x == y or (len(x) == 1 and y.startswith(x)) or (len(y) == 1 and x.startswith(y))
    if not same(ga[0], gb[0]):
        return False
    middle_a, middle_b = ga[1:], gb[1:]
    return not middle_a or not middle_b or len(middle_a) != len(middle_b) or all(map(same, middle_a, middle_b))


def _key_lines(text: str) -> tuple[dict[str, int], list[int]]:
    """Line numbers (1-based) of top-level keys and of the items of ``authors`` in a paper file."""
    keys: dict[str, int] = {}
    author_lines: list[int] = []
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^([A-Za-z_]+):", line)
        if match:
            current = match.group(1)
            keys.setdefault(current, number)
        elif current == "authors" and re.match(r"^\s+-\s", line):
            author_lines.append(number)
    return keys, author_lines


def compare(paper, record: ArxivRecord, root: Path) -> list[Problem]:
    """Title and author differences between a catalog paper and its arXiv record."""
    path = paper.path or f"papers/{paper.id}.yaml"
    keys, author_lines = _key_lines(_read(root / path))
    out: list[Problem] = []
    if not same_title(paper.title, detex(record.title)):
        out.append(Problem(path, keys.get("title", 1), "title",
                            f"{paper.title!r} here, {record.title!r} on arXiv {record.id}"))
    ours, theirs = list(paper.authors), list(record.authors)
    line = keys.get("authors", 1)
    if len(ours) != len(theirs):
        missing = [n for n in theirs if not any(names_match(n, m) for m in ours)]
        extra = [n for n in ours if not any(names_match(n, m) for m in theirs)]
        detail = "".join([f"; missing {', '.join(missing)}" if missing else "",
                          f"; not on arXiv: {', '.join(extra)}" if extra else ""])
        out.append(Problem(path, line, "authors",
                            f"{len(ours)} authors here, {len(theirs)} on arXiv {record.id}{detail}"))
    else:
        for i, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            if not names_match(mine, other):
                where = author_lines[i] if i < len(author_lines) else line
                if any(names_match(mine, n) for n in theirs):
                    message = f"{mine!r} is at another position on arXiv {record.id} (here {i + 1})"
                else:
                    message = f"{mine!r} here, {other!r} on arXiv {record.id}"
                out.append(Problem(path, where, f"authors[{i}]", message))
    return out


def verify(catalog, root: Path, records: dict[str, ArxivRecord]) -> list[Problem]:
    out = []
    for paper in sorted(catalog.papers, key=lambda p: p.path or p.id):
        if not paper.arxiv:
            continue
        record = records.get(paper.arxiv)
        if record is None:
            keys, _ = _key_lines(_read(root / (paper.path or f"papers/{paper.id}.yaml")))
            out.append(Problem(paper.path or f"papers/{paper.id}.yaml", keys.get("arxiv", 1), "arxiv",
                                f"arXiv has no record {paper.arxiv}"))
            continue
        out.extend(compare(paper, record, root))
    return out


def _read(path: Path) -> str:
    try:
        return read_regular_file(path).decode("utf-8", errors="replace")
    except OSError:
        return ""


# --- `new`: a stub for a contributor ---------------------------------------------------------------


def existing_papers(root: Path) -> list[tuple[str, str | None, str]]:
    """``(repo-relative path, arxiv id, title)`` of every ``papers/*.yaml``, read raw so that files the
    loader rejects still count as duplicates."""
    out = []
    for path in sorted((root / PAPERS_DIR).glob("*.yaml")):
        if path.name == SECTIONS_FILE:
            continue
        rel = path.relative_to(root).as_posix()
        try:
            data = parse_text(rel, read_regular_file(path)).data
        except OSError:
            continue
        if isinstance(data, dict):
            arxiv = data.get("arxiv")
            out.append((rel, str(arxiv) if arxiv else None, str(data.get("title", ""))))
    return out


def find_duplicate(record: ArxivRecord, root: Path) -> str | None:
    """A message naming the existing file when the paper is already in the catalog, else None."""
    key = title_key(detex(record.title))
    for path, arxiv, title in existing_papers(root):
        if arxiv and arxiv == record.id:
            return f"{path} already has arXiv {record.id}"
        if title and title_key(title) == key:
            return f"{path} already has the title {title!r}"
    return None


def guess_venue(record: ArxivRecord) -> tuple[str, int]:
    """A venue label named in the comments or journal reference (exactly one known label), else arXiv."""
    text = f"{record.comment} {record.journal_ref}"
    hits = [label for label in venue_table() if re.search(rf"(?<![A-Za-z]){re.escape(label)}(?![A-Za-z])", text)]
    if len(hits) != 1:
        return "arXiv", record.year
    year = re.search(rf"{re.escape(hits[0])}\W*((?:19|20)\d\d)", text)
    return hits[0], int(year.group(1)) if year else record.year


def default_id(record: ArxivRecord, root: Path) -> str:
    """``<surname><year>``, or with the first title word, or numbered: a file name not yet taken."""
    name = ascii_fold(surname(record.authors[0])) if record.authors else "paper"
    candidates = [f"{name}{record.year}"]
    word = base_key(_PseudoPaper(record))[len(name) + 4:]
    if word:
        candidates.append(f"{name}{record.year}-{word}")
    for candidate in candidates:
        if not (root / "papers" / f"{candidate}.yaml").exists():
            return candidate
    n = 2
    while (root / "papers" / f"{candidates[-1]}-{n}.yaml").exists():
        n += 1
    return f"{candidates[-1]}-{n}"


class _PseudoPaper:
    def __init__(self, record: ArxivRecord):
        self.authors, self.year, self.title = record.authors, record.year, record.title


def stub(record: ArxivRecord) -> dict:
    """The paper mapping for a new file: everything arXiv knows, TODO where a human must decide."""
    venue, year = guess_venue(record)
    data = {
        "title": record.title,
        "authors": list(record.authors),
        "venue": venue,
        "year": year,
        "arxiv": record.id,
        "sections": [TODO_SECTION],
        "description": TODO_DESCRIPTION,
        "links": [{"kind": "arxiv", "url": record.abs_url}],
    }
    if record.doi:
        data["doi"] = record.doi
    code = github_link(record)
    if code:
        data["code"] = [{"url": code, "official": True}]
    return data


def template(arxiv_id: str | None = None) -> dict:
    """A paper mapping for a contributor to fill in without network: every required field, marked TODO.

    ``check`` reports each TODO as a placeholder still to fill in.
    """
    data = {
        "title": "TODO: the paper's title",
        "authors": ["TODO: First Author", "TODO: Second Author"],
        "venue": "TODO: venue, e.g. CVPR, or arXiv",
        "year": "TODO: year",
        "sections": [TODO_SECTION],
        "description": TODO_DESCRIPTION,
        "links": [{"kind": "TODO-kind", "url": "TODO: https:// URL of the paper"}],
    }
    if arxiv_id:
        data["arxiv"] = arxiv_id
        data["links"] = [{"kind": "arxiv", "url": f"https://arxiv.org/abs/{arxiv_id}"}]
    return data
