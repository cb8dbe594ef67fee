"""The GitHub workflows are valid YAML and every command they run exists, with the options they pass."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from catalog import cli

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps(workflow: dict):
    for job in workflow["jobs"].values():
        yield from job["steps"]


def commands(workflow: dict) -> list[list[str]]:
    """Each shell command of each ``run:`` step, split into words (continuation lines joined)."""
    found = []
    for step in steps(workflow):
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(shlex.split(line, comments=True))
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_workflow_is_valid(path):
    workflow = load(path)
    assert workflow["name"] and workflow["on"] and workflow["jobs"]
    for job in workflow["jobs"].values():
        assert job["runs-on"] == "ubuntu-latest" and job["steps"]
    for step in steps(workflow):
        assert ("uses" in step) != ("run" in step), step
        if "uses" in step:
            assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_commands_in_workflows_exist(path):
    parser = cli.build_parser()
    tools = json.loads((REPO / "package.json").read_text(encoding="utf-8"))["devDependencies"]
    for words in commands(load(path)):
        for start, word in enumerate(words):
            if words[start : start + 3] == ["python", "-m", "catalog"]:
                argv = []
                for arg in words[start + 3 :]:
                    if arg in ("|", "||", "&&", ";", ">", ">>"):
                        break
                    if "$" not in arg:  # shell variables stand for file names
                        argv.append(arg)
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{path.name}: python -m catalog {' '.join(argv)}: unknown command or option")
            elif word.startswith(".ci/"):
                script = REPO / word
                assert script.is_file(), word
                assert word.endswith(".mjs") or os.access(script, os.X_OK), f"{word} is not executable"
            elif words[start : start + 2] == ["npx", "--no-install"]:
                assert words[start + 2] in tools, words


def test_generate_commits_only_generated_files_without_a_loop():
    workflow = load(REPO / ".github" / "workflows" / "generate.yml")
    assert workflow["permissions"] == {"contents": "write"}
    push = workflow["on"]["push"]
    assert push["branches"] == ["main"]
    assert not {"README.md", "papers.bib"} & set(push["paths"])  # the bot's commit does not match
    script = "\n".join(step.get("run", "") for step in steps(workflow))
    assert "git add README.md papers.bib\n" in script and "[skip ci]" in script
    assert "git diff --quiet -- README.md papers.bib" in script  # nothing to commit: no commit
    assert script.index("python -m catalog build") < script.index("markdownlint-cli2") < script.index("git push")
    assert "github-actions[bot]" in script


def test_pull_requests_get_the_readme_diff_in_their_summary():
    workflow = load(REPO / ".github" / "workflows" / "catalog.yml")
    runs = [step.get("run", "") for step in steps(workflow)]
    build = next(i for i, run in enumerate(runs) if run.strip() == "python -m catalog build")
    summary = next(i for i, run in enumerate(runs) if ".ci/readme-summary" in run)
    assert build < summary and '>> "$GITHUB_STEP_SUMMARY"' in runs[summary]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_readme_summary_shows_a_fenced_diff_and_cuts_long_ones(tmp_path):
    _git(tmp_path, "init", "-q")
    readme = tmp_path / "README.md"
    readme.write_text("# List\n\n```sh\nold\n```\n" + "".join(f"line {n}\n" for n in range(50)), encoding="utf-8")
    _git(tmp_path, "add", "README.md")
    _git(tmp_path, "commit", "-q", "-m", "x")
    script = str(REPO / ".ci" / "readme-summary")
    same = subprocess.run([script], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "does not change" in same
    readme.write_text(readme.read_text(encoding="utf-8").replace("old", "new").replace("line 40", "changed"))
    out = subprocess.run([script], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    body = out.split("`````diff\n", 1)[1].split("`````\n", 1)[0]
    assert "-old\n+new\n" in body and "-line 40\n+changed\n" in body and "```sh" in body
    assert "Only the first" not in out
    cut = subprocess.run([script, "5"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert len(cut.split("`````diff\n", 1)[1].split("`````\n", 1)[0].splitlines()) == 5
    assert "Only the first 5 of" in cut


DOCS = [REPO / ".github" / "CONTRIBUTING.md", REPO / "templates" / "README.md.j2"]


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_documented_catalog_commands_exist(path):
    """Every `python -m catalog ...` that the contributor documentation shows parses with the real CLI."""
    parser = cli.build_parser()
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"python -m catalog [^`#\n|&]*", text)
    assert found
    for command in found:
        argv = [word for word in shlex.split(command)[3:] if word not in ("...",)]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}: {command}: unknown command or option")
