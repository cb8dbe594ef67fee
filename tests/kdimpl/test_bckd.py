"""BCKD: formulas against per-anchor loops and parity with TinyTigerPan/BCKD@121c9aa (fixtures in fixtures/bckd/)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (
    BCKDClsLoss,
    BCKDLocLoss,
    MultiLevelLoss,
    bckd_cls_loss,
    bckd_distribution_boxes,
    bckd_loc_loss,
    multilevel_loss,
)
from kdimpl.ops import aligned_box_iou

FIXTURES = Path(__file__).parent / "fixtures" / "bckd"
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURES / "official_bckd.pt")


def _heads(seed=0, n=2, k=3, bins=5, h=3, w=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s_cls, t_cls = torch.randn(n, k, h, w, generator=g, dtype=dtype), torch.randn(n, k, h, w, generator=g, dtype=dtype)
    s_box = torch.randn(n, 4 * bins, h, w, generator=g, dtype=dtype)
    t_box = torch.randn(n, 4 * bins, h, w, generator=g, dtype=dtype)
    mask = (torch.rand(n, h, w, generator=g) > 0.3).to(dtype)
    return s_cls, t_cls, s_box, t_box, mask


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_hand_case_one_class():
    # z_s = 0, z_t = ln 3: BCE(1/2, 3/4) = ln 2, |dp| = 1/4
    s = torch.zeros(1, 1, 1, 1)
    t = torch.full((1, 1, 1, 1), math.log(3.0))
    torch.testing.assert_close(bckd_cls_loss(s, t, reduction="sum"), torch.tensor(math.log(2) / 4))


def test_cls_matches_a_per_anchor_loop():
    s_cls, t_cls, _, _, mask = _heads()
    n, k, h, w = s_cls.shape
    total = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                for c in range(k):
                    p, q = _sigmoid(float(s_cls[i, c, y, x])), _sigmoid(float(t_cls[i, c, y, x]))
                    bce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
                    total += float(mask[i, y, x]) * bce * abs(q - p) ** 1.5
    ours = bckd_cls_loss(s_cls, t_cls, mask, 7, beta=1.5)
    torch.testing.assert_close(ours, torch.tensor(total / (7 + EPS32), dtype=torch.float64))


def _giou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enclose - union) / enclose


def test_loc_matches_a_per_anchor_loop():
    s_cls, t_cls, s_box, t_box, mask = _heads(seed=1)
    n, _, h, w = s_cls.shape
    bins = s_box.shape[1] // 4
    total = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                boxes = []
                for logits in (s_box, t_box):
                    d = [sum(j * float(v) for j, v in enumerate(logits[i, side * bins:(side + 1) * bins, y, x].softmax(0)))
                         for side in range(4)]
                    boxes.append([x - d[0], y - d[1], x + d[2], y + d[3]])  # anchor point (x, y)
                weight = max(abs(_sigmoid(float(t_cls[i, c, y, x])) - _sigmoid(float(s_cls[i, c, y, x])))
                             for c in range(s_cls.shape[1]))
                total += float(mask[i, y, x]) * weight * (1 - _giou(*boxes))
    ours = bckd_loc_loss(s_box, t_box, s_cls, t_cls, mask, 5.0)
    torch.testing.assert_close(ours, torch.tensor(total / (5 + EPS32), dtype=torch.float64))


def test_distribution_boxes_are_expected_distances():
    logits = torch.full((1, 8, 1, 1), -1e4)
    logits[0, [1, 2, 4, 7], 0, 0] = 0.0  # one-hot bins: left 1, top 0, right 0, bottom 1
    torch.testing.assert_close(bckd_distribution_boxes(logits).flatten(), torch.tensor([-1.0, 0.0, 0.0, 1.0]))


def test_aligned_box_iou_against_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(aligned_box_iou(a, b), torch.tensor([1 / 3, 0.0, 1.0]))
    torch.testing.assert_close(aligned_box_iou(a, b, generalized=True), torch.tensor([1 / 3, 2 / 9 - 1, 1.0]))
    degenerate = torch.zeros(1, 4)
    assert torch.isfinite(aligned_box_iou(degenerate, degenerate, generalized=True)).all()


@pytest.mark.parametrize("level", [0, 1])
def test_parity_with_the_official_head(fx, level):
    inputs, expected = fx["inputs"][level], fx["outputs"][level]
    s_cls = inputs["student_cls"].clone().requires_grad_(True)
    s_box = inputs["student_box"].clone().requires_grad_(True)
    cls = bckd_cls_loss(s_cls, inputs["teacher_cls"], inputs["valid_mask"], fx["num_positives"])
    loc = bckd_loc_loss(s_box, inputs["teacher_box"], s_cls, inputs["teacher_cls"], inputs["valid_mask"],
                        fx["num_positives"])
    torch.testing.assert_close(cls, expected["loss_cls"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loc, expected["loss_loc"], rtol=1e-12, atol=1e-12)
    grad_cls, = torch.autograd.grad(cls, s_cls)
    grad_box, = torch.autograd.grad(loc, s_box)
    torch.testing.assert_close(grad_cls, expected["grad_student_cls"], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad_box, expected["grad_student_box"], rtol=1e-10, atol=1e-14)


def test_parity_over_levels_through_the_twins(fx):
    levels = fx["inputs"]
    total_cls = sum(o["loss_cls"] for o in fx["outputs"])
    total_loc = 4.0 * sum(o["loss_loc"] for o in fx["outputs"])
    masks = [lv["valid_mask"] for lv in levels]
    s_cls = [lv["student_cls"] for lv in levels]
    t_cls = [lv["teacher_cls"] for lv in levels]
    cls = MultiLevelLoss(BCKDClsLoss())(s_cls, t_cls, masks, num_positives=fx["num_positives"])
    loc = MultiLevelLoss(BCKDLocLoss(loss_weight=4.0))(
        [lv["student_box"] for lv in levels], [lv["teacher_box"] for lv in levels], s_cls, t_cls, masks,
        num_positives=fx["num_positives"],
    )
    torch.testing.assert_close(cls, total_cls, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loc, total_loc, rtol=1e-12, atol=1e-12)


def test_three_levels_in_one_line_equal_the_sum_of_levels():
    levels = [_heads(seed=s, h=6 // 2**s + 1, w=8 // 2**s + 1) for s in range(3)]
    s_cls, t_cls, s_box, t_box, masks = (list(x) for x in zip(*levels))
    total = multilevel_loss(bckd_cls_loss, s_cls, t_cls, masks, num_positives=4)
    torch.testing.assert_close(total, sum(bckd_cls_loss(*lv[:2], lv[4], 4) for lv in levels))
    total = multilevel_loss(bckd_loc_loss, s_box, t_box, s_cls, t_cls, masks, num_positives=4)
    torch.testing.assert_close(total, sum(bckd_loc_loss(lv[2], lv[3], lv[0], lv[1], lv[4], 4) for lv in levels))


def test_num_positives_is_clamped_to_one_and_required_for_the_mean():
    s_cls, t_cls, _, _, mask = _heads()
    torch.testing.assert_close(bckd_cls_loss(s_cls, t_cls, mask, 0), bckd_cls_loss(s_cls, t_cls, mask, 1))
    torch.testing.assert_close(
        bckd_cls_loss(s_cls, t_cls, mask, torch.tensor(4.0, dtype=torch.float64)),
        bckd_cls_loss(s_cls, t_cls, mask, reduction="sum") / (4 + EPS32),
    )
    with pytest.raises(ValueError, match="num_positives"):
        bckd_cls_loss(s_cls, t_cls, mask)


def test_loc_weights_take_no_gradient_and_teacher_is_detached():
    s_cls, t_cls, s_box, t_box, mask = _heads()
    s_cls.requires_grad_(True)
    t_box.requires_grad_(True)
    bckd_loc_loss(s_box.requires_grad_(True), t_box, s_cls, t_cls, mask, 3).backward()
    assert s_cls.grad is None and t_box.grad is None and s_box.grad.abs().sum() > 0


def test_inputs_are_checked():
    s_cls, t_cls, s_box, t_box, mask = _heads()
    with pytest.raises(ValueError, match="valid_mask"):
        bckd_cls_loss(s_cls, t_cls, mask[:, :2], 3)
    with pytest.raises(ValueError, match="teacher_logits"):
        bckd_cls_loss(s_cls, t_cls[:, :2], mask, 3)
    with pytest.raises(ValueError, match="beta"):
        bckd_cls_loss(s_cls, t_cls, mask, 3, beta=-1.0)
    with pytest.raises(ValueError, match="4 \\(R \\+ 1\\) channels"):
        bckd_loc_loss(s_box[:, :-1], t_box[:, :-1], s_cls, t_cls, mask, 3)
    with pytest.raises(ValueError, match="student_box_logits"):
        bckd_loc_loss(s_box[:, :, :2], t_box[:, :, :2], s_cls, t_cls, mask, 3)
    with pytest.raises(TypeError, match="student_logits"):
        bckd_loc_loss(s_box, t_box, s_cls.long(), t_cls, mask, 3)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_nan_class_logits_give_nan(side):
    s_cls, t_cls, s_box, t_box, mask = _heads()
    (s_cls if side == "student" else t_cls)[0, 0, 0, 0] = float("nan")
    mask[0, 0, 0] = 1
    assert torch.isnan(bckd_cls_loss(s_cls, t_cls, mask, 3))
    assert torch.isnan(bckd_loc_loss(s_box, t_box, s_cls, t_cls, mask, 3))


def test_empty_batch_is_a_zero_in_the_graph():
    s_cls, t_cls, s_box, t_box, mask = _heads(n=0)
    s_box.requires_grad_(True)
    s_cls.requires_grad_(True)
    loss = bckd_cls_loss(s_cls, t_cls, mask, 0) + bckd_loc_loss(s_box, t_box, s_cls, t_cls, mask, 0)
    assert loss.item() == 0.0
    loss.backward()
    assert not s_box.grad.any() and not s_cls.grad.any()
