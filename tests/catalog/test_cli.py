"""The command line: exit codes, --root, one module per command, no tracebacks for bad data."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from catalog import cli
from tests.catalog.repo import REPO, make_repo, run_module


def test_build_then_check_exit_zero(tmp_path):
    root = make_repo(tmp_path)
    assert cli.main(["build", "--root", str(root)]) == 0
    assert cli.main(["check", "--root", str(root)]) == 0


def test_check_exits_one_on_bad_data(tmp_path, capsys):
    root = make_repo(tmp_path)
    (root / "papers" / "beta.yaml").write_text("titel: x\n", encoding="utf-8")
    assert cli.main(["check", "--root", str(root)]) == 1
    assert "papers/beta.yaml:1: titel: unknown field; did you mean 'title'?" in capsys.readouterr().out


def test_root_defaults_to_the_current_directory(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    monkeypatch.chdir(root)
    assert cli.main(["build"]) == 0
    assert (root / "README.md").exists()


def test_usage_errors_exit_two(capsys):
    assert cli.main([]) == 2
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["check", "--no-such-option"]) == 2


def test_help_exits_zero(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("check", "build", "import-markdown", "links", "new", "verify", "bibtex"):
        assert command in out


def test_every_command_is_a_module_with_help_arguments_and_run():
    for name, module_name in cli.COMMANDS.items():
        assert module_name.startswith("catalog.commands."), name
        module = importlib.import_module(module_name)
        assert module.HELP and callable(module.add_arguments) and callable(module.run), name


def test_a_command_imports_only_its_own_module():
    code = "import sys; from catalog import cli; cli.main(['check', '--help']); print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "catalog.commands.check" in result.stdout
    for name in ("catalog.commands.links", "catalog.commands.new", "requests", "mistune"):
        assert f"'{name}'" not in result.stdout, name


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00",
        b"",
        b"title: [\n",
        b"- a\n- b\n",
        b"\t- x\n",
        b"year: 2022-13-45\n",
        b"!!binary aGVsbG8=\n",
        b"key: \x00\n",
    ],
)
def test_bad_yaml_never_gives_a_traceback(tmp_path, content):
    root = make_repo(tmp_path)
    (root / "papers" / "beta.yaml").write_bytes(content)
    for command in ("check", "build"):
        result = run_module(command, "--root", str(root), cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert result.stdout.startswith("papers/beta.yaml:")


def test_console_entry_point_runs(tmp_path):
    root = make_repo(tmp_path)
    result = run_module("build", "--root", str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "catalog build: wrote README.md, papers.bib (4 papers)" in result.stderr
