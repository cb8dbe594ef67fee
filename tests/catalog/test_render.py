"""``python -m catalog build`` and the generated-files gate of ``check``: format, order, determinism."""

from __future__ import annotations

import json
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


# --- text from the data cannot change the README's structure ---------------------------------------

_PARSE = None


def _tokens(markdown: str) -> list[dict]:
    global _PARSE
    if _PARSE is None:
        import mistune

        _PARSE = mistune.create_markdown(renderer=None, plugins=["table", "strikethrough", "url"])
    return _PARSE(markdown)


def _walk(tokens):
    for token in tokens:
        yield token
        yield from _walk(token.get("children", ()))


def _structure(readme: str) -> list[tuple]:
    """The README's blocks, their nesting, and its headings' levels: what no data text may change."""
    shape = []
    for token in _walk(_tokens(readme)):
        if token["type"] in ("text", "blank_line", "softbreak", "linebreak", "codespan", "emphasis", "strong"):
            continue
        shape.append((token["type"], token.get("attrs", {}).get("level")))
    return shape


# (file, the start of the line whose value changes, text put before that value, text put after it)
HOSTILE = {
    "method opening a tilde fence": ("papers/alpha.yaml", "method: ", "~~~", ""),
    "method opening a backtick fence": ("papers/alpha.yaml", "method: ", "```", ""),
    "method as a heading": ("papers/alpha.yaml", "method: ", "# ", ""),
    "title as an ordered list": ("papers/alpha.yaml", "title: ", "1. ", ""),
    "title as a heading": ("papers/alpha.yaml", "title: ", "# ", ""),
    "title as a setext underline": ("papers/alpha.yaml", "title: ", "=== ", ""),
    "author as a quote": ("papers/alpha.yaml", "  - Ada", "> ", ""),
    "author as a bullet": ("papers/alpha.yaml", "  - Ada", "- ", ""),
    "description with table pipes": ("papers/alpha.yaml", "description: ", "| a | b | ", ""),
    "description with strikethrough": ("papers/alpha.yaml", "description: ", "~~struck~~ ", ""),
    "intro as a heading": ("papers/_sections.yaml", "  intro: ", "# ", ""),
    "intro as an ordered list": ("papers/_sections.yaml", "  intro: ", "1. ", ""),
    "intro as a bullet": ("papers/_sections.yaml", "  intro: ", "- ", ""),
    "intro as a plus bullet": ("papers/_sections.yaml", "  intro: ", "+ ", ""),
    "intro as a quote": ("papers/_sections.yaml", "  intro: ", "> ", ""),
    "intro opening a fence": ("papers/_sections.yaml", "  intro: ", "```", ""),
    "intro opening a tilde fence": ("papers/_sections.yaml", "  intro: ", "~~~ ", ""),
    "intro as a table row": ("papers/_sections.yaml", "  intro: ", "| x | y | ", ""),
    "intro with a tag-like word": ("papers/_sections.yaml", "  intro: ", "<details ", ""),
    "note with emphasis and a code span": ("papers/alpha.yaml", "  teacher-free: ", "*Also* `has` _a_ ", ""),
}


def _change_value(text: str, start: str, before: str, after: str) -> str:
    """``start`` + a JSON (so YAML) string of the line's value with ``before`` and ``after`` added."""
    lines = text.split("\n")
    number = next(index for index, line in enumerate(lines) if line.startswith(start))
    key = start if start.endswith((": ", "- ")) else start[: start.index("- ") + 2]
    value = lines[number][len(key):]
    lines[number] = key + json.dumps(before + value + after)
    return "\n".join(lines)


@pytest.mark.parametrize("rel, start, before, after", list(HOSTILE.values()), ids=list(HOSTILE))
def test_text_fields_cannot_break_the_readme_structure(tmp_path, rel, start, before, after):
    root = make_repo(tmp_path)
    assert build(root) == 0
    expected = _structure((root / "README.md").read_text(encoding="utf-8"))
    path = root / rel
    path.write_text(_change_value(path.read_text(encoding="utf-8"), start, before, after), encoding="utf-8")
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert _structure(readme) == expected
    assert not any(token["type"] in ("block_html", "inline_html") for token in _walk(_tokens(readme)))


