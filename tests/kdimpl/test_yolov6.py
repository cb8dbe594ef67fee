"""YOLOv6 v3.0 self-distillation: parity with the official ComputeLoss, naive loops, schedule, checks, levels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import multilevel_loss  # noqa: E402
from kdimpl.losses.yolov6 import (  # noqa: E402
    YOLOv6ClsLoss,
    YOLOv6DFLLoss,
    yolov6_cls_loss,
    yolov6_dfl_loss,
    yolov6_distill_weight,
)

FIXTURE = Path(__file__).parent / "fixtures" / "yolov6" / "official_yolov6.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
def test_class_kd_matches_official(official):
    student = official["student_scores"].clone().requires_grad_(True)
    loss = YOLOv6ClsLoss(temperature=official["temperature"])(student, official["teacher_scores"])
    # the official value carries float32 cancellation error (see PROVENANCE.md); float64 agrees with ours
    torch.testing.assert_close(loss, official["d_loss_cls"], rtol=5e-4, atol=0)
    exact = yolov6_cls_loss(official["student_scores"].double(), official["teacher_scores"].double(), temperature=20.0)
    torch.testing.assert_close(loss.double(), exact, rtol=1e-4, atol=0)
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, official["grad_cls"], rtol=1e-4, atol=1e-5)


@pytest.mark.parity
def test_dfl_kd_matches_official(official):
    student = official["student_distri"].clone().requires_grad_(True)
    loss = YOLOv6DFLLoss(temperature=official["temperature"])(student, official["teacher_distri"], official["fg_mask"])
    torch.testing.assert_close(loss.double(), official["d_loss_dfl"], rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, official["grad_dfl"], rtol=1e-4, atol=5e-9)
    # the official factor sum_fg(score) / sum(score) that this loss leaves out is 1 under TAL
    scores = official["target_scores"]
    torch.testing.assert_close(scores[official["fg_mask"]].sum() / scores.sum(), torch.tensor(1.0))


@pytest.mark.parity
def test_schedule_matches_official(official):
    weights = torch.tensor([yolov6_distill_weight(e, official["max_epoch"]) for e in official["epochs"]])
    torch.testing.assert_close(official["decayed_cls"] / official["d_loss_cls"], weights, rtol=1e-6, atol=0)
    torch.testing.assert_close((official["decayed_dfl"] / official["d_loss_dfl"]).float(), weights, rtol=1e-6, atol=0)


def test_schedule_end_points_and_midpoint():
    assert yolov6_distill_weight(0, 300) == 1.0
    assert yolov6_distill_weight(150, 300) == pytest.approx(0.505)
    assert yolov6_distill_weight(300, 300) == pytest.approx(0.01)
    assert yolov6_distill_weight(300, 300, final_weight=0.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="max_epoch"):
        yolov6_distill_weight(1, 0)


def _naive_kl(s, t, temperature):
    p = (t.double() / temperature).softmax(-1)
    q = (s.double() / temperature).softmax(-1)
    return temperature**2 * (p * (p / q).log()).sum(-1)


def test_class_kd_is_the_sum_of_per_anchor_kls():
    g = torch.Generator().manual_seed(0)
    s, t = torch.rand(2, 7, 6, generator=g), torch.rand(2, 7, 6, generator=g)
    naive = torch.stack([torch.stack([_naive_kl(s[i, a], t[i, a], 3.0) for a in range(7)]) for i in range(2)])
    torch.testing.assert_close(yolov6_cls_loss(s, t, temperature=3.0, reduction="none"), naive.float())
    torch.testing.assert_close(yolov6_cls_loss(s, t, temperature=3.0), naive.sum().float())


def test_dfl_kd_is_the_mean_over_foreground_edges():
    g = torch.Generator().manual_seed(1)
    s, t = 3 * torch.randn(2, 6, 4 * 5, generator=g), 3 * torch.randn(2, 6, 4 * 5, generator=g)
    fg = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    edges = []
    for i, a in fg.nonzero().tolist():
        for e in range(4):
            edges.append(_naive_kl(s[i, a, e * 5:(e + 1) * 5], t[i, a, e * 5:(e + 1) * 5], 2.0))
    torch.testing.assert_close(yolov6_dfl_loss(s, t, fg, temperature=2.0), torch.stack(edges).mean().float())
    terms = yolov6_dfl_loss(s, t, fg, temperature=2.0, reduction="none")
    assert terms.shape == (2, 6, 4) and not terms[~fg].any()


def test_dfl_kd_without_foreground_is_a_zero_in_the_graph():
    student = torch.randn(2, 5, 20, requires_grad=True)
    loss = yolov6_dfl_loss(student, torch.randn(2, 5, 20), torch.zeros(2, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert not student.grad.any()


def test_nan_off_the_foreground_still_gives_nan():
    student, teacher = torch.randn(1, 3, 20), torch.randn(1, 3, 20)
    student[0, 2, 0] = float("nan")
    assert torch.isnan(yolov6_dfl_loss(student, teacher, torch.tensor([[True, False, False]])))


def test_input_checks():
    with pytest.raises(ValueError, match="4 \\* \\(reg_max \\+ 1\\)"):
        yolov6_dfl_loss(torch.randn(1, 3, 18), torch.randn(1, 3, 18), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="fg_mask"):
        yolov6_dfl_loss(torch.randn(1, 3, 20), torch.randn(1, 3, 20), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher"):
        yolov6_cls_loss(torch.rand(1, 3, 5), torch.rand(1, 3, 6))
    with pytest.raises(TypeError, match="student"):
        yolov6_cls_loss(torch.ones(1, 3, 5, dtype=torch.long), torch.rand(1, 3, 5))
    with pytest.raises(ValueError, match="temperature"):
        yolov6_cls_loss(torch.rand(1, 3, 5), torch.rand(1, 3, 5), temperature=0.0)


def test_levels_in_one_line():
    g = torch.Generator().manual_seed(2)
    sizes = [64, 16, 4]  # anchors per level
    students = [torch.rand(2, a, 5, generator=g) for a in sizes]
    teachers = [torch.rand(2, a, 5, generator=g) for a in sizes]
    # a sum over anchors: per level through multilevel_loss equals one call on the concatenated anchors
    torch.testing.assert_close(multilevel_loss(YOLOv6ClsLoss(), students, teachers),
                               yolov6_cls_loss(torch.cat(students, 1), torch.cat(teachers, 1)))
    # the DFL term is a mean over the foreground of all levels: per-level sums over the total count
    distri_s = [torch.randn(2, a, 20, generator=g) for a in sizes]
    distri_t = [torch.randn(2, a, 20, generator=g) for a in sizes]
    fg = [torch.rand(2, a, generator=g) < 0.3 for a in sizes]
    count = 4 * sum(m.sum() for m in fg)
    per_level = multilevel_loss(YOLOv6DFLLoss(reduction="sum"), distri_s, distri_t, fg) / count
    torch.testing.assert_close(per_level, yolov6_dfl_loss(torch.cat(distri_s, 1), torch.cat(distri_t, 1), torch.cat(fg, 1)))
    assert not math.isclose(float(multilevel_loss(YOLOv6DFLLoss(), distri_s, distri_t, fg)), float(per_level))


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_gathered_dfl_form_equals_the_dense_reference(scale):
    from kdimpl.losses import yolov6 as module

    g = torch.Generator().manual_seed(5)
    student = (scale * torch.randn(2, 40, 4 * 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    teacher = scale * torch.randn(2, 40, 4 * 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 40, generator=g) < 0.2).double()
    dense = module._dfl_terms(student, teacher, mask, 3.0).sum()
    gathered = module._dfl_terms_at_foreground(student, teacher, mask, 3.0).sum()
    torch.testing.assert_close(gathered, dense, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(gathered, student)[0], torch.autograd.grad(dense, student)[0],
                               rtol=1e-12, atol=1e-14)
    # the dispatched loss ('mean' gathers, 'none' is dense) agrees with the reference's normalisation
    torch.testing.assert_close(yolov6_dfl_loss(student, teacher, mask.bool(), temperature=3.0), dense / (4 * mask.sum()))
