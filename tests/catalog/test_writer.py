"""The canonical YAML writer: key order, quoting, determinism, round trip."""

from __future__ import annotations

import yaml
import pytest

from catalog import writer
from catalog.writer import PAPER_KEYS, PAPER_SCHEMA_COMMENT, paper_to_yaml, sections_to_yaml


def _paper(**overrides):
    data = {
        "notes": {"teacher-free": "Also proposes TF-HEAD: a teacher-free variant."},
        "code": [{"label": "GitHub", "official": True, "url": "https://github.com/yzd-v/FGD"}],
        "links": [
            {"url": "https://openaccess.thecvf.com/content/CVPR2022/html/x.html", "kind": "cvf"},
            {"url": "https://arxiv.org/abs/2111.11837", "kind": "arxiv"},
        ],
        "description": "Focal distillation separates the foreground and background, " * 4,
        "sections": ["attention-guided", "teacher-free"],
        "doi": "10.1109/CVPR52688.2022.00460",
        "extends": "fgd-conference",
        "arxiv": "2111.11837",
        "year": 2022,
        "venue": "CVPR",
        "authors": ["Zhendong Yang", "Zhe Li", "Jürgen Müller"],
        "title": "Focal and Global Knowledge Distillation for Detectors",
        "method": "FGD",
        "implementations": [{"covers": "The feature loss only.", "verification": "parity", "name": "FGDLoss"}],
        # the writer orders keys; whether both may appear together is validation's business
        "no_implementation": {"note": "A note.", "reason": "pending"},
    }
    data.update(overrides)
    return data


def test_round_trip_through_safe_load():
    data = _paper()
    assert yaml.safe_load(paper_to_yaml(data)) == data


def test_schema_comment_is_the_first_line():
    assert paper_to_yaml(_paper()).splitlines()[0] == PAPER_SCHEMA_COMMENT


def test_top_level_keys_in_canonical_order():
    text = paper_to_yaml(_paper())
    keys = [line.split(":")[0] for line in text.splitlines()[1:] if line and not line.startswith((" ", "#"))]
    assert keys == list(PAPER_KEYS)
    assert list(yaml.safe_load(text)) == list(PAPER_KEYS)


def test_nested_keys_in_canonical_order():
    loaded = yaml.safe_load(paper_to_yaml(_paper()))
    assert [list(link) for link in loaded["links"]] == [["kind", "url"], ["kind", "url"]]
    assert list(loaded["code"][0]) == ["url", "official", "label"]
    assert list(loaded["implementations"][0]) == ["name", "verification", "covers"]
    assert list(loaded["no_implementation"]) == ["reason", "note"]


def test_same_input_gives_same_bytes_whatever_the_dict_order():
    data = _paper()
    reordered = dict(reversed(list(data.items())))
    reordered["notes"] = {"b-section": "B.", "teacher-free": "T."}
    data["notes"] = {"teacher-free": "T.", "b-section": "B."}
    assert paper_to_yaml(data) == paper_to_yaml(reordered)
    assert paper_to_yaml(data).encode("utf-8") == paper_to_yaml(_paper(notes=data["notes"])).encode("utf-8")


@pytest.mark.parametrize("arxiv", ["2111.11837", "2207.02039", "2211.10156", "1906.03609", "cs/0601001", "2305.10000"])
def test_arxiv_ids_are_quoted_and_stay_strings(arxiv):
    text = paper_to_yaml(_paper(arxiv=arxiv))
    assert f'arxiv: "{arxiv}"' in text.splitlines()
    assert yaml.safe_load(text)["arxiv"] == arxiv


@pytest.mark.parametrize("value", ["2022", "1.5", "yes", "null", "Key: value", "#hash", "- dash", "'quoted'", "a: b # c"])
def test_strings_yaml_would_misread_are_quoted(value):
    loaded = yaml.safe_load(paper_to_yaml(_paper(method=value, description=value, authors=[value])))
    assert loaded["method"] == value
    assert loaded["description"] == value
    assert loaded["authors"] == [value]


def test_long_strings_are_not_wrapped_and_unicode_is_kept():
    description = "word " * 200 + "ends."
    text = paper_to_yaml(_paper(description=description.strip()))
    assert f"description: {description.strip()}" in text.splitlines()
    assert "Jürgen Müller" in text  # written as UTF-8, not \u escapes


def test_block_style_with_indented_sequences():
    text = paper_to_yaml(_paper())
    assert "authors:\n  - Zhendong Yang\n" in text
    assert "links:\n  - kind: cvf\n    url: https://openaccess" in text
    assert "[" not in text and "{" not in text


def test_empty_optional_fields_are_omitted():
    data = _paper(method=None, doi=None, code=[], implementations=[], notes={})
    loaded = yaml.safe_load(paper_to_yaml(data))
    assert {"method", "doi", "code", "implementations", "notes"}.isdisjoint(loaded)
    assert loaded["title"] == data["title"]


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="'venu'"):
        paper_to_yaml(_paper(venu="CVPR"))
    with pytest.raises(ValueError, match=r"links\[0\].*'href'"):
        paper_to_yaml(_paper(links=[{"kind": "arxiv", "href": "x"}]))


def test_sections_round_trip():
    tree = [
        {"id": "general", "title": "General", "children": [{"id": "fd", "title": "Feature: Distillation", "intro": "x"}]},
        {"id": "misc", "title": "Miscellaneous"},
    ]
    text = sections_to_yaml(tree)
    assert text.startswith(writer.SECTIONS_SCHEMA_COMMENT + "\n")
    assert yaml.safe_load(text) == tree
    assert "children:\n    - id: fd\n" in text


def test_write_paper_writes_the_canonical_text(tmp_path):
    pytest.importorskip("catalog.atomic")
    path = tmp_path / "fgd.yaml"
    writer.write_paper(path, _paper())
    assert path.read_bytes() == paper_to_yaml(_paper()).encode("utf-8")
