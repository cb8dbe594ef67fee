"""A throwaway repository with the core fixture's papers and the site's MiniSearch, and its built site."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.catalog.repo import REPO, make_repo, run_module

MINISEARCH = REPO / "node_modules" / "minisearch"

# The papers of the core fixture (tests/catalog/fixtures/core/repo/papers).
FIXTURE_IDS = {"alpha", "beta", "delta", "gamma"}


def require_minisearch() -> None:
    if not (MINISEARCH / "dist").is_dir():
        pytest.skip("MiniSearch is not installed: run `npm ci` to test the site")


def make_site_repo(tmp_path: Path) -> Path:
    """The command-test repository plus ``package.json`` and this checkout's MiniSearch."""
    require_minisearch()
    root = make_repo(tmp_path)
    shutil.copy(REPO / "package.json", root / "package.json")
    (root / "node_modules").mkdir()
    os.symlink(MINISEARCH, root / "node_modules" / "minisearch", target_is_directory=True)
    return root


def build_site(root: Path, out: Path, *args: str) -> Path:
    result = run_module("site", "--root", str(root), "--out", str(out), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "index.html"
