"""Hostile files and folders cannot crash, hang or fool ``check`` and ``build``: each is a one-line problem.

Deeply nested YAML, symlink loops, dangling links, folders, FIFOs and devices where files are expected,
unreadable entries, a README that is a folder: every case ends with exit status 1 (or 2) and a message
naming the path, never a traceback, and ``build`` never writes a catalog missing papers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from catalog import cli, loader
from catalog.validate import validate_root
from tests.catalog.repo import make_repo, run_module

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def assert_one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode in (1, 2), output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, output


# --- nesting -------------------------------------------------------------------------------------------

DEEP = {  # name -> (text, line of the problem)
    "flow": ("title: " + "[" * 25_000 + "]" * 25_000 + "\n", 1),
    "block": ("title:\n" + "- " * 25_000 + "x\n", 2),
    "mapping-in-flow": ("title: " + "{a: " * 12_000 + "b" + "}" * 12_000 + "\n", 1),
}


@pytest.mark.parametrize("name", sorted(DEEP))
def test_deep_nesting_is_refused_before_parsing(tmp_path, name):
    root = make_repo(tmp_path)
    text, line = DEEP[name]
    (root / "papers" / "beta.yaml").write_text(text, encoding="utf-8")
    for command in ("check", "build"):
        result = run_module(command, "--root", str(root))
        assert_one_line_failure(result, f"papers/beta.yaml:{line}: yaml:", "nested more than 64 levels deep")
    assert not (root / "README.md").exists()


def test_nesting_scan_counts_indentation_and_dashes():
    stairs = "".join(" " * level + f"k{level}:\n" for level in range(70))
    assert loader.nesting_problem(stairs)[0] == 65
    assert loader.nesting_problem("a:\n  - - - x\n  - y\n") is None
    assert loader.nesting_problem("t: 'a [b] {c}'\n") is None


def test_recursion_error_is_a_problem_not_a_traceback(monkeypatch):
    """The safety net behind the scan: a parser that recurses too deep gives a problem."""
    monkeypatch.setattr(loader, "nesting_problem", lambda text: None)
    monkeypatch.setattr(loader, "_Loader", yaml.SafeLoader)  # pure Python: raises RecursionError
    doc = loader.parse_text("papers/x.yaml", ("t: " + "[" * 5000 + "]" * 5000 + "\n").encode())
    assert [p.message for p in doc.problems] == ["nested too deeply to parse"]


# --- entries of papers/ --------------------------------------------------------------------------------


def hostile_entries(papers: Path) -> dict[str, str]:
    """Create hostile entries in ``papers``; name -> a word of the expected message."""
    os.symlink("loop-b.yaml", papers / "loop-a.yaml")
    os.symlink("loop-a.yaml", papers / "loop-b.yaml")
    os.symlink("self.yaml", papers / "self.yaml")
    os.symlink("missing.yaml", papers / "dangling.yaml")
    (papers / "folder.yaml").mkdir()
    entries = {"loop-a.yaml": "cannot read", "loop-b.yaml": "cannot read", "self.yaml": "cannot read",
               "dangling.yaml": "cannot read", "folder.yaml": "is a folder"}
    if hasattr(os, "mkfifo"):
        os.mkfifo(papers / "fifo.yaml")
        entries["fifo.yaml"] = "not a regular file"
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", papers / "zero.yaml")
        entries["zero.yaml"] = "not a regular file"
    return entries


def test_unreadable_entries_are_problems_and_build_writes_nothing(tmp_path):
    root = make_repo(tmp_path)
    entries = hostile_entries(root / "papers")
    for command in ("check", "build"):
        result = run_module(command, "--root", str(root), timeout=60)
        assert_one_line_failure(result)
        for name, word in entries.items():
            line = next((x for x in result.stdout.splitlines() if x.startswith(f"papers/{name}:1: (file):")), None)
            assert line is not None and word in line, (name, result.stdout)
    assert not (root / "README.md").exists() and not (root / "papers.bib").exists()


def test_build_keeps_the_old_readme_when_a_paper_cannot_be_read(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    assert cli.main(["build", "--root", str(root)]) == 0
    before = (root / "README.md").read_bytes()
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("beta.yaml"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    result = validate_root(root)
    assert [str(p) for p in result.problems] == ["papers/beta.yaml:1: (file): cannot read: Permission denied"]
    assert cli.main(["build", "--root", str(root)]) == 1
    assert (root / "README.md").read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode; the monkeypatched test above covers it")
def test_chmod_000_paper_is_a_problem(tmp_path):
    root = make_repo(tmp_path)
    (root / "papers" / "beta.yaml").chmod(0)
    try:
        result = run_module("check", "--root", str(root))
    finally:
        (root / "papers" / "beta.yaml").chmod(0o644)
    assert_one_line_failure(result, "papers/beta.yaml:1: (file): cannot read: Permission denied")


def test_papers_folder_that_cannot_be_listed(tmp_path, monkeypatch, capsys):
    root = make_repo(tmp_path)

    def refusing_scandir(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    assert cli.main(["build", "--root", str(root)]) == 1
    assert "papers:1: (file): cannot list the folder: Permission denied" in capsys.readouterr().out
    assert not (root / "README.md").exists()


def test_papers_is_a_file(tmp_path):
    root = make_repo(tmp_path)
    shutil.rmtree(root / "papers")
    (root / "papers").write_text("not a folder\n")
    for command in ("check", "build"):
        assert_one_line_failure(run_module(command, "--root", str(root)), "papers")


@needs_fifo
def test_sections_file_that_is_a_fifo_or_dev_zero_does_not_hang(tmp_path):
    root = make_repo(tmp_path)
    sections = root / "papers" / "_sections.yaml"
    sections.unlink()
    os.mkfifo(sections)
    result = run_module("check", "--root", str(root), timeout=30)
    assert_one_line_failure(result, "papers/_sections.yaml:1: (file): cannot read: is not a regular file")
    sections.unlink()
    os.symlink("/dev/zero", sections)
    result = run_module("build", "--root", str(root), timeout=30)
    assert_one_line_failure(result, "papers/_sections.yaml:1: (file): cannot read: is not a regular file")


def test_huge_paper_file_is_refused(tmp_path):
    root = make_repo(tmp_path)
    (root / "papers" / "beta.yaml").write_bytes(b"# " + b"x" * (loader.MAX_FILE_BYTES + 10) + b"\n")
    result = validate_root(root)
    assert [str(p) for p in result.problems] == [
        f"papers/beta.yaml:1: (file): cannot read: is larger than {loader.MAX_FILE_BYTES:,} bytes"]


# --- generated files -----------------------------------------------------------------------------------


def test_readme_that_is_a_folder(tmp_path):
    root = make_repo(tmp_path)
    (root / "README.md").mkdir()
    check = run_module("check", "--root", str(root))
    assert_one_line_failure(check, "catalog check: cannot read README.md:")
    build = run_module("build", "--root", str(root))
    assert_one_line_failure(build, "catalog build: cannot write", "nothing was written")
    assert not (root / "papers.bib").exists()  # all or nothing


def test_unreadable_readme(tmp_path, monkeypatch, capsys):
    root = make_repo(tmp_path)
    assert cli.main(["build", "--root", str(root)]) == 0
    real_read_bytes = Path.read_bytes

    def refusing(path):
        if path.name == "README.md":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refusing)
    assert cli.main(["check", "--root", str(root)]) == 1
    assert "catalog check: cannot read README.md: Permission denied" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["bibtex", "--out", "{dir}"], ["import-markdown", "{dir}"],
                                     ["links", "--url", "http://127.0.0.1:9/", "--json", "{dir}", "--deadline", "2",
                                      "--retries", "0"]])
def test_a_folder_where_a_file_is_expected(tmp_path, command):
    root = make_repo(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    result = run_module(*[part.format(dir=folder) for part in command], "--root", str(root))
    assert_one_line_failure(result)


@needs_fifo
def test_a_fifo_in_kdimpl_does_not_hang_the_index(tmp_path):
    root = make_repo(tmp_path)
    os.mkfifo(root / "kdimpl" / "losses" / "pipe.py")
    result = run_module("build", "--root", str(root), timeout=30)
    assert result.returncode == 0, result.stderr


@needs_fifo
def test_generated_files_that_are_fifos_do_not_hang(tmp_path):
    root = make_repo(tmp_path)
    os.mkfifo(root / "README.md")
    check = run_module("check", "--root", str(root), timeout=30)
    assert_one_line_failure(check, "catalog check: cannot read README.md: is not a regular file")
    build = run_module("build", "--root", str(root), timeout=30)
    assert build.returncode == 0, build.stderr
    assert (root / "README.md").is_file()  # the FIFO was replaced, never read


@pytest.mark.parametrize("command", ["verify", "links"])
def test_commands_that_need_papers_fail_when_none_loads(tmp_path, capsys, command):
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "_sections.yaml").write_text("[: not yaml\n", encoding="utf-8")
    (tmp_path / "papers" / "broken.yaml").write_text("title: [unclosed\n", encoding="utf-8")
    assert cli.main([command, "--root", str(tmp_path)]) == 1
    assert "no paper could be loaded" in capsys.readouterr().err
