"""The published JSON Schemas, the link-kind data, and the fast YAML reader."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from catalog import loader

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SCHEMAS = REPO / "catalog" / "schema"


@pytest.mark.parametrize("name", ["paper", "sections"])
def test_schemas_are_valid_draft_2020_12(name):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_link_kinds_match_the_schema():
    schema = loader.schema("paper")
    kinds = schema["properties"]["links"]["items"]["properties"]["kind"]["enum"]
    assert kinds == list(loader.link_kinds()["paper"])


def test_fixture_papers_validate_against_the_schema():
    validator = jsonschema.Draft202012Validator(loader.schema("paper"))
    for path in sorted((HERE / "fixtures" / "core" / "repo" / "papers").glob("[a-z]*.yaml")):
        validator.validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_data_files_point_to_their_schema():
    papers = REPO / "papers"
    for path in sorted(papers.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        name = "sections" if path.name == "_sections.yaml" else "paper"
        assert first == f"# yaml-language-server: $schema=../catalog/schema/{name}.schema.json", path.name


SUBSET = """\
# comment
method: FGD
title: 'It''s: a title'
authors:
  - Zhe Li
  - "Quoted Name"
year: 2022
arxiv: "2111.11837"
flag: true
nothing: null
official: yes
sections:
  - attention-guided
links:
  - kind: cvf
    url: https://example.com/a#b
notes:
  teacher-free: A note.
"""


def test_fast_reader_matches_the_safe_loader():
    data, lines = loader.fast_parse(SUBSET)
    assert data == yaml.safe_load(SUBSET)
    assert lines[("links", 0, "url")] == 16
    assert lines[("notes", "teacher-free")] == 18


@pytest.mark.parametrize(
    "text",
    [
        "title: a # comment\n",  # trailing comment
        "title: >\n  folded\n",  # block scalar
        "title: [a, b]\n",  # flow style
        "title: &x a\nother: *x\n",  # anchors
        "title: a\n  continued\n",  # plain continuation line
        'title: "escaped \\" quote"\n',  # escapes
        "title: a\ntitle: b\n",  # duplicate key
        "authors:\n- a\n",  # sequence at the key's indentation
        "title: 'a'b'\n",  # bad quoting
        "title: a \n",  # trailing space
        "---\ntitle: a\n",  # document marker
        "on: yes\n",  # a key that YAML 1.1 reads as a boolean
        "links:\n  - kind: cvf\n     url: x\n",  # continuation line at the wrong indentation
        "authors:\n  - a\n    b: c\n",  # a deeper line after a scalar item
        "notes:\n  a: b\n  - c\n",  # a list item inside a mapping
        "authors:\n  - a\n -b\n",  # a shallower line inside a block
        "authors:\n",  # a key with nothing under it (null)
    ],
)
def test_fast_reader_hands_anything_else_to_libyaml(text):
    assert loader.fast_parse(text) is None


def test_real_papers_take_the_fast_path_and_match_the_safe_loader():
    for path in sorted((REPO / "papers").glob("[!_]*.yaml")):
        text = path.read_text(encoding="utf-8")
        parsed = loader.fast_parse(text)
        if parsed is not None:
            assert parsed[0] == yaml.safe_load(text), path.name


def test_fast_reader_skips_blank_lines_and_comments_inside_blocks():
    text = "# top  \nauthors:\n\n  # a comment with a trailing space \n  - A\n   \n  - B\nlinks:\n  - kind: cvf\n" \
        "    # comment\n    url: https://x.org/a\n"
    data, lines = loader.fast_parse(text)
    assert data == yaml.safe_load(text)
    assert lines[()] == 2 and lines[("authors", 1)] == 7 and lines[("links", 0, "url")] == 11


def test_validation_without_fastjsonschema_gives_the_same_verdicts(monkeypatch):
    """fastjsonschema is only a fast path: without it, jsonschema alone accepts and rejects the same files."""
    monkeypatch.setattr(loader, "_fast_validator", lambda name: None)
    catalog, problems = loader.load_catalog(Path(__file__).resolve().parents[2])
    assert not problems and len(catalog.papers) >= 39
    doc = loader.Document(path="papers/x.yaml", data={"titel": "x"}, lines={(): 1})
    messages = [str(p) for p in loader.schema_problems(doc, "paper")]
    assert any("titel" in m for m in messages)
