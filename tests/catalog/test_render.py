"""``python -m catalog build`` and the generated-files gate of ``check``: format, order, determinism."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from catalog import cli, render

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "core" / "repo"
REPO = HERE.parents[1]
TOY = '''"""A toy module standing in for a kdimpl loss."""

__all__ = ["toy_loss", "ToyLoss"]


def toy_loss(student, teacher):
    return 0


class ToyLoss:
    pass
'''


def make_repo(tmp_path: Path, name: str = "repo") -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURE, root)
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "kdimpl" / "losses").mkdir(parents=True)
    (root / "kdimpl" / "losses" / "toy.py").write_text(TOY, encoding="utf-8")
    return root


def build(root: Path, capsys=None) -> int:
    return cli.main(["build", "--root", str(root)])


def section(readme: str, title: str) -> str:
    """The text under one heading, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}\n\n(.*?)(?=^#+ |\Z)", readme, re.M | re.S)
    assert match, title
    return match.group(1)


def test_entries_follow_the_contributing_format(tmp_path):
    root = make_repo(tmp_path)
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert (
        section(readme, "Foreground Masks")
        == """\
DELTA. *ICCV 2021*.
\\[[IEEE Xplore](https://ieeexplore.ieee.org/abstract/document/1)\\]
\\- Masks features where the teacher and the student disagree.
Implementation in kdimpl, checked against the paper's equations: `ToyLoss` in [kdimpl/losses/toy.py](kdimpl/losses/toy.py).

- Delta Masks for Object Detection
- Donald Knuth

ALPHA. *CVPR 2022*.
\\[[CVF](https://openaccess.thecvf.com/content/alpha.html)\\]
\\[[arXiv](https://arxiv.org/abs/2201.00001)\\]
<[GitHub](https://github.com/example/alpha)>
<[Toolbox](https://github.com/example/toolbox/tree/main/alpha) (third-party)>
\\- Distils the teacher's foreground features.
Implementation in kdimpl, matching the official code's numbers: `ToyLoss` in `kdimpl/losses/toy.py` (linked above).

- Alpha Distillation for Dense Detectors
- Ada Lovelace and Alan Turing

"""
    )
    # no method: the first line is just the venue; entries of a parent section come before its children
    assert section(readme, "General Detectors").startswith(
        "*NeurIPS 2017*.\n\\[[NeurIPS](https://proceedings.neurips.cc/"
    )
    # the intro of a section, then a repeated code URL and kdimpl file named without a link
    assert (
        section(readme, "Heterogeneous Pairs")
        == """\
Teacher and student detectors of different families.

GAMMA. *ECCV 2022*.
\\[[ECVA](https://www.ecva.net/papers/gamma.pdf)\\]
<GitHub (third-party): the repository linked above for ALPHA (CVPR 2022)>
\\- Uses an assistant head between teacher and student.
Implementation in kdimpl, following secondary descriptions (the paper's text was not checked): `toy_loss` in `kdimpl/losses/toy.py` (linked above).

- Gamma Assistants for Heterogeneous Detectors
- Edsger Dijkstra and Barbara Liskov and John McCarthy

"""
    )
    # a secondary section: a reference without links, showing the note instead of the description
    assert (
        section(readme, "Teacher Free")
        == """\
ALPHA. *CVPR 2022*.
Listed with its links under *Foreground Masks*.
\\- Also has a teacher-free variant.

- Alpha Distillation for Dense Detectors
- Ada Lovelace and Alan Turing

"""
    )


def test_table_of_contents_has_two_levels_and_github_anchors(tmp_path):
    root = make_repo(tmp_path)
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert (
        section(readme, "Contents")
        == """\
- [General Detectors](#general-detectors)
  - [Feature Distillation](#feature-distillation)
- [Heterogeneous Pairs](#heterogeneous-pairs)
- [Teacher Free](#teacher-free)
- [Using this Repository](#using-this-repository)

"""
    )


def test_every_url_is_linked_once(tmp_path):
    """awesome-lint's double-link rule: no URL may be linked twice (the ToC's anchors included)."""
    root = make_repo(tmp_path)
    assert build(root) == 0
    urls = re.findall(r"\]\(([^)\s]+)\)", (root / "README.md").read_text(encoding="utf-8"))
    assert len(urls) == len(set(urls)), sorted(url for url in urls if urls.count(url) > 1)


def test_order_is_year_then_title(tmp_path):
    root = make_repo(tmp_path)
    epsilon = (root / "papers" / "delta.yaml").read_text(encoding="utf-8")
    epsilon = (
        epsilon.replace("DELTA", "EPSILON").replace("Delta Masks", "apple Masks").replace("document/1", "document/2")
    )
    epsilon = epsilon.replace(
        "  - name: ToyLoss\n    verification: paper\n", "  - name: toy_loss\n    verification: paper\n"
    )
    (root / "papers" / "epsilon.yaml").write_text(epsilon, encoding="utf-8")
    assert build(root) == 0
    masks = section((root / "README.md").read_text(encoding="utf-8"), "Foreground Masks")
    headers = [line for line in masks.splitlines() if re.match(r"^[A-Z]+\. \*", line)]
    assert headers == ["EPSILON. *ICCV 2021*.", "DELTA. *ICCV 2021*.", "ALPHA. *CVPR 2022*."]


def test_two_builds_are_byte_identical(tmp_path):
    root = make_repo(tmp_path)
    assert build(root) == 0
    first = {name: (root / name).read_bytes() for name in ("README.md", "papers.bib")}
    assert build(root) == 0
    assert {name: (root / name).read_bytes() for name in ("README.md", "papers.bib")} == first


def test_output_does_not_depend_on_file_listing_order(tmp_path, monkeypatch):
    one = make_repo(tmp_path, "one")
    assert build(one) == 0
    # a second repository whose files were created in the reverse order, listed in reverse too
    two = tmp_path / "two"
    shutil.copytree(REPO / "templates", two / "templates")
    shutil.copytree(one / "kdimpl", two / "kdimpl")
    (two / "papers").mkdir()
    for path in sorted((one / "papers").iterdir(), reverse=True):
        shutil.copy(path, two / "papers" / path.name)
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": list(reversed(sorted(real_listdir(path)))))
    assert build(two) == 0
    for name in ("README.md", "papers.bib"):
        assert (two / name).read_bytes() == (one / name).read_bytes()


def test_markdown_in_data_is_escaped():
    assert render.md("a*b_c [d] <e> `f` |g \\h") == "a\\*b\\_c \\[d\\] \\<e\\> \\`f\\` \\|g \\\\h"
    assert render.md_line("1. Not a list") == "1\\. Not a list"
    assert render.md_line("# Not a heading") == "\\# Not a heading"
    assert render.md_line("- Not a bullet") == "\\- Not a bullet"


def test_check_detects_a_stale_readme_and_prints_a_diff_when_strict(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert build(root) == 0
    readme = root / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("Grace Hopper", "Grace Hoper"), encoding="utf-8")
    capsys.readouterr()
    # A contributor commits only the YAML file: a stale README is one line, not a failure.
    assert cli.main(["check", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "README.md is out of date" in captured.err and len(captured.err.splitlines()) == 1
    assert cli.main(["check", "--strict", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "--- README.md (on disk)\n+++ README.md (rendered)\n" in out
    assert "\n-- Grace Hoper\n+- Grace Hopper\n" in out
    assert "papers.bib" not in out


def test_check_detects_a_missing_bibtex_when_strict(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert build(root) == 0
    (root / "papers.bib").unlink()
    capsys.readouterr()
    assert cli.main(["check", "--root", str(root)]) == 0
    assert "papers.bib is out of date" in capsys.readouterr().err
    assert cli.main(["check", "--strict", "--root", str(root)]) == 1
    assert "--- papers.bib (on disk, missing)\n" in capsys.readouterr().out


def test_check_passes_after_build(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert build(root) == 0
    assert cli.main(["check", "--root", str(root)]) == 0
    assert capsys.readouterr().out == ""


def test_render_failure_midway_writes_nothing(tmp_path, monkeypatch, capsys):
    """README renders, then the BibTeX renderer fails: neither file changes, no temp file is left."""
    import catalog.bibtex

    root = make_repo(tmp_path)
    (root / "README.md").write_text("old readme\n", encoding="utf-8")
    (root / "papers.bib").write_text("old bib\n", encoding="utf-8")

    def broken(catalog):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(catalog.bibtex, "render_bibtex", broken)
    assert build(root) == 1
    assert (
        "catalog build: rendering papers.bib failed: RuntimeError: simulated failure; nothing was written"
        in capsys.readouterr().err
    )
    assert (root / "README.md").read_text(encoding="utf-8") == "old readme\n"
    assert (root / "papers.bib").read_text(encoding="utf-8") == "old bib\n"
    assert sorted(path.name for path in root.iterdir() if path.is_file()) == ["README.md", "papers.bib"]


def test_template_error_writes_nothing(tmp_path, capsys):
    root = make_repo(tmp_path)
    (root / "README.md").write_text("old readme\n", encoding="utf-8")
    (root / "templates" / "entry.md.j2").write_text(
        "{% macro entry(e) %}{{ e.nonexistent }}{% endmacro %}\n", encoding="utf-8"
    )
    assert build(root) == 1
    err = capsys.readouterr().err
    assert "catalog build: rendering README.md failed: UndefinedError:" in err and "Traceback" not in err
    assert (root / "README.md").read_text(encoding="utf-8") == "old readme\n"


def test_build_refuses_bad_data(tmp_path, capsys):
    root = make_repo(tmp_path)
    (root / "papers" / "beta.yaml").write_text("title: [\n", encoding="utf-8")
    assert build(root) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("papers/beta.yaml:")
    assert "nothing was written" in captured.err
    assert not (root / "README.md").exists()


def test_repository_data_is_valid(capsys):
    """The tool over the real data: it is valid (whatever papers it holds; README.md may lag behind it)."""
    assert cli.main(["check", "--root", str(REPO)]) == 0, capsys.readouterr().out


def test_a_second_render_in_one_process_sees_template_and_data_changes(tmp_path):
    """render_outputs reuses its last result only when the catalog and the templates are unchanged."""
    from catalog.validate import validate_root

    root = make_repo(tmp_path)
    first = render.render_outputs(validate_root(root).catalog, root)
    assert render.render_outputs(validate_root(root).catalog, root) == first
    template = root / "templates" / "README.md.j2"
    template.write_text(template.read_text(encoding="utf-8").replace("A curated list", "A hand-picked list"))
    changed = render.render_outputs(validate_root(root).catalog, root)[root / "README.md"]
    assert "A hand-picked list" in changed and changed.replace("A hand-picked list", "A curated list") == first[
        root / "README.md"
    ]
    paper = root / "papers" / "alpha.yaml"
    paper.write_text(paper.read_text(encoding="utf-8").replace("title: ", "title: Renamed "), encoding="utf-8")
    assert "Renamed " in render.render_outputs(validate_root(root).catalog, root)[root / "README.md"]