def test_links_only_go_to_hosts_in_the_data(tmp_path):
    """Every link in the rendered README points to a host named by the data, the template or the repo."""
    from urllib.parse import urlsplit

    from catalog.validate import validate_root

    root = make_repo(tmp_path)
    changes = {(rel, start): (before, after) for rel, start, before, after in HOSTILE.values()}
    for (rel, start), (before, after) in changes.items():  # text tricks that the rules let through
        path = root / rel
        path.write_text(_change_value(path.read_text(encoding="utf-8"), start, before, after), encoding="utf-8")
    assert build(root) == 0
    catalog = validate_root(root).catalog
    hosts = {urlsplit(url).hostname for paper in catalog.papers for url in
             [link.url for link in paper.links] + [code.url for code in paper.code]}
    for template in (root / "templates").glob("*.j2"):  # the README templates' own links (badges, site)
        hosts |= set(re.findall(r"https://([A-Za-z0-9.-]+)", template.read_text(encoding="utf-8")))
    readme = (root / "README.md").read_text(encoding="utf-8")
    targets = [token["attrs"]["url"] for token in _walk(_tokens(readme)) if token["type"] in ("link", "image")]
    assert targets
    for url in targets:
        parts = urlsplit(url)
        assert not parts.scheme or parts.hostname in hosts, url
        assert parts.scheme in ("", "https"), url


def test_a_url_that_would_add_a_second_link_is_refused(tmp_path, capsys):
    root = make_repo(tmp_path)
    alpha = root / "papers" / "alpha.yaml"
    alpha.write_text(
        alpha.read_text(encoding="utf-8").replace(
            "https://openaccess.thecvf.com/content/alpha.html",
            "https://openaccess.thecvf.com/x)[Download_PDF](https://evil.example/login",
        ),
        encoding="utf-8",
    )
    assert build(root) == 1
    assert "papers/alpha.yaml:16: links[0].url: URL must not contain" in capsys.readouterr().out
    assert not (root / "README.md").exists()


def test_statistics_line_counts_the_data(tmp_path):
    root = make_repo(tmp_path)
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    # alpha (parity) and delta (paper) have kdimpl objects, gamma too (unverified); alpha's code is official
    assert (
        "\n**4 papers**, 1 with official code, 3 with a reference implementation in kdimpl "
        "(1 of them matching the official code's numbers), 1 awaiting an implementation.\n" in readme
    )


def test_a_paper_says_why_kdimpl_has_no_implementation(tmp_path):
    root = make_repo(tmp_path)
    beta = root / "papers" / "beta.yaml"
    beta.write_text(
        beta.read_text(encoding="utf-8")
        + "no_implementation:\n  reason: unreadable\n  note: Neither the PDF nor any code is public (*yet*).\n",
        encoding="utf-8",
    )
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "\nNo implementation in kdimpl: Neither the PDF nor any code is public (\\*yet\\*).\n" in readme
    assert "\n\n\n" not in readme  # one blank line before the title list, as for every entry
    assert "3 with a reference implementation in kdimpl (1 of them matching the official code's numbers), " \
        "1 with nothing to implement (surveys, papers without a distillation objective or whose text and code " \
        "cannot be read).\n" in readme
    # without a note, the reason's own words; a pending paper is counted as awaiting one
    beta.write_text(beta.read_text(encoding="utf-8").split("no_implementation:")[0]
                    + "no_implementation:\n  reason: pending\n", encoding="utf-8")
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "\nNo implementation in kdimpl: not implemented yet.\n" in readme
    assert ", 1 awaiting an implementation.\n" in readme


def test_an_implementation_says_what_it_covers(tmp_path):
    root = make_repo(tmp_path)
    alpha = root / "papers" / "alpha.yaml"
    text = alpha.read_text(encoding="utf-8")
    assert "  - name: ToyLoss\n    verification: parity\n" in text
    alpha.write_text(
        text.replace(
            "  - name: ToyLoss\n    verification: parity\n",
            "  - name: ToyLoss\n    verification: parity\n    covers: The object-level term only, not the *pyramid*.\n",
        ),
        encoding="utf-8",
    )
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "`ToyLoss` (The object-level term only, not the \\*pyramid\\*) in " in readme


