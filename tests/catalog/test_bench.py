"""The benchmark script runs (on a tiny catalog: it is a smoke test, nothing is timed here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from catalog.validate import validate_root

REPO = Path(__file__).parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("catalog_bench", REPO / "benchmarks" / "catalog_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_on_a_tiny_synthetic_catalog(capsys):
    assert load_bench().main(["--papers", "30", "--root", str(REPO), "--skip-real", "--in-process"]) == 0
    out = capsys.readouterr().out
    assert "30 synthetic papers: check + build:" in out and "s CPU" in out


def test_synthetic_papers_pass_check(tmp_path):
    load_bench().write_synthetic(tmp_path / "repo", 120, REPO)
    result = validate_root(tmp_path / "repo")
    assert result.problems == []
    assert len(result.catalog.papers) == 120
