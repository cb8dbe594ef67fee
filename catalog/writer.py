"""Canonical YAML for ``papers/<id>.yaml`` and ``papers/_sections.yaml``.

Every tool that writes catalog data goes through :func:`paper_to_yaml` so that files
differ only where their content does: a fixed key order, block style, no line wrapping,
UTF-8, and strings quoted only where YAML would otherwise read them as something else
(arXiv ids are always double-quoted, since ``2111.11837`` would load as a float).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from catalog.atomic import write_files

PAPER_SCHEMA_COMMENT = "# yaml-language-server: $schema=../catalog/schema/paper.schema.json"
SECTIONS_SCHEMA_COMMENT = "# yaml-language-server: $schema=../catalog/schema/sections.schema.json"

#: The order in which a paper's keys are written (catalog-format.md).
PAPER_KEYS = (
    "method",
    "title",
    "authors",
    "venue",
    "year",
    "arxiv",
    "doi",
    "extends",
    "sections",
    "description",
    "links",
    "code",
    "implementations",
    "no_implementation",
    "notes",
)
LINK_KEYS = ("kind", "url")
CODE_KEYS = ("url", "official", "label")
IMPLEMENTATION_KEYS = ("name", "verification", "covers")
NO_IMPLEMENTATION_KEYS = ("reason", "note")
SECTION_KEYS = ("id", "title", "intro", "children")


class _QuotedString(str):
    """A string always written double-quoted (arXiv ids)."""


class _Dumper(yaml.SafeDumper):
    """Block style with sequences indented under their key, as in catalog-format.md."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _represent_quoted(dumper: yaml.SafeDumper, value: _QuotedString):
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')


_Dumper.add_representer(_QuotedString, _represent_quoted)


def _empty(value) -> bool:
    return value is None or (isinstance(value, (list, tuple, dict, str)) and len(value) == 0)


def _ordered(mapping: dict, keys: tuple[str, ...], where: str) -> dict:
    """``mapping`` with its keys in the order of ``keys``, empty values dropped."""
    if not isinstance(mapping, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = [key for key in mapping if key not in keys]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(keys)}")
    return {key: mapping[key] for key in keys if key in mapping and not _empty(mapping[key])}


def _ordered_list(items, keys: tuple[str, ...], where: str) -> list[dict]:
    return [_ordered(item, keys, f"{where}[{index}]") for index, item in enumerate(items)]


def canonical_paper(data: dict) -> dict:
    """The paper mapping in canonical key order, with empty optional fields removed."""
    out = _ordered(data, PAPER_KEYS, "paper")
    if "authors" in out:
        out["authors"] = list(out["authors"])
    if "sections" in out:
        out["sections"] = list(out["sections"])
    if "arxiv" in out:
        out["arxiv"] = _QuotedString(out["arxiv"])
    if "doi" in out:
        out["doi"] = str(out["doi"])
    for key, keys in (("links", LINK_KEYS), ("code", CODE_KEYS), ("implementations", IMPLEMENTATION_KEYS)):
        if key in out:
            out[key] = _ordered_list(out[key], keys, key)
    if "no_implementation" in out:
        out["no_implementation"] = _ordered(out["no_implementation"], NO_IMPLEMENTATION_KEYS, "no_implementation")
    if "notes" in out:
        # Notes follow the order of the paper's sections, so reordering the dict changes nothing.
        notes = out["notes"]
        sections = out.get("sections", [])
        order = [s for s in sections if s in notes] + sorted(k for k in notes if k not in sections)
        out["notes"] = {key: notes[key] for key in order}
    return out


def _dump(value) -> str:
    return yaml.dump(
        value,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=2**31 - 1,
        indent=2,
    )


def paper_to_yaml(data: dict) -> str:
    """Serialise one paper to the canonical text of ``papers/<id>.yaml`` (same input, same bytes)."""
    return PAPER_SCHEMA_COMMENT + "\n" + _dump(canonical_paper(data))


def _canonical_section(node: dict, where: str) -> dict:
    out = _ordered(node, SECTION_KEYS, where)
    if "children" in out:
        out["children"] = [
            _canonical_section(child, f"{where}.children[{i}]") for i, child in enumerate(out["children"])
        ]
    return out


def sections_to_yaml(nodes: list[dict]) -> str:
    """Serialise a section tree (a list of ``{id, title, intro, children}``) to ``_sections.yaml`` text."""
    tree = [_canonical_section(node, f"sections[{i}]") for i, node in enumerate(nodes)]
    return SECTIONS_SCHEMA_COMMENT + "\n" + _dump(tree)


def write_paper(path: str | Path, data: dict) -> None:
    """Write one paper file atomically (temp file in the same folder, then ``os.replace``)."""
    write_files({Path(path): paper_to_yaml(data)})
