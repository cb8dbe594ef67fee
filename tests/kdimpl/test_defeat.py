"""DeFeat: parity with ggjy/DeFeat.pytorch@c46a793, mask rasterisation, levels and input checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.adapters.defeat import DeFeatAdapter  # noqa: E402
from kdimpl.checkpoints import defeat_state_dict, multilevel_state_dict  # noqa: E402
from kdimpl.losses.defeat import (  # noqa: E402
    DeFeatLoss,
    DeFeatRoIKDLoss,
    defeat_box_levels,
    defeat_gt_mask,
    defeat_loss,
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


def _masks(gt_boxes, image_size, feature_sizes):
    levels = len(feature_sizes)
    return [defeat_gt_mask(gt_boxes, image_size, size, level=i, num_levels=levels) for i, size in enumerate(feature_sizes)]


@pytest.mark.parity
def test_masks_match_official_on_every_level():
    f = torch.load(FIXTURES / "defeat_masks.pt")
    assert list(f["strides"]) == list(STRIDES)  # derived from image_size and the map sizes below
    masks = _masks(f["gt_boxes"], f["image_size"], f["feature_sizes"])
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
    # The official total is the mean over the levels (P6 here is 2 x 3 cells of a 128 x 160 input: stride 64).
    shared = dict(gt_boxes=f["gt_boxes"], image_size=f["image_size"], level_weights=[1 / 5] * 5)
    fg = multilevel_loss(defeat_loss, adapted, teachers, bg_weight=0.0, **shared)
    bg = multilevel_loss(defeat_loss, adapted, teachers, fg_weight=0.0, **shared)
    torch.testing.assert_close(fg.double(), f[f"loss_fg_{suffix}"], rtol=rtol, atol=0)
    torch.testing.assert_close(bg.double(), f[f"loss_bg_{suffix}"], rtol=rtol, atol=0)
    total = MultiLevelLoss(DeFeatLoss(), level_weights=[1 / 5] * 5)(
        adapted, teachers, gt_boxes=f["gt_boxes"], image_size=f["image_size"]
    )
    torch.testing.assert_close(total, fg + bg, rtol=rtol, atol=0)
    total.backward()
    for mine, official in zip(students, f["grads_float64"]):
        torch.testing.assert_close(mine.grad.float(), official, rtol=1e-5, atol=1e-8)


@pytest.mark.parity
def test_roi_kd_matches_official_kl_decouple():
    roi = torch.load(FIXTURES / "defeat_loss.pt")["roi"]
    student = roi["student_logits"].double().requires_grad_(True)
    kwargs = dict(temperature=roi["temperature"], fg_weight=roi["fg_weight"], bg_weight=roi["bg_weight"])
    # the official code (mmdetection) puts background last
    loss = defeat_roi_kd_loss(student, roi["teacher_logits"].double(), roi["labels"], background_index=-1, **kwargs)
    loss.backward()
    torch.testing.assert_close(loss, roi["loss_fg"] + roi["loss_bg"], rtol=1e-10, atol=0)
    torch.testing.assert_close(student.grad, roi["grad"], rtol=1e-10, atol=1e-14)


def test_roi_kd_background_index_follows_torchvision_by_default():
    # torchvision layout: column 0 is background, labels 0 are background RoIs
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0])
    kwargs = dict(fg_weight=3.0, bg_weight=1.0)
    torchvision_style = defeat_roi_kd_loss(student, teacher, labels, **kwargs)
    # the same RoIs in mmdetection's layout (background last) with background_index=-1
    mmdet_labels = torch.where(labels == 0, 4, labels - 1)
    mmdet_style = defeat_roi_kd_loss(student.roll(-1, 1), teacher.roll(-1, 1), mmdet_labels, background_index=-1,
                                     **kwargs)
    torch.testing.assert_close(torchvision_style, mmdet_style)
    # Reading torchvision labels with mmdetection's convention swaps the sets' weights and normalisers.
    assert not torch.allclose(defeat_roi_kd_loss(student, teacher, labels, background_index=-1, **kwargs),
                              torchvision_style)


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
    mine = _masks([b.to(device) for b in gt], (img_h, img_w), sizes)
    for level, naive in zip(mine, _naive_masks(gt, sizes, STRIDES)):
        assert level.device.type == device.type
        torch.testing.assert_close(level.cpu(), naive)


def test_retinanet_levels_get_their_strides():
    # P3-P7 of a 800 x 1333 input padded to 800 x 1344: strides 8 to 128, some maps not a whole number of strides
    image_size = (800, 1344)
    strides = (8, 16, 32, 64, 128)
    sizes = [(math.ceil(800 / s), math.ceil(1344 / s)) for s in strides]
    g = torch.Generator().manual_seed(1)
    u = torch.rand(2, 30, 4, generator=g)
    wh = 16 + u[..., 2:] ** 2 * torch.tensor([600.0, 700.0])
    x1y1 = u[..., :2] * (torch.tensor([1344.0, 800.0]) - wh)
    boxes = list(torch.cat([x1y1, x1y1 + wh], dim=-1))
    boxes[0] = torch.cat([boxes[0], torch.tensor([[0.0, 0.0, 1344.0, 800.0]])])  # level 4
    mine = _masks(boxes, image_size, sizes)
    naive = _naive_masks(boxes, sizes, strides)
    assert all(m.any() for m in naive)
    for level, (a, b) in enumerate(zip(mine, naive)):
        assert torch.equal(a, b), f"level {level} differs"


def test_single_level_default_puts_every_box_on_the_map():
    boxes = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 299.0, 299.0]])]
    mask = defeat_gt_mask(boxes, (320, 320), (40, 40))  # stride 8, level 0 of 1
    assert mask.sum() == 37 * 37  # the large box's cells include the small one's


def test_unit_error_gives_half_the_weights():
    # fg and bg terms each average the squared error over their elements and halve it
    student = torch.ones(2, 3, 16, 20)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.zeros(0, 4)]
    loss = defeat_loss(student, torch.zeros_like(student), boxes, (64, 80), fg_weight=3.0, bg_weight=12.0)
    torch.testing.assert_close(loss, torch.tensor((3.0 + 12.0) / 2))


def test_no_boxes_leaves_only_the_background_term():
    student, teacher = torch.randn(2, 3, 8, 10), torch.randn(2, 3, 8, 10)
    boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    loss = defeat_loss(student, teacher, boxes, (64, 80), fg_weight=5.0, bg_weight=2.0)
    torch.testing.assert_close(loss, 2.0 * (student - teacher).pow(2).mean() / 2)


def test_boxes_only_reach_their_level():
    small = torch.tensor([[10.0, 10.0, 40.0, 40.0]])  # scale 31 -> level 0
    large = torch.tensor([[0.0, 0.0, 299.0, 299.0]])  # scale 300 -> level 2
    masks = _masks([torch.cat([small, large])], (320, 320), [(80, 80), (40, 40), (20, 20)])
    assert masks[0].sum() == (10 - 2) * (10 - 2)
    assert masks[1].sum() == 0
    assert masks[2].sum() == (18 - 0) * (18 - 0)


def test_multilevel_loss_over_three_levels_with_boxes_given_once():
    g = torch.Generator().manual_seed(2)
    sizes = [(40, 48), (20, 24), (10, 12)]
    students = [torch.randn(2, 3, h, w, generator=g, requires_grad=True) for h, w in sizes]
    teachers = [torch.randn(2, 3, h, w, generator=g) for h, w in sizes]
    boxes = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 150.0, 120.0]]), torch.tensor([[60.0, 5.0, 190.0, 159.0]])]
    total = MultiLevelLoss(DeFeatLoss(fg_weight=2.0), loss_weight=0.5)(students, teachers, gt_boxes=boxes,
                                                                       image_size=(160, 192))
    expected = sum(
        defeat_loss(s, t, boxes, (160, 192), level=i, num_levels=3, fg_weight=2.0)
        for i, (s, t) in enumerate(zip(students, teachers))
    )
    torch.testing.assert_close(total, 0.5 * expected)
    # each level sees only its own boxes: the large ones are not on level 0
    assert defeat_gt_mask(boxes, (160, 192), sizes[0], level=0, num_levels=3).sum() < \
        defeat_gt_mask(boxes, (160, 192), sizes[0]).sum()


def test_roi_kd_empty_sets_contribute_zero():
    logits = torch.randn(4, 3)
    only_bg = torch.zeros(4, dtype=torch.long)
    loss = defeat_roi_kd_loss(logits, torch.randn(4, 3), only_bg, fg_weight=100.0, bg_weight=0.0)
    assert loss == 0


# ---------------------------------------------------------------- input checks
def _pair(n=2):
    return torch.randn(n, 3, 8, 10, requires_grad=True), torch.randn(n, 3, 8, 10)


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([torch.tensor([[0.0, 0.0, float("nan"), 10.0]]), torch.zeros(0, 4)], "non-finite"),
        ([torch.tensor([[0.0, 0.0, float("inf"), 10.0]]), torch.zeros(0, 4)], "non-finite"),
        ([torch.tensor([[10.0, 0.0, 5.0, 10.0]]), torch.zeros(0, 4)], "x2 < x1"),
        ([torch.tensor([[0.0, 0.0, 5.0, 10.0]])], "batch size 2"),
    ],
)
def test_bad_boxes_are_rejected(boxes, message):
    s, t = _pair()
    with pytest.raises(ValueError, match=message):
        defeat_loss(s, t, boxes, (64, 80))


@pytest.mark.parametrize("image_size", [(0, 0), (float("nan"), 80), (-64, 80), (80, 64 * 3)])
def test_bad_image_size_is_rejected(image_size):
    s, t = _pair()
    with pytest.raises(ValueError, match="image_size"):
        defeat_loss(s, t, [torch.zeros(0, 4)] * 2, image_size)


def test_level_out_of_range_is_rejected():
    s, t = _pair()
    with pytest.raises(ValueError, match="level"):
        defeat_loss(s, t, [torch.zeros(0, 4)] * 2, (64, 80), level=3, num_levels=3)


def test_integer_inputs_raise_type_error():
    with pytest.raises(TypeError, match="floating"):
        defeat_loss(torch.ones(2, 3, 8, 10, dtype=torch.long), torch.ones(2, 3, 8, 10, dtype=torch.long),
                    [torch.zeros(0, 4)] * 2, (64, 80))
    with pytest.raises(TypeError, match="floating"):
        defeat_roi_kd_loss(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long),
                           torch.zeros(4, dtype=torch.long))


def test_roi_kd_labels_are_range_checked():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        defeat_roi_kd_loss(s, t, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels"):
        defeat_roi_kd_loss(s, t, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(TypeError, match="labels"):
        defeat_roi_kd_loss(s, t, torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="labels"):
        defeat_roi_kd_loss(s, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="background_index"):
        defeat_roi_kd_loss(s, t, torch.tensor([0, 1, 2, 1]), background_index=3)


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_nan_in_gives_nan_out(where):
    s, t = _pair()
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.zeros(0, 4)]
    (s if where == "student" else t).data[1, 0, 5, 5] = float("nan")
    assert torch.isnan(defeat_loss(s, t, boxes, (64, 80)))
    logits_s, logits_t = torch.randn(4, 3), torch.randn(4, 3)
    (logits_s if where == "student" else logits_t)[2, 1] = float("nan")
    assert torch.isnan(defeat_roi_kd_loss(logits_s, logits_t, torch.tensor([0, 1, 2, 0])))


def test_empty_batch_gives_a_connected_zero():
    s, t = torch.randn(0, 3, 8, 10, requires_grad=True), torch.randn(0, 3, 8, 10)
    loss = defeat_loss(s, t, [], (64, 80))
    loss.backward()
    assert loss == 0 and s.grad is not None and s.grad.shape == s.shape
    logits = torch.randn(0, 4, requires_grad=True)
    loss = DeFeatRoIKDLoss()(logits, torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss == 0 and logits.grad is not None


@pytest.mark.parity
def test_twins_owning_the_level_adapters_match_official():
    f = torch.load(FIXTURES / "defeat_loss.pt")
    criterion = MultiLevelLoss([DeFeatLoss(student_channels=4) for _ in range(5)], level_weights=[1 / 5] * 5)
    owned = {id(p) for p in criterion.parameters()}
    for twin in criterion.losses:
        assert {id(p) for p in twin.adapter_student.parameters()} <= owned
    checkpoint = {"neck_adapt." + k: v for k, v in f["adapter_state"].items()}  # the official detector's keys
    prefixes = [f"neck_adapt.{level}." for level in range(5)]
    criterion.load_state_dict(multilevel_state_dict(defeat_state_dict, checkpoint, prefixes))
    criterion.double()
    students = [s.double().requires_grad_(True) for s in f["students"]]
    total = criterion(students, [t.double() for t in f["teachers"]], gt_boxes=f["gt_boxes"], image_size=f["image_size"])
    torch.testing.assert_close(total, f["loss_fg_float64"] + f["loss_bg_float64"], rtol=1e-10, atol=0)
    total.backward()
    for mine, official in zip(students, f["grads_float64"]):
        torch.testing.assert_close(mine.grad.float(), official, rtol=1e-5, atol=1e-8)


def test_image_size_tensor_per_image_equals_the_tuple():
    s, t = torch.randn(2, 3, 16, 20), torch.randn(2, 3, 16, 20)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.tensor([[0.0, 20.0, 70.0, 60.0]])]
    expected = defeat_loss(s, t, boxes, (64, 80))
    torch.testing.assert_close(defeat_loss(s, t, boxes, torch.tensor([[64, 80], [64, 80]])), expected)
    torch.testing.assert_close(defeat_loss(s, t, torch.stack([boxes[0], boxes[1]]), (64, 80)), expected)
