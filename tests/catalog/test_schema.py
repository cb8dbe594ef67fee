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


def test_written_paper_files_point_to_their_schema():
    """Editors with the YAML language server validate the files that `new` and `import-markdown` write."""
    from catalog.writer import paper_to_yaml

    data = {"title": "T", "authors": ["A B"], "venue": "CVPR", "year": 2022, "sections": ["x"],
            "description": "D.", "links": [{"kind": "arxiv", "url": "https://arxiv.org/abs/2201.00001"}]}
    first = paper_to_yaml(data).split("\n", 1)[0]
    assert first == "# yaml-language-server: $schema=../catalog/schema/paper.schema.json"
    assert (SCHEMAS / "paper.schema.json").is_file()


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


def test_venue_vocabulary():
    """Canonical labels, each with a BibTeX type; every venue of the seed list is one of them."""
    from catalog.importer import import_markdown
    from catalog.validate import venues

    vocabulary = venues()
    for label in ("CVPR", "ICCV", "ECCV", "NeurIPS", "ICLR", "ICML", "AAAI", "IJCAI", "WACV", "BMVC", "TPAMI",
                  "IJCV", "TIP", "TNNLS", "arXiv", "ACM MM", "PR"):
        assert label in vocabulary, label
    assert len({label.casefold() for label in vocabulary}) == len(vocabulary)  # one spelling per venue
    for label, entry in vocabulary.items():
        assert entry["type"] in ("inproceedings", "article", "misc"), label
    fixtures = HERE / "fixtures" / "import"
    seed = import_markdown((fixtures / "seed-README.md").read_text(encoding="utf-8"), "seed-README.md",
                           yaml.safe_load((fixtures / "sections.yaml").read_text(encoding="utf-8")))
    assert {paper["venue"] for paper in seed.papers.values()} <= set(vocabulary)
