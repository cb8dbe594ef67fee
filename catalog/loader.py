"""Read ``papers/*.yaml`` and ``papers/_sections.yaml`` into the model, with positions for messages.

Files are parsed with PyYAML's safe loader (libyaml's ``CSafeLoader`` when present) into node
trees, so every problem can name the line it is on; values are built from the nodes here (plain
strings, numbers, booleans, lists and mappings only: no tags, no merge keys, no duplicate keys).
Each document is then checked against the published JSON Schema (``catalog/schema/*.json``):
``fastjsonschema`` accepts valid files quickly, and only a file it rejects goes through
``jsonschema``, whose errors are turned into ``path:line: field: message`` problems.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from catalog.model import Catalog, CodeLink, Implementation, Link, Paper, Section

PAPERS_DIR = "papers"
SECTIONS_FILE = "_sections.yaml"
SCHEMA_DIR = Path(__file__).parent / "schema"
DATA_DIR = Path(__file__).parent / "data"
FILE_FIELD = "(file)"  # the ``field`` of problems that concern a whole file

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_MAX_VALUES = 20_000  # values built per document; stops alias bombs
_MAX_DEPTH = 32


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
    lines: dict[tuple, int] | None = None  # from the fast parser: position -> line

    def line(self, where: tuple = ()) -> int:
        """1-based line of the value at ``where`` (keys and indices), or of its deepest existing parent."""
        if self.lines is not None:
            for end in range(len(where), -1, -1):
                if where[:end] in self.lines:
                    return self.lines[where[:end]]
            return 1
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


# --------------------------------------------------------------------------- YAML, fast path

# The files the writer emits use a small part of YAML: "key: value" lines, "key:" followed by an
# indented block list ("- value", or "- key: value" with "key: value" continuation lines) or block
# mapping, full-line comments, single-line plain or quoted scalars. Reading that subset line by
# line is several times faster than libyaml's node tree, which matters for big catalogs. Anything
# outside it (flow style, block scalars, anchors, tags, trailing comments, escapes, tabs,
# continuation lines, duplicate keys...) makes fast_parse return None and the file goes through
# libyaml, so the result is always what a YAML 1.1 safe loader gives.

_FAST_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):(?:$| (.*)$)")
_PLAIN_FIRST_BAD = frozenset("-?:,[]{}#&*!|>'\"%@` ")
_SINGLE_QUOTED = re.compile(r"'((?:[^']|'')*)'")
_DOUBLE_QUOTED = re.compile(r'"([^"\\]*)"')
_FAIL = object()
_resolver = yaml.resolver.Resolver()
_safe_constructor = yaml.constructor.SafeConstructor()
_IMPLICIT_FIRST = frozenset(key for key in yaml.resolver.Resolver.yaml_implicit_resolvers if key)


def _fast_scalar(raw: str):
    if not raw:
        return _FAIL
    first = raw[0]
    if first == '"':
        match = _DOUBLE_QUOTED.fullmatch(raw)
        return match.group(1) if match else _FAIL
    if first == "'":
        match = _SINGLE_QUOTED.fullmatch(raw)
        return match.group(1).replace("''", "'") if match else _FAIL
    if first in _PLAIN_FIRST_BAD or ": " in raw or " #" in raw or raw[-1] in " :":
        return _FAIL
    if first not in _IMPLICIT_FIRST:  # no implicit type (int, bool, null, date...) starts this way
        return raw
    tag = _resolver.resolve(yaml.ScalarNode, raw, (True, False))
    if tag == _STR_TAG:
        return raw
    try:
        return yaml.constructor.SafeConstructor.yaml_constructors[tag](_safe_constructor, yaml.ScalarNode(tag, raw))
    except Exception:
        return _FAIL


_plain_keys: dict[str, bool] = {}


def _is_plain_key(key: str) -> bool:
    """Whether a key reads as a string in YAML 1.1 (``on``, ``no``, ``null``... do not)."""
    known = _plain_keys.get(key)
    if known is None:
        known = _plain_keys[key] = _resolver.resolve(yaml.ScalarNode, key, (True, False)) == _STR_TAG
    return known


def _fast_block(block: list, where: tuple, lines: dict):
    """A block collection from its significant lines ``(line, indent, content)``."""
    indent = block[0][1]
    if block[0][2] == "-" or block[0][2].startswith("- "):
        items: list = []
        position = 0
        while position < len(block):
            number, depth, content = block[position]
            if depth != indent or not content.startswith("- "):
                return _FAIL
            rest = content[2:]
            here = where + (len(items),)
            lines[here] = number
            position += 1
            match = _FAST_KEY.fullmatch(rest)
            if match is None:
                value = _fast_scalar(rest)
                if value is _FAIL or (position < len(block) and block[position][1] > indent):
                    return _FAIL
                items.append(value)
                continue
            item: dict = {}
            pairs = [(number, match)]
            while position < len(block) and block[position][1] > indent:
                number, depth, content = block[position]
                match = _FAST_KEY.fullmatch(content)
                if depth != indent + 2 or match is None:
                    return _FAIL
                pairs.append((number, match))
                position += 1
            for number, match in pairs:
                key, raw = match.group(1), match.group(2)
                value = _fast_scalar(raw or "")
                if value is _FAIL or key in item or not _is_plain_key(key):
                    return _FAIL
                item[key] = value
                lines[here + (key,)] = number
            items.append(item)
        return items
    mapping: dict = {}
    for number, depth, content in block:
        match = _FAST_KEY.fullmatch(content)
        if depth != indent or match is None:
            return _FAIL
        key = match.group(1)
        value = _fast_scalar(match.group(2) or "")
        if value is _FAIL or key in mapping or not _is_plain_key(key):
            return _FAIL
        mapping[key] = value
        lines[where + (key,)] = number
    return mapping


def fast_parse(text: str) -> tuple[dict, dict[tuple, int]] | None:
    """``(data, lines)`` for a file in the writer's YAML subset, else None (use the full parser)."""
    if "\t" in text or "\r" in text or "\ufeff" in text:
        return None
    significant = []
    for number, line in enumerate(text.split("\n"), 1):
        content = line.lstrip(" ")
        if content and not content.startswith("#"):
            if content[-1] == " ":
                return None
            significant.append((number, len(line) - len(content), content))
    if not significant:
        return None
    data: dict = {}
    lines: dict[tuple, int] = {(): significant[0][0]}
    position = 0
    while position < len(significant):
        number, depth, content = significant[position]
        match = _FAST_KEY.fullmatch(content)
        if depth != 0 or match is None or match.group(1) in data or not _is_plain_key(match.group(1)):
            return None
        key, raw = match.group(1), match.group(2)
        position += 1
        if raw:
            value = _fast_scalar(raw)
        else:
            block = []
            while position < len(significant) and significant[position][1] > 0:
                block.append(significant[position])
                position += 1
            value = _fast_block(block, (key,), lines) if block else _FAIL
        if value is _FAIL:
            return None
        data[key] = value
        lines[(key,)] = number
    return data, lines


