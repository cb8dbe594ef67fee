"""DeFeat: parity with ggjy/DeFeat.pytorch@c46a793 and mask-builder checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl.adapters.defeat import DeFeatAdapter  # noqa: E402
from kdimpl.losses.defeat import (  # noqa: E402
    defeat_box_levels,
    defeat_gt_masks,
    defeat_loss,
    defeat_multilevel_loss,
    defeat_roi_kd_loss,
)

FIXTURES = Path(__file__).parent / "fixtures" / "defeat"
STRIDES = (4, 8, 16, 32, 64)


def _naive_masks(gt_boxes, feature_sizes, strides, finest_scale=56.0):
    """Per-image, per-level, per-box loop written from the documented rasterisation rule."""
    out = [torch.zeros(len(gt_boxes), h, w) for h, w in feature_sizes]
    for n, boxes in enumerate(gt_boxes):
        for box in boxes.tolist():
            x1, y1, x2, y2 = box
            scale = math.sqrt((x2 - x1 + 1) * (y2 - y1 + 1))
            level = min(max(math.floor(math.log2(scale / finest_scale + 1e-6)), 0), len(strides) - 1)
            h, w = feature_sizes[level]
            s = strides[level]
            lx, ly = max(int(x1 / s), 0), max(int(y1 / s), 0)
            rx, ry = min(int(x2 / s), w), min(int(y2 / s), h)
            if lx == rx or ly == ry:
                out[level][n, min(ly, h - 1), min(lx, w - 1)] = 1
            else:
                out[level][n, ly:ry, lx:rx] = 1
    return out


@pytest.mark.parity
def test_masks_match_official_on_every_level():
    f = torch.load(FIXTURES / "defeat_masks.pt")
    masks = defeat_gt_masks(f["gt_boxes"], f["feature_sizes"], f["strides"])
    assert all(m.any() for m in f["masks"]), "the fixture should hit every level"
    for level, (mine, official) in enumerate(zip(masks, f["masks"])):
        assert torch.equal(mine.bool(), official), f"level {level} differs"
    for boxes, levels in zip(f["gt_boxes"], f["levels"]):
        assert torch.equal(defeat_box_levels(boxes, 5), levels)


def _adapter(f, dtype):
    adapter = DeFeatAdapter(4, 4, num_levels=5).to(dtype)
    state = {k.replace(".0.", "."): v.to(dtype) for k, v in f["adapter_state"].items()}
    adapter.convs.load_state_dict(state)
    return adapter


@pytest.mark.parity
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_feature_loss_and_gradients_match_official(dtype):
    f = torch.load(FIXTURES / "defeat_loss.pt")
    suffix = "float64" if dtype == torch.float64 else "float32"
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    students = [s.to(dtype).requires_grad_(True) for s in f["students"]]
    teachers = [t.to(dtype) for t in f["teachers"]]
    adapted = _adapter(f, dtype)(students)
    pairs = list(enumerate(zip(adapted, teachers)))
    fg = sum(defeat_loss(s, t, f["gt_boxes"], level=i, bg_weight=0.0) for i, (s, t) in pairs)
    bg = sum(defeat_loss(s, t, f["gt_boxes"], level=i, fg_weight=0.0) for i, (s, t) in pairs)
    torch.testing.assert_close(fg.double() / 5, f[f"loss_fg_{suffix}"], rtol=rtol, atol=0)
    torch.testing.assert_close(bg.double() / 5, f[f"loss_bg_{suffix}"], rtol=rtol, atol=0)
    total = defeat_multilevel_loss(adapted, teachers, f["gt_boxes"])
    total.backward()
    for mine, official in zip(students, f["grads_float64"]):
        torch.testing.assert_close(mine.grad.float(), official, rtol=1e-5, atol=1e-8)


@pytest.mark.parity
def test_roi_kd_matches_official_kl_decouple():
    roi = torch.load(FIXTURES / "defeat_loss.pt")["roi"]
    student = roi["student_logits"].double().requires_grad_(True)
    kwargs = dict(temperature=roi["temperature"], fg_weight=roi["fg_weight"], bg_weight=roi["bg_weight"])
    loss = defeat_roi_kd_loss(student, roi["teacher_logits"].double(), roi["labels"], **kwargs)
    loss.backward()
    torch.testing.assert_close(loss, roi["loss_fg"] + roi["loss_bg"], rtol=1e-10, atol=0)
    torch.testing.assert_close(student.grad, roi["grad"], rtol=1e-10, atol=1e-14)


def test_masks_match_naive_loop_on_edge_cases(device):
    img_h, img_w = 256, 320
    sizes = [(img_h // s, img_w // s) for s in STRIDES]
    boxes0 = torch.tensor(
        [
            [0.0, 0.0, 10.0, 9.0],  # top-left corner
            [300.0, 240.0, 320.0, 256.0],  # bottom-right corner, edge on the border
            [5.0, 5.0, 40.0, 30.0],  # overlaps the first
            [100.0, 100.0, 100.0, 100.0],  # point box
            [50.0, 20.0, 51.0, 90.0],  # thinner than a cell, tall: single cell
            [318.0, 10.0, 320.0, 12.0],  # degenerate at the right border
            [0.0, 0.0, 320.0, 256.0],  # whole image
            [60.0, 60.0, 300.0, 200.0],  # large
        ]
    )
    generator = torch.Generator().manual_seed(5)
    u = torch.rand(12, 4, generator=generator)
    x1, y1 = u[:, 0] * img_w * 0.9, u[:, 1] * img_h * 0.9
    boxes1 = torch.stack([x1, y1, (x1 + u[:, 2] * 200).clamp(max=img_w), (y1 + u[:, 3] * 150).clamp(max=img_h)], 1)
    gt = [boxes0, boxes1, torch.zeros(0, 4)]
    mine = defeat_gt_masks([b.to(device) for b in gt], sizes, STRIDES)
    for level, naive in zip(mine, _naive_masks(gt, sizes, STRIDES)):
        assert level.device.type == device.type
        torch.testing.assert_close(level.cpu(), naive)


def test_unit_error_gives_half_the_weights():
    # fg and bg terms each average the squared error over their elements and halve it
    student = torch.ones(2, 3, 16, 20)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.zeros(0, 4)]
    loss = defeat_loss(student, torch.zeros_like(student), boxes, level=0, fg_weight=3.0, bg_weight=12.0)
    torch.testing.assert_close(loss, torch.tensor((3.0 + 12.0) / 2))


def test_no_boxes_leaves_only_the_background_term():
    student, teacher = torch.randn(2, 3, 8, 10), torch.randn(2, 3, 8, 10)
    boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    loss = defeat_loss(student, teacher, boxes, level=0, fg_weight=5.0, bg_weight=2.0)
    torch.testing.assert_close(loss, 2.0 * (student - teacher).pow(2).mean() / 2)


def test_boxes_only_reach_their_level():
    small = torch.tensor([[10.0, 10.0, 40.0, 40.0]])  # scale 31 -> level 0
    large = torch.tensor([[0.0, 0.0, 299.0, 299.0]])  # scale 300 -> level 2
    masks = defeat_gt_masks([torch.cat([small, large])], [(80, 80), (40, 40), (20, 20)], (4, 8, 16))
    assert masks[0].sum() == (10 - 2) * (10 - 2)
    assert masks[1].sum() == 0
    assert masks[2].sum() == (18 - 0) * (18 - 0)


def test_roi_kd_empty_sets_contribute_zero():
    logits = torch.randn(4, 3)
    only_bg = torch.full((4,), 2)
    loss = defeat_roi_kd_loss(logits, torch.randn(4, 3), only_bg, fg_weight=100.0, bg_weight=0.0)
    assert loss == 0


def test_multilevel_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="levels"):
        defeat_multilevel_loss([torch.randn(1, 2, 4, 4)], [], [torch.zeros(0, 4)])
