"""The benchmark's synthetic catalog is valid and builds (a small one: the full run is `python -m catalog.bench`)."""

from __future__ import annotations

from pathlib import Path

from catalog import bench

REPO = Path(__file__).parents[2]


def test_bench_runs_on_a_small_catalog(capsys):
    assert bench.main(["--papers", "300", "--root", str(REPO)]) == 0
    out = capsys.readouterr().out
    assert "check + build, one process:" in out and "check + build, two processes:" in out
    assert "python -m catalog check:" in out and "for 300 papers" in out and "s CPU" in out


def test_synthetic_papers_pass_check(tmp_path):
    from catalog.validate import validate_root

    bench.write_synthetic(tmp_path / "repo", 120, REPO)
    result = validate_root(tmp_path / "repo")
    assert result.problems == []
    assert len(result.catalog.papers) == 120