ALPHA_JOURNAL = """\
# yaml-language-server: $schema=../catalog/schema/paper.schema.json
method: ALPHA
title: Alpha Distillation for Detection, Extended
authors:
  - Ada Lovelace
  - Alan Turing
  - Grace Hopper
venue: TPAMI
year: 2024
doi: 10.1109/TPAMI.2024.1
extends: alpha
sections:
  - masks
  - heterogeneous
description: Extends ALPHA to heterogeneous pairs.
links:
  - kind: doi
    url: https://doi.org/10.1109/TPAMI.2024.1
code:
  - url: https://github.com/example/alpha
    official: true
  - url: https://github.com/example/alpha-plus
    official: true
implementations:
  - name: ToyLoss
    verification: parity
  - name: toy_loss
    verification: paper
notes:
  heterogeneous: The journal version's experiments on heterogeneous pairs.
"""


def test_a_journal_extension_is_written_inside_its_conference_papers_entry(tmp_path):
    root = make_repo(tmp_path)
    (root / "papers" / "alpha-journal.yaml").write_text(ALPHA_JOURNAL, encoding="utf-8")
    assert build(root) == 0
    readme = (root / "README.md").read_text(encoding="utf-8")
    # after the conference paper's own lines: its links, the code and kdimpl objects the conference paper
    # does not list, its own description; no entry of its own
    masks = section(readme, "Foreground Masks")
    assert [line for line in masks.splitlines() if line.startswith("ALPHA.")] == ["ALPHA. *CVPR 2022*."]
    assert masks.endswith(
        """\
<[Toolbox](https://github.com/example/toolbox/tree/main/alpha) (third-party)>
\\- Distils the teacher's foreground features.
Implementation in kdimpl, matching the official code's numbers: `ToyLoss` in `kdimpl/losses/toy.py` (linked above).
Journal extension (*TPAMI 2024*): Alpha Distillation for Detection, Extended, by Ada Lovelace and Alan Turing and \
Grace Hopper.
\\[[DOI](https://doi.org/10.1109/TPAMI.2024.1)\\]
<[GitHub](https://github.com/example/alpha-plus)>
\\- Extends ALPHA to heterogeneous pairs.
Implementation in kdimpl, checked against the paper's equations: `toy_loss` in `kdimpl/losses/toy.py` (linked above).

- Alpha Distillation for Dense Detectors
- Ada Lovelace and Alan Turing

"""
    )
    # a section of the journal version only: a reference to the entry that holds it
    assert section(readme, "Heterogeneous Pairs").endswith(
        """\
ALPHA. *TPAMI 2024*.
Listed with its links under *Foreground Masks*.
\\- The journal version's experiments on heterogeneous pairs.

- Alpha Distillation for Detection, Extended
- Ada Lovelace and Alan Turing and Grace Hopper

"""
    )
    assert "TPAMI" not in section(readme, "Teacher Free")
    # both papers are counted, and both are in papers.bib
    assert (
        "\n**5 papers** (1 journal extension among them, listed with its conference paper), 2 with official code, "
        "4 with a reference implementation in kdimpl (1 of them matching the official code's numbers), "
        "1 awaiting an implementation.\n" in readme
    )
    bib = (root / "papers.bib").read_text(encoding="utf-8")
    titles = re.findall(r"^@(\w+)\{.*?^  title\s*= \{(.*?)\},$", bib, re.M | re.S)
    assert ("inproceedings", "Alpha Distillation for Dense Detectors") in titles
    assert ("article", "Alpha Distillation for Detection, Extended") in titles
    urls = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert len(urls) == len(set(urls))
    assert cli.main(["check", "--strict", "--root", str(root)]) == 0


def test_a_journal_extension_with_the_same_authors_and_description_says_only_what_differs(tmp_path):
    root = make_repo(tmp_path)
    journal = (
        ALPHA_JOURNAL.replace("  - Grace Hopper\n", "")
        .replace("Extends ALPHA to heterogeneous pairs.", "Distils the teacher's foreground features.")
        .replace("method: ALPHA", "method: ALPHA++")
    )
    (root / "papers" / "alpha-journal.yaml").write_text(journal, encoding="utf-8")
    assert build(root) == 0
    masks = section((root / "README.md").read_text(encoding="utf-8"), "Foreground Masks")
    assert (
        "Journal extension, ALPHA++ (*TPAMI 2024*): Alpha Distillation for Detection, Extended.\n"
        "\\[[DOI](https://doi.org/10.1109/TPAMI.2024.1)\\]\n"
        "<[GitHub](https://github.com/example/alpha-plus)>\n"
        "Implementation in kdimpl" in masks
    )
