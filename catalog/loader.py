"""Read ``papers/*.yaml`` and ``papers/_sections.yaml`` into the model, with positions for messages.

Files are parsed with PyYAML's safe loader (libyaml's ``CSafeLoader`` when present) into node
trees, so every problem can name the line it is on; values are built from the nodes here (plain
strings, numbers, booleans, lists and mappings only: no tags, no merge keys, no duplicate keys).
Each document is then checked against the published JSON Schema (``catalog/schema/*.json``) with
``jsonschema``, whose errors are turned into ``path:line: field: message`` problems.

Hostile files cannot hurt: only regular files are opened, at most :data:`MAX_FILE_BYTES` of them
are read, and text nested deeper than :data:`MAX_NESTING` is refused before the parser sees it
(libyaml's composer recurses on the C stack).
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import yaml

from catalog.model import CodeLink, Implementation, Link, NoImplementation, Paper, Section
from catalog.text import url_host

PAPERS_DIR = "papers"
SECTIONS_FILE = "_sections.yaml"
SCHEMA_DIR = Path(__file__).parent / "schema"
DATA_DIR = Path(__file__).parent / "data"
FILE_FIELD = "(file)"  # the ``field`` of problems that concern a whole file
# What `python -m catalog new` writes where a person must decide ("TODO-section-id", "TODO: say...").
PLACEHOLDER_RE = re.compile(r"TODO(?![A-Za-z0-9])")
PLACEHOLDER_MESSAGE = "still a placeholder (TODO ...): fill it in"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_MAX_VALUES = 20_000  # values built per document; stops alias bombs
_MAX_DEPTH = 32
MAX_NESTING = 64  # flow brackets or block levels; checked on the text, before parsing
MAX_FILE_BYTES = 1_000_000  # a paper file is a few hundred bytes


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in the data: ``str()`` gives ``path:line: field: message``."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class _Invalid(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


@dataclass
class Document:
    """One parsed YAML file: its data, its node tree (for line numbers) and its problems."""

    path: str  # repository-relative, with "/" separators
    data: object = None
    node: yaml.Node | None = None
    problems: list[Problem] = field(default_factory=list)
    link_keys: list[str] | None = None  # set by validate.paper_problems for duplicate_problems

    def line(self, where: tuple = ()) -> int:
        """1-based line of the value at ``where`` (keys and indices), or of its deepest existing parent."""
        node = self.node
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for step in where:
            if isinstance(node, yaml.MappingNode) and isinstance(step, str):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == step:
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
                node = node.value[step]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def problem(self, where: tuple, message: str, line: int | None = None) -> Problem:
        return Problem(self.path, self.line(where) if line is None else line, field_name(where), message)


def field_name(where: tuple) -> str:
    """``("links", 0, "url")`` -> ``links[0].url``; the empty path names the file."""
    text = ""
    for step in where:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text or FILE_FIELD


# --------------------------------------------------------------------------- YAML

_LEADING_DASHES = re.compile(r"(?:-[ \t]+)+")


def nesting_problem(text: str) -> tuple[int, str] | None:
    """``(line, message)`` when the text nests deeper than :data:`MAX_NESTING`, else None.

    A cheap scan that over-counts rather than under-counts: flow brackets (``[`` and ``{``, quotes
    ignored) and block levels (indentation columns plus leading ``- `` markers).
    """
    flow = 0
    columns: list[int] = []
    for number, line in enumerate(text.split("\n"), 1):
        content = line.lstrip(" ")
        if content and not content.startswith("#"):
            column = len(line) - len(content)
            while columns and columns[-1] >= column:
                columns.pop()
            columns.append(column)
            dashes = _LEADING_DASHES.match(content)
            block = len(columns) + (dashes.group(0).count("-") if dashes else 0)
            if block > MAX_NESTING:
                return number, f"nested more than {MAX_NESTING} levels deep; a data file needs a few"
        if not flow and "[" not in line and "{" not in line:
            continue
        for char in line:
            if char in "[{":
                flow += 1
                if flow > MAX_NESTING:
                    return number, f"brackets nested more than {MAX_NESTING} levels deep; a data file needs a few"
            elif char in "]}" and flow:
                flow -= 1
    return None




class _Builder:
    """Python values from a composed node tree, refusing what a data file has no use for."""

    def __init__(self) -> None:
        self.constructor = yaml.constructor.SafeConstructor()
        self.count = 0

    def build(self, node: yaml.Node, depth: int = 0):
        self.count += 1
        if self.count > _MAX_VALUES or depth > _MAX_DEPTH:
            raise _Invalid(node, "document too large or too deeply nested (aliases?)")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR_TAG:
                return node.value
            constructor = yaml.constructor.SafeConstructor.yaml_constructors.get(node.tag)
            if constructor is None or node.tag.startswith("tag:yaml.org,2002:binary"):
                raise _Invalid(node, f"unsupported YAML tag {node.tag!r}; write plain values")
            return constructor(self.constructor, node)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise _Invalid(node, f"unsupported YAML tag {node.tag!r}; write plain values")
            return [self.build(item, depth + 1) for item in node.value]
        if node.tag != "tag:yaml.org,2002:map":
            raise _Invalid(node, f"unsupported YAML tag {node.tag!r}; write plain values")
        result: dict = {}
        first_line: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Invalid(key_node, "YAML merge keys (<<) are not supported; write the fields out")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                raise _Invalid(key_node, "mapping keys must be plain strings")
            key = key_node.value
            if key in result:
                raise _Invalid(key_node, f"duplicate key {key!r} (first at line {first_line[key]})")
            first_line[key] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, depth + 1)
        return result


def parse_text(path: str, raw: bytes) -> Document:
    """Parse one file's bytes; never raises for bad data (problems are recorded instead)."""
    doc = Document(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        byte = raw[error.start : error.start + 1].hex()
        doc.problems.append(Problem(path, line, FILE_FIELD, f"not valid UTF-8 (byte 0x{byte}); save the file as UTF-8"))
        return doc
    if text.startswith("\ufeff"):
        doc.problems.append(Problem(path, 1, FILE_FIELD, "starts with a byte-order mark; save as UTF-8 without BOM"))
        return doc
    too_deep = nesting_problem(text)
    if too_deep is not None:
        doc.problems.append(Problem(path, too_deep[0], "yaml", too_deep[1]))
        return doc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except RecursionError:  # the scan above should make this unreachable
        doc.problems.append(Problem(path, 1, "yaml", "nested too deeply to parse"))
        return doc
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = error.problem or error.context or "syntax error"
        doc.problems.append(Problem(path, line, "yaml", f"invalid YAML: {reason}"))
        return doc
    except yaml.YAMLError as error:  # e.g. reader errors on control characters
        mark = getattr(error, "problem_mark", None)
        line = 1
        if mark is None and hasattr(error, "position"):
            line = text[: error.position].count("\n") + 1
        doc.problems.append(Problem(path, line, "yaml", f"invalid YAML: {_one_line(error)}"))
        return doc
    finally:
        loader.dispose()
    if node is None:
        doc.problems.append(Problem(path, 1, FILE_FIELD, "empty file; expected YAML data"))
        return doc
    doc.node = node
    try:
        doc.data = _Builder().build(node)
    except _Invalid as error:
        doc.data = None
        doc.problems.append(Problem(path, error.node.start_mark.line + 1, "yaml", error.message))
    except RecursionError:
        doc.data = None
        doc.problems.append(Problem(path, node.start_mark.line + 1, "yaml", "nested too deeply to read"))
    except Exception as error:  # e.g. a malformed timestamp: bad data must never raise
        doc.data = None
        doc.problems.append(Problem(path, node.start_mark.line + 1, "yaml", f"invalid value: {_one_line(error)}"))
    return doc


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class UnreadableFile(OSError):
    """A data file that is not a regular file, or is too large to be one."""


def read_regular_file(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; raises :class:`OSError` otherwise.

    The file is opened without blocking and checked before reading, so a FIFO or a device
    (``/dev/zero``) behind a name or a symlink is refused instead of hanging or filling memory.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UnreadableFile("is a folder, expected a file")
        if not stat.S_ISREG(mode):
            raise UnreadableFile("is not a regular file (a FIFO, socket or device?)")
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnreadableFile(f"is larger than {limit:,} bytes")
    return data


def read_problem(rel: str, error: OSError) -> Problem:
    """The problem that ``rel`` cannot be read, in one line."""
    reason = str(error) if isinstance(error, UnreadableFile) else (error.strerror or str(error))
    return Problem(rel, 1, FILE_FIELD, f"cannot read: {reason}")


def read_bytes(root: Path, rel: str) -> bytes | Document:
    """A file's bytes, or a document holding the problem that it cannot be read."""
    try:
        return read_regular_file(os.path.join(root, rel))
    except OSError as error:
        return Document(rel, problems=[read_problem(rel, error)])


def read_document(root: Path, rel: str) -> Document:
    raw = read_bytes(root, rel)
    return raw if isinstance(raw, Document) else parse_text(rel, raw)


# --------------------------------------------------------------------------- schema


@functools.cache
def schema(name: str) -> dict:
    """A published JSON Schema, ``paper`` or ``sections``."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """The validator of a published schema (built once: the schema files are part of the package)."""
    return jsonschema.Draft202012Validator(schema(name))


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "array": "a list",
    "object": "a mapping",
    "boolean": "true or false",
    "number": "a number",
}


def describe(value) -> str:
    """How a YAML value reads to a contributor, for 'expected X, got Y' messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def did_you_mean(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


_PATTERN_MESSAGES = {
    "arxiv": "must be an arXiv id such as '2111.11837' or 'cs/0601001', without a version suffix",
    "doi": "must be a DOI such as '10.1109/CVPR52688.2022.00460', without 'https://doi.org/'",
    "sections": "section ids use lowercase letters, digits and '-'",
    "extends": "must be a paper id (its file name without .yaml): lowercase letters, digits and '-'",
    "id": "ids use lowercase letters, digits and '-', starting with a letter or digit",
    "name": "must be a Python identifier",
}


def _url_message(url: str) -> str:
    scheme = urlsplit(url).scheme if ":" in url else ""
    if scheme and scheme.lower() != "https":
        return f"URL scheme '{scheme}:' is not allowed; use an https:// URL"
    return "must be an absolute https:// URL"


def schema_problems(doc: Document, name: str) -> list[Problem]:
    """Every JSON Schema violation of ``doc.data``, one problem each, with its line."""
    problems = []
    for error in validator(name).iter_errors(doc.data):
        problems.extend(_explain(doc, error))
    if problems:  # the data rules will not run: name every placeholder now, so that all are listed at once
        reported = {(problem.line, problem.field) for problem in problems}
        for where, value in _strings(doc.data, ()):
            problem = doc.problem(where, PLACEHOLDER_MESSAGE)
            if PLACEHOLDER_RE.match(value) and (problem.line, problem.field) not in reported:
                problems.append(problem)
    return problems


def _strings(value, where: tuple):
    """``(where, text)`` for every string in a parsed document."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, where + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, where + (index,))


def _explain(doc: Document, error) -> list[Problem]:
    where = tuple(error.absolute_path)
    kind = error.validator
    value = error.instance
    last = next((step for step in reversed(where) if isinstance(step, str)), "")
    if kind == "required":
        missing = [key for key in error.validator_value if isinstance(value, dict) and key not in value]
        return [
            Problem(doc.path, doc.line(where), field_name(where + (key,)), "missing required field") for key in missing
        ]
    if kind == "additionalProperties":
        allowed = error.schema.get("properties", {})
        return [
            doc.problem(where + (key,), "unknown field" + did_you_mean(key, allowed))
            for key in value
            if key not in allowed
        ]
    if kind in ("pattern", "enum", "type") and isinstance(value, str) and PLACEHOLDER_RE.match(value):
        return [doc.problem(where, PLACEHOLDER_MESSAGE)]
    if kind == "type":
        expected = error.validator_value
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in ([expected] if isinstance(expected, str) else expected))
        hint = "; put it in quotes" if expected == "string" and isinstance(value, (int, float, datetime.date)) else ""
        return [doc.problem(where, f"expected {words}, got {describe(value)}{hint}")]
    if kind == "enum":
        choices = [str(choice) for choice in error.validator_value]
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        return [doc.problem(where, f"must be one of {', '.join(choices)}; got {value!r}{hint}")]
    if kind == "pattern":
        if "propertyNames" in error.schema_path:
            return [doc.problem(where + (value,), "keys must be section ids (lowercase letters, digits and '-')")]
        if last == "url":
            return [doc.problem(where, _url_message(value))]
        return [doc.problem(where, _PATTERN_MESSAGES.get(last, f"must match {error.validator_value}"))]
    if kind == "minItems":
        return [doc.problem(where, "must list at least one item")]
    if kind == "minLength":
        return [doc.problem(where, "must not be empty")]
    if kind == "minimum":
        if last == "year":
            return [doc.problem(where, f"must be between {error.validator_value} and {datetime.date.today().year + 1}")]
        return [doc.problem(where, f"must be at least {error.validator_value}")]
    if kind == "uniqueItems":
        return [doc.problem(where, "lists the same item twice")]
    return [doc.problem(where, _one_line(error.message))]


# --------------------------------------------------------------------------- model


@functools.cache
def link_kinds() -> dict:
    """``catalog/data/link-kinds.yaml``: ``{"paper": {kind: {label, hosts}}, "code": {host: label}}``."""
    return yaml.load((DATA_DIR / "link-kinds.yaml").read_text(encoding="utf-8"), Loader=_Loader)


def code_label(url: str) -> str:
    """The README label of a code URL: the host's label in ``link-kinds.yaml``, else the host."""
    host = url_host(url)
    return link_kinds()["code"].get(host, host)


def build_paper(doc: Document) -> Paper:
    """A :class:`Paper` from a document whose data passed the schema."""
    data = doc.data
    kinds = link_kinds()["paper"]
    return Paper(
        id=doc.path.rsplit("/", 1)[-1].removesuffix(".yaml"),
        title=data["title"],
        authors=tuple(data["authors"]),
        year=data["year"],
        sections=tuple(data["sections"]),
        description=data["description"],
        links=tuple(
            Link(kind=link["kind"], url=link["url"], label=kinds[link["kind"]]["label"]) for link in data["links"]
        ),
        method=data.get("method"),
        venue=data.get("venue"),
        arxiv=data.get("arxiv"),
        doi=data.get("doi"),
        extends=data.get("extends"),
        code=tuple(
            CodeLink(url=code["url"], label=code.get("label") or code_label(code["url"]), official=code["official"])
            for code in data.get("code", ())
        ),
        implementations=tuple(
            Implementation(name=item["name"], verification=item["verification"], covers=item.get("covers", ""))
            for item in data.get("implementations", ())
        ),
        no_implementation=(
            NoImplementation(**data["no_implementation"]) if "no_implementation" in data else None
        ),
        notes=dict(data.get("notes", {})),
        path=doc.path,
    )


def build_sections(nodes: list, level: int = 2) -> tuple[Section, ...]:
    return tuple(
        Section(
            id=node["id"],
            title=node["title"],
            level=level,
            intro=node.get("intro", ""),
            children=build_sections(node.get("children", []), level + 1),
        )
        for node in nodes
    )


def paper_files(root: Path) -> list[str]:
    """Repository-relative paths of every entry of ``papers/`` except the section tree and hidden files, sorted.

    Every entry is listed, whatever it is (a folder, a dangling or looping symlink), so that reading
    it reports the problem; raises :class:`OSError` when the folder itself cannot be listed.
    """
    with os.scandir(os.path.join(root, PAPERS_DIR)) as entries:
        names = [entry.name for entry in entries if not entry.name.startswith(".")]
    return sorted(f"{PAPERS_DIR}/{name}" for name in names if name != SECTIONS_FILE)