# --------------------------------------------------------------------------- YAML, full parser


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
    fast = fast_parse(text)
    if fast is not None:
        doc.data, doc.lines = fast
        return doc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
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
    except Exception as error:  # e.g. a malformed timestamp: bad data must never raise
        doc.data = None
        doc.problems.append(Problem(path, node.start_mark.line + 1, "yaml", f"invalid value: {_one_line(error)}"))
    return doc


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def read_document(root: Path, rel: str) -> Document:
    try:
        with open(os.path.join(root, rel), "rb") as handle:
            raw = handle.read()
    except OSError as error:
        return Document(rel, problems=[Problem(rel, 1, FILE_FIELD, f"cannot read: {error.strerror or error}")])
    return parse_text(rel, raw)


# --------------------------------------------------------------------------- schema


@functools.cache
def schema(name: str) -> dict:
    """A published JSON Schema, ``paper`` or ``sections``."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


@functools.cache
def _fast_validator(name: str):
    import fastjsonschema

    return fastjsonschema.compile(schema(name))


@functools.cache
def _full_validator(name: str):
    import jsonschema

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
    try:
        _fast_validator(name)(doc.data)
        return []
    except Exception:  # fastjsonschema's exception, or anything it chokes on: let jsonschema explain
        pass
    problems = []
    for error in _full_validator(name).iter_errors(doc.data):
        problems.extend(_explain(doc, error))
    if not problems:  # fastjsonschema and jsonschema disagree: should not happen, but never pass silently
        problems.append(doc.problem((), f"does not match {name}.schema.json"))
    return problems


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
    host = (urlsplit(url).hostname or "").lower()
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
        code=tuple(
            CodeLink(url=code["url"], label=code.get("label") or code_label(code["url"]), official=code["official"])
            for code in data.get("code", ())
        ),
        implementations=tuple(
            Implementation(name=item["name"], verification=item["verification"])
            for item in data.get("implementations", ())
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
    """Repository-relative paths of every file in ``papers/`` except the section tree, sorted."""
    try:
        with os.scandir(os.path.join(root, PAPERS_DIR)) as entries:
            names = [entry.name for entry in entries if entry.is_file() and not entry.name.startswith(".")]
    except OSError:
        return []
    return sorted(f"{PAPERS_DIR}/{name}" for name in names if name != SECTIONS_FILE)


def load_catalog(root: str | Path) -> tuple[Catalog, list[Problem]]:
    """Load and validate everything; the catalog holds the papers that loaded, problems are sorted."""
    from catalog import validate

    root = Path(root)
    result = validate.validate_root(root)
    return result.catalog, result.problems
