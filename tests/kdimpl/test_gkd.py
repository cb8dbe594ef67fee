"""GKD: parity with the released loss and CAM maps, its missing gradient path, the map, checks, levels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.gkd import (  # noqa: E402
    GKDBMFILoss,
    GKDLoss,
    gkd_bmfi_loss,
    gkd_box_mask,
    gkd_importance_map,
    gkd_loss,
)

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


# ---- GKD-BMFI ----

BMFI_FIXTURE = Path(__file__).parent / "fixtures" / "gkd" / "official_gkd_bmfi.pt"


@pytest.fixture(scope="module")
def official_bmfi():
    return torch.load(BMFI_FIXTURE, weights_only=True)


def _bmfi_options(f):
    return {k: f[k] for k in ("temperature", "fg_weight", "attention_weight", "global_weight")}


@pytest.mark.parity
def test_bmfi_mask_value_and_gradient_match_official(official_bmfi):
    f = official_bmfi
    size = tuple(f["student"].shape[-2:])
    mask = gkd_box_mask(f["gt_boxes"], f["image_size"], size, official_placement=True)
    torch.testing.assert_close(mask, f["mask_fg"], rtol=1e-6, atol=1e-8)
    student = f["student"].clone().requires_grad_(True)
    loss = GKDBMFILoss(official_placement=True, **_bmfi_options(f))(student, f["teacher"], gt_boxes=f["gt_boxes"],
                                                                  image_size=f["image_size"])
    torch.testing.assert_close(loss, f["loss"], rtol=1e-5, atol=1e-8)
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, f["grad"], rtol=1e-4, atol=1e-9)
    # the released placement misses the off-centre boxes; the default puts each window on its box
    assert not torch.allclose(gkd_box_mask(f["gt_boxes"], f["image_size"], size), mask)


def test_box_mask_hand_case():
    # 8 x 8 map of a 64 x 64 image: the box covers rows 2..3 and columns 1..4 (h = 2, w = 4)
    mask = gkd_box_mask([torch.tensor([[8.0, 16.0, 40.0, 32.0]])], (64, 64), (8, 8))[0]
    area = 4 * 2 * 4
    assert torch.all(mask[2:4, 1:5] == 1 / area)
    # the 2h x 2w window starts one row and two columns before the box: rows 1..4, columns -1..6
    row, col = 1 - 1, 6 - (-1)  # window coordinates of cell (1, 6): y = 0, x = 7
    expected = math.exp(-0.5 * ((row - 2) / 2) ** 2) * math.exp(-0.5 * ((col - 4) / 4) ** 2) / area
    assert mask[1, 6].item() == pytest.approx(expected, rel=1e-6)
    assert not mask[5:].any() and not mask[:1].any() and not mask[:, 7].any()


def test_box_mask_of_a_centred_box_is_the_same_with_the_released_placement():
    boxes = [torch.tensor([[16.0, 16.0, 48.0, 48.0]])]  # cells 2..5 of an 8 x 8 map
    torch.testing.assert_close(gkd_box_mask(boxes, (64, 64), (8, 8)),
                               gkd_box_mask(boxes, (64, 64), (8, 8), official_placement=True))


def test_bmfi_terms_against_direct_formulas():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 6, 10, generator=g), torch.randn(2, 4, 6, 10, generator=g)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 10.0, 70.0, 40.0]])]
    size = (48, 80)

    def attention(x):
        a = x.abs()
        spatial = 60 * torch.softmax((a.mean(1) / 0.5).flatten(1), 1).reshape(2, 6, 10)
        return spatial, 4 * torch.softmax(a.mean((2, 3)) / 0.5, 1)

    (st, ct), (ss, cs) = attention(t), attention(s)
    error = ((s - t) ** 2 * ct[:, :, None, None] * st[:, None]).sum(1)
    mask = gkd_box_mask(boxes, size, (6, 10))
    per_image = (2.0 * (error * mask).sum((1, 2)) + 3.0 * ((ss - st).abs().sum((1, 2)) + (cs - ct).abs().sum(1))
                 + 5.0 * error.sum((1, 2)) / 60)
    ours = gkd_bmfi_loss(s, t, boxes, size, fg_weight=2.0, attention_weight=3.0, global_weight=5.0, reduction="none")
    torch.testing.assert_close(ours, per_image)
    torch.testing.assert_close(gkd_bmfi_loss(s, t, boxes, size, fg_weight=2.0, attention_weight=3.0, global_weight=5.0),
                               per_image.mean())


def test_bmfi_input_checks():
    s, t = torch.randn(2, 4, 6, 10), torch.randn(2, 4, 6, 10)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.zeros(0, 4)]
    with pytest.raises(ValueError, match="gt_boxes"):
        gkd_bmfi_loss(s, t, boxes[:1], (48, 80))
    with pytest.raises(ValueError, match="gt_boxes"):
        gkd_bmfi_loss(s, t, [torch.tensor([[40.0, 8.0, 8.0, 30.0]]), boxes[1]], (48, 80))
    with pytest.raises(ValueError, match="image_size"):
        gkd_bmfi_loss(s, t, boxes, (80, 48))
    with pytest.raises(ValueError, match="fg_weight"):
        gkd_bmfi_loss(s, t, boxes, (48, 80), fg_weight=-1.0)


def test_bmfi_levels_in_one_line_with_boxes_given_once():
    g = torch.Generator().manual_seed(4)
    sizes = [(12, 20), (6, 10), (3, 5)]
    students = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    teachers = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.tensor([[30.0, 10.0, 70.0, 40.0]])]
    total = MultiLevelLoss(GKDBMFILoss())(students, teachers, gt_boxes=boxes, image_size=(48, 80))
    expected = sum(gkd_bmfi_loss(s, t, boxes, (48, 80)) for s, t in zip(students, teachers))
    torch.testing.assert_close(total, expected)
