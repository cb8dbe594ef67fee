"""catalog.slug against github-slugger's own fixtures (recorded from GitHub's real anchors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog.slug import Slugger, slug

FIXTURES = json.loads(
    (Path(__file__).parent / "fixtures" / "core" / "github-slugger-fixtures.json").read_text(encoding="utf-8")
)


def test_fixture_provenance_is_recorded():
    provenance = FIXTURES["provenance"]
    assert provenance["repository"] == "https://github.com/Flet/github-slugger"
    assert provenance["commit"] == "3461c4350868329c8530904d170358bca1d31448"
    assert len(FIXTURES["cases"]) == 78


def test_github_slugger_fixtures_in_order():
    """The cases share one slugger, as upstream's test does: several check the -1, -2 suffixes."""
    slugger = Slugger()
    got = [(case["name"], slugger.slug(case["input"])) for case in FIXTURES["cases"]]
    assert got == [(case["name"], case["expected"]) for case in FIXTURES["cases"]]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("heading with a - dash", "heading-with-a---dash"),
        (" a ", "-a-"),
        ("I ♥ unicode", "i--unicode"),
        ("en–dash", "endash"),
        ("Papers & Documentation", "papers--documentation"),
        ("Ⓖ circled", "ⓖ-circled"),
        ("Balancing between Tasks", "balancing-between-tasks"),
        ("Knowledge Distillation for GFL", "knowledge-distillation-for-gfl"),
    ],
)
def test_slug_examples(text, expected):
    assert slug(text) == expected


def test_uniqueness_counters():
    slugger = Slugger()
    assert [slugger.slug(text) for text in ["echo", "echo", "echo 1", "echo-1", "echo"]] == [
        "echo",
        "echo-1",
        "echo-1-1",
        "echo-1-2",
        "echo-2",
    ]
    slugger.reset()
    assert slugger.slug("echo") == "echo"


def test_seed_anchors():
    """The hand-written seed README's ToC anchors for its section titles (checked on GitHub)."""
    titles = {
        "Knowledge Distillation for General Object Detectors": "knowledge-distillation-for-general-object-detectors",
        "Miscellaneous Foreground Masks": "miscellaneous-foreground-masks",
        "Knowledge Distillation for Heterogeneous Object Detector Pairs": "knowledge-distillation-for-heterogeneous-object-detector-pairs",
        "Multi Teacher Knowledge Distillation for Object Detectors": "multi-teacher-knowledge-distillation-for-object-detectors",
    }
    for title, anchor in titles.items():
        assert slug(title) == anchor
