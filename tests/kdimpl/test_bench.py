"""The benchmark harness runs every case (on tiny inputs here; the timings themselves are never tested)."""

import json

import pytest

torch = pytest.importorskip("torch")

from benchmarks.losses import harness as bench  # noqa: E402
from benchmarks.losses.cases import all_bench_cases  # noqa: E402

TINY_LEVELS = [(12, 20), (6, 10)]
CASES = all_bench_cases()


def test_case_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", [c for c in CASES if c.backward], ids=lambda case: case.name)
def test_bench_case_builds_a_differentiable_loss(case):
    boxes = bench.make_boxes(batch=2, num_boxes=3, device="cpu")
    loss_fn = case.make(torch.device("cpu"), torch.float32, TINY_LEVELS, boxes, bench.IMAGE_SIZE)
    loss = loss_fn()
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("case", [c for c in CASES if not c.backward], ids=lambda case: case.name)
def test_forward_only_case_builds_one_map_per_level(case):
    boxes = bench.make_boxes(batch=2, num_boxes=3, device="cpu")
    maps = case.make(torch.device("cpu"), torch.float32, TINY_LEVELS, boxes, bench.IMAGE_SIZE)()
    assert len(maps) == len(TINY_LEVELS)
    row = bench.run_case(case, torch.device("cpu"), torch.float32, ["eager"], 2, boxes, 0.0, 1, 0)
    assert row["eager_ms"] > 0 and row["peak_mib"] > 0


def test_peak_live_memory_counts_intermediates():
    x = torch.ones(1024)  # created outside: not counted
    tracker = bench.PeakLiveMemory()
    with tracker:
        y = x * 2  # 4 KiB
        z = y + 1  # 4 KiB more while y lives
        del y, z
    assert tracker.peak == 2 * 1024 * 4
    assert tracker.current == 0


def test_peak_live_memory_ignores_views_of_existing_storage():
    x = torch.zeros(1024)
    tracker = bench.PeakLiveMemory()
    with tracker:
        detached = x.detach()  # shares x's storage: nothing allocated
        flat = detached.view(32, 32)
        x.add_(1)  # in place on existing storage
        y = flat * 2  # 4 KiB
        y_view = y.view(-1)  # a view of new storage counts once
        del detached, flat
    assert tracker.peak == 1024 * 4
    del y, y_view
    assert tracker.current == 0


def test_main_reports_every_selected_case(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "LEVELS", TINY_LEVELS)
    out = tmp_path / "bench.json"
    status = bench.main(["--losses", "cwd", "--mode", "eager", "--min-time", "0", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert [row["name"] for row in report["results"]] == ["cwd"]
    assert report["results"][0]["eager_ms"] > 0 and report["environment"]["threads"] >= 1
    assert "copy floor" in capsys.readouterr().out


def test_grad_leaves_finds_features_and_adapter_weights():
    student = torch.randn(2, 3, requires_grad=True)
    adapter = torch.nn.Linear(3, 3)
    teacher = torch.randn(2, 3)
    loss = (adapter(student) - teacher).square().sum() + (student * 2).sum()  # student reached twice
    leaves = bench.grad_leaves(loss)
    assert {id(t) for t in leaves} == {id(student), id(adapter.weight), id(adapter.bias)}
    assert len(leaves) == 3


def test_timed_step_resets_gradients_instead_of_accumulating():
    student = torch.randn(4, requires_grad=True)
    loss_fn = lambda: (student * 3).sum()  # noqa: E731
    step = bench._fwd_bwd(loss_fn, bench.grad_leaves(loss_fn()))
    step()
    step()
    assert torch.equal(student.grad, torch.full((4,), 3.0))


def test_quick_mode_runs_one_step_per_measurement(monkeypatch):
    monkeypatch.setattr(bench, "LEVELS", TINY_LEVELS)
    calls = []
    real = bench._fwd_bwd

    def counting(loss_fn, leaves):
        step = real(loss_fn, leaves)

        def counted():
            calls.append(1)
            step()

        return counted

    monkeypatch.setattr(bench, "_fwd_bwd", counting)
    assert bench.main(["--losses", "cwd", "--mode", "eager", "--quick"]) == 0
    assert len(calls) == 3  # one warm-up, one timed, one for peak memory
