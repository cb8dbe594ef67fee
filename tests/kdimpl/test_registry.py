"""The loss registry: lookups, errors, registration, and that every loss is tested, benchmarked and catalogued."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

import kdimpl  # noqa: E402
from kdimpl import _registry  # noqa: E402
from kdimpl._base import LossModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NAMES = kdimpl.list_losses()


def _toy_loss(student, teacher, *, reduction="mean"):
    return (student - teacher).abs().mean()


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    return _registry._REGISTRY


def test_build_loss_builds_the_module_with_its_options():
    loss = kdimpl.build_loss({"type": "cwd", "temperature": 4.0, "loss_weight": 2.0})
    assert isinstance(loss, kdimpl.CWDLoss)
    assert loss.options["temperature"] == 4.0 and loss.loss_weight == 2.0


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match=r"unknown loss 'cwdd'; did you mean 'cwd'"):
        kdimpl.build_loss({"type": "cwdd"})
    with pytest.raises(KeyError, match="list_losses"):
        kdimpl.get_loss("no-such-loss")


def test_build_loss_needs_a_type_and_rejects_unknown_options():
    with pytest.raises(KeyError, match="'type'"):
        kdimpl.build_loss({"temperature": 1.0})
    with pytest.raises(TypeError, match=r"unexpected config keys \['tau'\]"):
        kdimpl.build_loss({"type": "cwd", "tau": 1.0})


def test_list_losses_filters_with_shell_patterns():
    assert kdimpl.list_losses() == sorted(kdimpl.list_losses())
    matched = kdimpl.list_losses("chen2017_*")
    assert matched and all(name.startswith("chen2017_") for name in matched)
    assert kdimpl.list_losses("no-such-*") == []


def test_registering_two_classes_under_one_name_is_refused(scratch_registry):
    @kdimpl.register_loss("toy", function=_toy_loss)
    class ToyLoss(LossModule):
        def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
            super().__init__(reduction=reduction, loss_weight=loss_weight)

    assert kdimpl.get_loss("toy") is ToyLoss and kdimpl.get_loss_function("toy") is _toy_loss
    assert list(inspect.signature(ToyLoss.forward).parameters) == ["self", "student", "teacher"]
    s, t = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(ToyLoss(loss_weight=3.0)(s, t), 3.0 * _toy_loss(s, t))

    with pytest.raises(ValueError, match="already registered"):

        @kdimpl.register_loss("toy", function=_toy_loss)
        class OtherToyLoss(LossModule):
            pass


def test_module_twins_store_their_options_once():
    loss = kdimpl.CWDLoss(temperature=2.0, reduction="sum", loss_weight=0.5)
    assert loss.options == {"temperature": 2.0, "reduction": "sum"}
    assert repr(loss) == "CWDLoss(temperature=2.0, reduction='sum', loss_weight=0.5)"
    with pytest.raises(ValueError, match="temperature"):
        kdimpl.CWDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        kdimpl.CWDLoss(reduction="average")


def _bench_case_names():
    from benchmarks.losses.cases import all_bench_cases

    return {case.name for case in all_bench_cases()}


def _catalogued_classes():
    names = set()
    for path in sorted((ROOT / "papers").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict):
            names.update(item.get("name") for item in data.get("implementations") or [] if isinstance(item, dict))
    return names


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_has_tests_a_bench_case_and_a_catalog_entry(name):
    entry = _registry._entry(name)
    assert (ROOT / "tests" / "kdimpl" / f"test_{entry.source}.py").is_file(), f"{name}: no tests/kdimpl/test_{entry.source}.py"
    from .cases import all_cases

    assert name in all_cases(), f"{name}: no contract case in tests/kdimpl/cases/"
    assert name in _bench_case_names(), f"{name}: no benchmark case named {name!r} in benchmarks/losses/cases/"
    assert entry.module.__name__ in _catalogued_classes(), (
        f"{name}: no paper in papers/ lists {entry.module.__name__} under implementations"
    )


def test_repr_shows_tensor_options_by_shape():
    text = repr(LossModule(class_map=torch.arange(1000.0), temperature=2.0))
    assert text == "LossModule(class_map=tensor(shape=(1000,), dtype=torch.float32), temperature=2.0, loss_weight=1.0)"
