"""The published JSON Schemas, the link-kind data, and the YAML loader's values and line numbers."""

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


def test_loader_matches_the_safe_loader_and_knows_lines():
    doc = loader.parse_text("papers/x.yaml", SUBSET.encode("utf-8"))
    assert doc.problems == []
    assert doc.data == yaml.safe_load(SUBSET)
    assert doc.line(("links", 0, "url")) == 16
    assert doc.line(("notes", "teacher-free")) == 18
    assert doc.line(("authors", 1)) == 6
    assert doc.line(("no-such-key",)) == 2  # the document's first line


def test_schema_problems_name_the_field_and_line():
    doc = loader.parse_text("papers/x.yaml", b"# comment\ntitel: x\n")
    messages = [str(p) for p in loader.schema_problems(doc, "paper")]
    assert "papers/x.yaml:2: titel: unknown field; did you mean 'title'?" in messages
    assert any(m.startswith("papers/x.yaml:2: authors: missing required field") for m in messages)
