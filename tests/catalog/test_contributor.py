"""A contributor's pull request on a throwaway repository: a correct new paper never breaks a test.

The core fixture's papers (with the real templates) are built into a temporary repository, as main
would hold them; a correct new paper file is added and an existing paper gets a second section;
``check`` and ``build`` must then pass there, exactly as they do in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from catalog import cli
from tests.catalog.repo import make_repo

DIFFKD = """\
# yaml-language-server: $schema=../catalog/schema/paper.schema.json
method: DiffKD
title: Knowledge Diffusion for Distillation
authors:
  - Tao Huang
  - Yuan Zhang
  - Mingkai Zheng
  - Shan You
  - Fei Wang
  - Chen Qian
  - Chang Xu
venue: NeurIPS
year: 2023
arxiv: "2305.15712"
sections:
  - {section}
description: Denoises the student's features with a diffusion model trained on the teacher's, then matches them.
links:
  - kind: arxiv
    url: https://arxiv.org/abs/2305.15712
code:
  - url: https://github.com/hunto/DiffKD
    official: true
"""


def copy_repo(tmp_path: Path) -> Path:
    """The fixture repository with README.md and papers.bib generated, as on main."""
    root = make_repo(tmp_path)
    assert cli.main(["build", "--root", str(root)]) == 0
    return root


def section_ids(root: Path) -> list[str]:
    ids, stack = [], yaml.safe_load((root / "papers" / "_sections.yaml").read_text(encoding="utf-8"))
    while stack:
        node = stack.pop(0)
        ids.append(node["id"])
        stack[:0] = node.get("children", [])
    return ids


def add_a_second_section(root: Path, sections: list[str]) -> str:
    """Give the first paper (in file order) with one section a second one; return its id."""
    for path in sorted((root / "papers").glob("[!_]*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if len(data["sections"]) == 1:
            other = next(section for section in sections if section != data["sections"][0])
            text = path.read_text(encoding="utf-8")
            first = f"sections:\n  - {data['sections'][0]}\n"
            assert first in text, path.name
            path.write_text(text.replace(first, f"{first}  - {other}\n"), encoding="utf-8")
            return path.stem
    pytest.skip("no paper with a single section")


@pytest.fixture
def contribution(tmp_path):
    root = copy_repo(tmp_path)
    sections = section_ids(root)
    (root / "papers" / "diffkd.yaml").write_text(DIFFKD.format(section=sections[-1]), encoding="utf-8")
    add_a_second_section(root, sections)
    return root


def test_the_documented_offline_path(tmp_path, capsys):
    """`new --offline ID` writes a template that `check` refuses until every TODO is replaced."""
    root = copy_repo(tmp_path)
    assert cli.main(["new", "--offline", "diffkd", "--root", str(root)]) == 0
    capsys.readouterr()
    assert cli.main(["check", "--root", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.startswith("papers/diffkd.yaml:") and "TODO" in line for line in out), out
    template = yaml.safe_load((root / "papers" / "diffkd.yaml").read_text(encoding="utf-8"))
    finished = yaml.safe_load(DIFFKD.format(section=section_ids(root)[-1]))
    assert set(template) <= set(finished)
    (root / "papers" / "diffkd.yaml").write_text(DIFFKD.format(section=section_ids(root)[-1]), encoding="utf-8")
    assert cli.main(["check", "--root", str(root)]) == 0


def test_a_new_paper_and_a_second_section_pass_check_and_build(contribution, capsys):
    root = contribution
    # The contributor commits only YAML: check passes and says the generated files lag behind.
    assert cli.main(["check", "--root", str(root)]) == 0, capsys.readouterr().out
    assert "out of date" in capsys.readouterr().err
    # CI on main (or a local preview) builds; then even the strict check passes.
    assert cli.main(["build", "--root", str(root)]) == 0
    assert cli.main(["check", "--strict", "--root", str(root)]) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "DiffKD. *NeurIPS 2023*.\n\\[[arXiv](https://arxiv.org/abs/2305.15712)\\]\n" in readme
    assert "- Knowledge Diffusion for Distillation\n" in readme
    assert "huang2023knowledge" in (root / "papers.bib").read_text(encoding="utf-8")


def test_the_same_paper_added_twice_is_reported_on_the_new_file(contribution, capsys):
    root = contribution
    assert cli.main(["build", "--root", str(root)]) == 0
    existing = next(
        path
        for path in sorted((root / "papers").glob("[!_]*.yaml"))
        if "arxiv" in yaml.safe_load(path.read_text(encoding="utf-8"))
        and len(yaml.safe_load(path.read_text(encoding="utf-8"))["links"]) > 1
    )
    # The paper again, as `new arxiv:ID` writes it: only its arXiv link. "a-copy" sorts before every
    # other id: the README, not the name, says which file is new.
    data = yaml.safe_load(existing.read_text(encoding="utf-8"))
    data["links"] = [link for link in data["links"] if link["kind"] == "arxiv"]
    (root / "papers" / "a-copy.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["check", "--root", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    new = [line for line in out if line.startswith("papers/a-copy.yaml:")]
    old = [line for line in out if line.startswith(f"papers/{existing.name}:")]
    assert len(new) == 1 and f"same paper as papers/{existing.name}" in new[0]
    assert f"papers/{existing.name} is already in README.md" in new[0]
    assert len(old) == 1 and "papers/a-copy.yaml repeats this paper" in old[0]
