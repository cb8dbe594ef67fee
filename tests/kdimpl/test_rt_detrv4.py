"""RT-DETRv4: parity with the official distillation loss and weight update, the equation, the injector, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, RTDETRv4Loss, multilevel_loss  # noqa: E402
from kdimpl.losses.rt_detrv4 import rt_detrv4_distill_weight, rt_detrv4_loss  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "rt_detrv4"


# ---------------------------------------------------------------- parity with RT-DETRs/RT-DETRv4@df44122


@pytest.mark.parametrize("case", ["resize", "same"])
def test_loss_matches_official(case):
    d = torch.load(FIXTURES / "official_rt_detrv4.pt")[case]
    student = d["student"].clone().requires_grad_(True)
    loss = rt_detrv4_loss(student, d["teacher"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), d["loss"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(student.grad, d["grad"], rtol=1e-10, atol=1e-14)


def test_weight_update_matches_official():
    d = torch.load(FIXTURES / "official_rt_detrv4_weight.pt")
    for weight, pct, epoch, expected in d["rows"].tolist():
        if epoch >= d["stop_epoch"]:  # the official final (EMA) epochs reset to the default: the caller's part
            assert expected == d["default_weight"]
            continue
        ours = rt_detrv4_distill_weight(weight, pct, rho=d["rho"], delta=d["delta"], default_weight=d["default_weight"])
        assert ours == pytest.approx(expected, rel=1e-12), (weight, pct)


# ---------------------------------------------------------------- the equation and the injector


def test_equation_per_position():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    terms = rt_detrv4_loss(s, t, reduction="none")
    for n in range(2):
        for h in range(3):
            for w in range(4):
                a, b = s[n, :, h, w], t[n, :, h, w]
                torch.testing.assert_close(terms[n, h, w], 1 - a @ b / (a.norm() * b.norm()))
    torch.testing.assert_close(rt_detrv4_loss(s, t), terms.mean())
    torch.testing.assert_close(rt_detrv4_loss(s, t, reduction="sum"), terms.sum())


def test_projector_is_applied_over_channels_and_owned_by_the_twin():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 6, 6, 10, generator=g)
    module = RTDETRv4Loss(student_channels=4, teacher_channels=6)
    projected = torch.einsum("nchw,dc->ndhw", s, module.projector_student.weight) + module.projector_student.bias[:, None, None]
    torch.testing.assert_close(module(s, t), rt_detrv4_loss(projected, t))
    module(s, t).backward()
    assert module.projector_student.weight.grad is not None
    levels = MultiLevelLoss([RTDETRv4Loss(student_channels=4, teacher_channels=6) for _ in range(3)])
    assert len(list(levels.parameters())) == 6


def test_levels_in_one_line():
    g = torch.Generator().manual_seed(3)
    students = [torch.randn(2, 8, 16 // 2**i, 20 // 2**i, generator=g) for i in range(3)]
    teachers = [torch.randn(2, 8, 10, 10, generator=g)] * 3
    total = multilevel_loss(rt_detrv4_loss, students, teachers)
    torch.testing.assert_close(total, sum(rt_detrv4_loss(s, t) for s, t in zip(students, teachers)))


def test_weight_rule_edges():
    assert rt_detrv4_distill_weight(5.0, 11.0) == 5.0
    assert rt_detrv4_distill_weight(5.0, 0.0) == 20.0
    assert rt_detrv4_distill_weight(5.0, 0.0, default_weight=7.0) == 7.0
    assert rt_detrv4_distill_weight(5.0, 0.5) == 50.0  # clamped to 10x
    assert rt_detrv4_distill_weight(0.0, 50.0) == 0.0


# ---------------------------------------------------------------- checks and edge cases


def test_checks():
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 6, 3, 5)
    with pytest.raises(ValueError, match="projected student"):
        rt_detrv4_loss(s, t)
    with pytest.raises(ValueError, match="teacher"):
        rt_detrv4_loss(torch.randn(2, 6, 3, 5), torch.randn(3, 6, 3, 5))
    with pytest.raises(TypeError, match="student"):
        rt_detrv4_loss(torch.ones(2, 6, 3, 5, dtype=torch.long), torch.randn(2, 6, 3, 5))
    with pytest.raises(TypeError, match="projector_student"):
        rt_detrv4_loss(s, t, projector_student=3)


def test_nan_and_empty_batch():
    s, t = torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 5)
    s[0, 0, 0, 0] = float("nan")
    assert torch.isnan(rt_detrv4_loss(s, t))
    empty = torch.zeros(0, 6, 3, 5, requires_grad=True)
    loss = rt_detrv4_loss(empty, torch.zeros(0, 6, 6, 10))
    assert loss.item() == 0.0
    loss.backward()
    assert not empty.grad.any()
