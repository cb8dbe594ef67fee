"""GKD: parity with the released loss and CAM maps, its missing gradient path, the map, checks, levels."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.gkd import GKDLoss, gkd_importance_map, gkd_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "gkd" / "official_gkd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _args(f):
    return f["student"], f["teacher"], f["student_grads"], f["teacher_grads"]


@pytest.mark.parity
def test_maps_match_the_official_grad_cam(official):
    torch.testing.assert_close(gkd_importance_map(official["student"], official["student_grads"]),
                               official["student_map"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gkd_importance_map(official["teacher"], official["teacher_grads"]),
                               official["teacher_map"], rtol=1e-5, atol=1e-6)


@pytest.mark.parity
def test_official_value_and_its_missing_gradient(official):
    assert official["loss_requires_grad"] is False  # the released loss is a constant
    student = official["student"].clone().requires_grad_(True)
    args = (student, *_args(official)[1:])
    detached = GKDLoss(detach_student=True, loss_weight=official["loss_weight"])(*args)
    torch.testing.assert_close(detached, official["loss"], rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(detached, student)
    assert not grad.any()
    # the same value with a gradient path: the student is taught to match the teacher's map
    with_path = GKDLoss(loss_weight=official["loss_weight"])(*args)
    torch.testing.assert_close(with_path, detached)
    (grad,) = torch.autograd.grad(with_path, student)
    assert grad.abs().sum() > 0


def test_a_step_along_the_gradient_path_moves_the_student_map_to_the_teacher_map(official):
    student = official["student"].clone().requires_grad_(True)
    grads_s, teacher, grads_t = official["student_grads"], official["teacher"], official["teacher_grads"]
    before = gkd_loss(student, teacher, grads_s, grads_t)
    (grad,) = torch.autograd.grad(before, student)
    after = gkd_loss(student.detach() - 0.05 * grad / grad.abs().max(), teacher, grads_s, grads_t)
    assert after < before


def _naive_map(features, grads):
    n, c, h, w = features.shape
    out = torch.zeros(n, h, w, dtype=torch.float64)
    for i in range(n):
        weights = [grads[i, k].double().mean() for k in range(c)]
        cam = sum(weights[k] * features[i, k].double() for k in range(c)).clamp(min=0)
        cam = cam - cam.min()
        out[i] = cam / (torch.finfo(torch.float64).eps + cam.max())
    return out


def test_map_and_loss_match_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 6, 3, 5, generator=g)  # channels may differ
    gs, gt = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 6, 3, 5, generator=g)
    torch.testing.assert_close(gkd_importance_map(s.double(), gs.double()), _naive_map(s, gs))
    expected = (_naive_map(t, gt) - _naive_map(s, gs)).abs()
    torch.testing.assert_close(gkd_loss(s, t, gs, gt, reduction="none"), expected.float())
    torch.testing.assert_close(gkd_loss(s, t, gs, gt), expected.mean().float())


def test_second_order_path_through_the_student_gradients():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(1, 4, 3, 5, generator=g, requires_grad=True)
    t, gt = torch.randn(1, 4, 3, 5, generator=g), torch.randn(1, 4, 3, 5, generator=g)
    det_loss = (s**3).sum()  # stand-in for the student's detection loss
    (gs,) = torch.autograd.grad(det_loss, s, create_graph=True)
    first_order = torch.autograd.grad(gkd_loss(s, t, gs.detach(), gt), s)[0]
    second_order = torch.autograd.grad(gkd_loss(s, t, gs, gt), s)[0]
    assert not torch.allclose(first_order, second_order)


def test_a_flat_map_is_zero_not_nan():
    m = gkd_importance_map(torch.full((1, 3, 2, 4), 0.5), torch.ones(1, 3, 2, 4))
    assert not m.any()
    m = gkd_importance_map(torch.ones(1, 3, 2, 4), -torch.ones(1, 3, 2, 4))  # all rectified away
    assert not m.any()


def test_input_checks():
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    with pytest.raises(ValueError, match="student_grads"):
        gkd_loss(s, t, torch.randn(2, 4, 3, 6), t)
    with pytest.raises(ValueError, match="teacher"):
        gkd_loss(s, torch.randn(2, 4, 4, 5), s, torch.randn(2, 4, 4, 5))
    with pytest.raises(TypeError, match="teacher_grads"):
        gkd_loss(s, t, s, t.long())
    with pytest.raises(ValueError, match="reduction"):
        gkd_loss(s, t, s, t, reduction="avg")


def test_nan_gradient_gives_nan():
    s, t = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 3, 5)
    grads = torch.randn(1, 4, 3, 5)
    grads[0, 0, 0, 0] = float("nan")
    assert torch.isnan(gkd_loss(s, t, grads, t))


def test_levels_in_one_line():
    g = torch.Generator().manual_seed(2)
    sizes = [(8, 12), (4, 6), (2, 3)]
    students = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    teachers = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    grads_s = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    grads_t = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    total = multilevel_loss(GKDLoss(loss_weight=0.5), students, teachers, grads_s, grads_t)
    expected = sum(0.5 * gkd_loss(*a) for a in zip(students, teachers, grads_s, grads_t))
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(MultiLevelLoss(GKDLoss(), loss_weight=0.5)(students, teachers, grads_s, grads_t), expected)
