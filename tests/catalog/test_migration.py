"""The migration path on the seed fixture: import, check, fix what check reports, render.

The hand-written seed list (tests/catalog/fixtures/import/seed-README.md) is imported with the real
importer and written with the real writer into a temporary repository. ``check`` must report exactly
the seed's defects that the seed audit lists, and, once those are fixed, the rendered README must keep
every seed title, author list and link. The subject is the tool on a fixture, not papers/: curating
the catalog (adding, moving or correcting papers) never breaks these tests.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from catalog import cli
from catalog.importer import import_markdown
from catalog.writer import paper_to_yaml

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "import"

# What `check` finds in the raw import; each is an item of the seed audit.
SEED_DEFECTS = [
    "papers/crosskd.yaml:16: description: must end with a period",  # audit 2.1 item 22
    "papers/drkd.yaml:14: description: must end with a period",  # audit 2.1 item 13
    "papers/fkd-tpami.yaml:2: year: missing required field",  # audit 2.1 item 9: "*TPAMI*." has no year
    "papers/li.yaml:2: year: missing required field",  # the survey's "*TPAMI*." has no year either
    "papers/tbd.yaml:2: year: missing required field",  # audit 2.1 item 7: "*PR*." has no year
]
# The fixes, as a curator makes them (years from the audit).
FIXES = {
    "crosskd": {"description": lambda text: text + "."},
    "drkd": {"description": lambda text: text + "."},
    "fkd-tpami": {"year": lambda _: 2023},
    "li": {"year": lambda _: 2023},
    "tbd": {"year": lambda _: 2023},
}


@pytest.fixture(scope="module")
def seed():
    sections = yaml.safe_load((FIXTURES / "sections.yaml").read_text(encoding="utf-8"))
    return import_markdown((FIXTURES / "seed-README.md").read_text(encoding="utf-8"), "seed-README.md", sections)


def write_repo(root: Path, papers: dict) -> Path:
    (root / "papers").mkdir(parents=True)
    shutil.copy(FIXTURES / "sections.yaml", root / "papers" / "_sections.yaml")
    shutil.copytree(REPO / "templates", root / "templates")
    for paper_id, data in papers.items():
        (root / "papers" / f"{paper_id}.yaml").write_text(paper_to_yaml(data), encoding="utf-8")
    return root


def fixed(papers: dict) -> dict:
    result = {}
    for paper_id, data in papers.items():
        data = dict(data)
        for key, fix in FIXES.get(paper_id, {}).items():
            data[key] = fix(data.get(key))
        result[paper_id] = data
    return result


def test_check_reports_exactly_the_seed_defects(seed, tmp_path, capsys):
    root = write_repo(tmp_path / "raw", seed.papers)
    assert cli.main(["check", "--root", str(root)]) == 1
    assert capsys.readouterr().out.splitlines() == SEED_DEFECTS


@pytest.fixture(scope="module")
def rendered(seed, tmp_path_factory):
    root = write_repo(tmp_path_factory.mktemp("fixed"), fixed(seed.papers))
    assert cli.main(["build", "--root", str(root)]) == 0
    assert cli.main(["check", "--strict", "--root", str(root)]) == 0
    return (root / "README.md").read_text(encoding="utf-8")


def _list_items(markdown: str) -> set[str]:
    return {line[2:] for line in markdown.splitlines() if line.startswith("- ")}


def test_every_seed_title_and_author_list_is_rendered(seed, rendered):
    items = _list_items(rendered)
    for data in seed.papers.values():
        assert data["title"].replace("*", "\\*") in items, data["title"]
        assert " and ".join(data["authors"]) in items, data["authors"]


def test_every_seed_link_is_rendered_once(seed, rendered):
    targets = re.findall(r"\]\((https://[^)\s]+)\)", rendered)
    seed_urls = {
        item["url"] for data in seed.papers.values() for key in ("links", "code") for item in data.get(key, ())
    }
    assert seed_urls <= set(targets)
    assert len(targets) == len(set(targets))
