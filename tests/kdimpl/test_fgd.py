"""FGD: official-code parity (yzd-v/FGD@c03a6cf), the pre-c22b81d mask-axis bug, analytic cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl.adapters.fgd import FGDGlobalContext
from kdimpl.losses.fgd import FGDLoss, fgd_cell_bounds, fgd_loss, fgd_masks, fgd_multilevel_masks

FIXTURE = Path(__file__).parent / "fixtures" / "fgd" / "official_feature_loss.pt"
TERMS = {"alpha": "term_alpha", "beta": "term_beta", "gamma": "term_gamma", "lambda_": "term_lambda"}
DEFAULTS = {"alpha": 1e-3, "beta": 5e-4, "gamma": 1e-3, "lambda_": 5e-6}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE)


def official_blocks(state_dict, channels):
    """Load the official ``FeatureLoss`` GcBlock weights (``conv_mask_s``, ``channel_add_conv_s``...) into ours."""
    blocks = []
    for side in ("s", "t"):
        prefixes = {f"conv_mask_{side}.": "conv_mask.", f"channel_add_conv_{side}.": "channel_add."}
        block = FGDGlobalContext(channels)
        block.load_state_dict(
            {
                new + key[len(old) :]: value
                for key, value in state_dict.items()
                for old, new in prefixes.items()
                if key.startswith(old)
            }
        )
        blocks.append(block)
    return blocks


@pytest.mark.parity
@pytest.mark.parametrize("case", ["fixed", "nobox"])
def test_parity_with_official_feature_loss(fixture, case):
    inputs, reference = fixture["inputs"], fixture[case]
    boxes = reference.get("gt_boxes", inputs["gt_boxes"])
    student, teacher, image_size = inputs["student"], inputs["teacher"], inputs["image_size"]
    fg, bg = fgd_masks(boxes, image_size, student.shape[-2:])
    torch.testing.assert_close(fg, reference["fg_mask"], rtol=0, atol=0)
    torch.testing.assert_close(bg, reference["bg_mask"], rtol=1e-6, atol=0)

    global_student, global_teacher = official_blocks(reference["state_dict"], student.shape[1])
    s = student.clone().requires_grad_(True)
    loss = fgd_loss(s, teacher, boxes, image_size, global_student=global_student, global_teacher=global_teacher)
    loss.backward()
    torch.testing.assert_close(loss, reference["total"], rtol=1e-5, atol=0)
    torch.testing.assert_close(s.grad, reference["student_grad"], rtol=1e-5, atol=1e-7)
    # The trainable GcBlocks get the same gradients as the official ones (teacher block included).
    for side, block in (("s", global_student), ("t", global_teacher)):
        for name, param in block.named_parameters():
            official = name.replace("conv_mask.", f"conv_mask_{side}.").replace(
                "channel_add.", f"channel_add_conv_{side}."
            )
            torch.testing.assert_close(param.grad, reference["param_grads"][official], rtol=1e-4, atol=1e-9)

    for weight, key in TERMS.items():  # each term alone, with the others' weights set to zero
        only = {k: (v if k == weight else 0.0) for k, v in DEFAULTS.items()}
        with torch.no_grad():
            term = fgd_loss(
                student,
                teacher,
                boxes,
                image_size,
                global_student=global_student,
                global_teacher=global_teacher,
                **only,
            )
        torch.testing.assert_close(term, reference[key], rtol=1e-5, atol=1e-9)


@pytest.mark.parity
def test_mask_axis_bug_before_c22b81d_is_not_reproduced(fixture):
    """Before yzd-v/FGD commit c22b81d the fg mask was written as ``mask[x-range, y-range]``.

    On a square map and square image that equals our mask for boxes with x and y swapped; the
    fixed release (and this implementation) use ``mask[y-range, x-range]``.
    """
    case = fixture["prefix"]
    size = case["student"].shape[-2:]
    fg, _ = fgd_masks(case["gt_boxes"], case["image_size"], size)
    torch.testing.assert_close(fg, case["fixed"]["fg_mask"], rtol=0, atol=0)
    assert not torch.equal(fg, case["buggy"]["fg_mask"])
    swapped = [boxes[:, [1, 0, 3, 2]] for boxes in case["gt_boxes"]]
    fg_swapped, _ = fgd_masks(swapped, case["image_size"], size)
    torch.testing.assert_close(fg_swapped, case["buggy"]["fg_mask"], rtol=0, atol=0)

    blocks = official_blocks(case["fixed"]["state_dict"], case["student"].shape[1])
    kwargs = {"global_student": blocks[0], "global_teacher": blocks[1]}
    loss = fgd_loss(case["student"], case["teacher"], case["gt_boxes"], case["image_size"], **kwargs)
    torch.testing.assert_close(loss, case["fixed"]["total"], rtol=1e-5, atol=0)
    buggy = fgd_loss(case["student"], case["teacher"], swapped, case["image_size"], **kwargs)
    torch.testing.assert_close(buggy, case["buggy"]["total"], rtol=1e-5, atol=0)


def test_masks_by_hand():
    # 40x60 image on a 4x6 map: one cell is 10x10 pixels.
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 10.0], [10.0, 0.0, 15.0, 5.0]])]
    fg, bg = fgd_masks(boxes, (40, 60), (4, 6))
    expected = torch.zeros(4, 6)
    expected[0:2, 0:3] = 1 / 6  # floor(0)..ceil(2) x floor(0)..ceil(1): 3 columns, 2 rows
    expected[0:2, 1:3] = 1 / 4  # the smaller overlapping box wins: columns 1..2 (ceil 1.5), rows 0..1 (ceil 0.5)
    torch.testing.assert_close(fg[0], expected)
    background = (expected == 0).float()
    torch.testing.assert_close(bg[0], background / background.sum())


def test_border_box_counts_the_off_map_cell_like_the_official_code():
    # x2 = image width lands on W exactly; ceil keeps W, so the area counts W - x0 + 1 columns.
    bounds = fgd_cell_bounds(torch.tensor([[[30.0, 0.0, 60.0, 10.0]]]), (40, 60), (4, 6))
    assert bounds.tolist() == [[[3.0, 0.0, 6.0, 1.0]]]
    fg, _ = fgd_masks([torch.tensor([[30.0, 0.0, 60.0, 10.0]])], (40, 60), (4, 6))
    assert fg[0, 0:2, 3:6].eq(1 / 8).all() and fg.count_nonzero() == 6


def test_image_size_is_divided_before_scaling():
    # 1333-pixel-wide image on a 336-wide map: x / 1333 * 336 is exactly 336, x * (336 / 1333) is not.
    bounds = fgd_cell_bounds(torch.tensor([[[0.0, 0.0, 1333.0, 800.0]]]), (800, 1333), (200, 336))
    assert bounds[0, 0, 2] == 336 and bounds[0, 0, 3] == 200


def naive_fg(gt_boxes, image_hw, feature_hw):
    """The official per-box loop, restated: floor/ceil of x / img_w * W, inclusive slices, max of 1/rows/cols."""
    (img_h, img_w), (h, w) = image_hw, feature_hw
    out = torch.zeros(len(gt_boxes), h, w)
    for i, boxes in enumerate(gt_boxes):
        for x1, y1, x2, y2 in boxes.tolist():
            c0, r0 = math.floor(x1 / img_w * w), math.floor(y1 / img_h * h)
            c1, r1 = math.ceil(x2 / img_w * w), math.ceil(y2 / img_h * h)
            region = out[i, r0 : r1 + 1, c0 : c1 + 1]
            weight = torch.tensor(1.0) / (r1 - r0 + 1) / (c1 - c0 + 1)  # float32, in the official order
            region.copy_(region.clamp(min=weight))
    return out


@pytest.mark.parametrize("num_boxes", [1, 11, 12, 40])
def test_many_overlapping_boxes_match_the_per_box_loop(num_boxes):
    # More boxes than one matmul chunk (11), nested and duplicated boxes (ties), per-image counts.
    generator = torch.Generator().manual_seed(num_boxes)
    gt_boxes = []
    for count in (num_boxes, num_boxes // 2):
        xy = torch.rand(count, 2, generator=generator) * torch.tensor([300.0, 200.0])
        wh = torch.rand(count, 2, generator=generator) * torch.tensor([150.0, 100.0])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([320.0, 210.0]))], dim=1)
        gt_boxes.append(torch.cat([boxes, boxes[:2]]) if count >= 2 else boxes)
    fg, _ = fgd_masks(gt_boxes, (210, 320), (13, 21))
    torch.testing.assert_close(fg, naive_fg(gt_boxes, (210, 320), (13, 21)), rtol=0, atol=0)
    compiled = torch.compile(lambda b: fgd_masks(b, (210, 320), (13, 21))[0], backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(gt_boxes), fg, rtol=0, atol=0)


def test_all_foreground_leaves_background_empty():
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 60.0, 40.0]])], (40, 60), (4, 6))
    assert fg.gt(0).all() and bg.eq(0).all()


def test_analytic_loss_for_constant_features():
    # Teacher 0, student c: attentions are uniform (A^S = A^C = 1), so per image
    # L = alpha * C c^2 * sum(fg) + beta * C c^2 * sum(bg) and the attention term is 0.
    c, channels = 0.5, 3
    student = torch.full((2, channels, 4, 6), c)
    teacher = torch.zeros_like(student)
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 20.0, 50.0, 30.0]]), torch.zeros(0, 4)]
    per_image = fgd_loss(student, teacher, boxes, (40, 60), alpha=2.0, beta=3.0, gamma=7.0, reduction="none")
    # Image 0: two disjoint boxes inside the map, each fg mask sums to 1. Image 1: only background.
    expected = torch.tensor([2.0 * channels * c**2 * 2 + 3.0 * channels * c**2, 3.0 * channels * c**2])
    torch.testing.assert_close(per_image, expected)
    torch.testing.assert_close(
        fgd_loss(student, teacher, boxes, (40, 60), alpha=2.0, beta=3.0, gamma=7.0), expected.mean()
    )


def test_global_term_with_identity_blocks_is_the_squared_error():
    # The official init zeroes the last conv, so at initialisation R(F) = F.
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, 7, generator=generator), torch.randn(2, 4, 5, 7, generator=generator)
    boxes = [torch.zeros(0, 4)] * 2
    only_global = {"alpha": 0.0, "beta": 0.0, "gamma": 0.0, "lambda_": 1.0}
    loss = fgd_loss(
        student,
        teacher,
        boxes,
        (40, 56),
        global_student=FGDGlobalContext(4),
        global_teacher=FGDGlobalContext(4),
        **only_global,
    )
    torch.testing.assert_close(loss, (student - teacher).square().sum() / 2)
    assert fgd_loss(student, teacher, boxes, (40, 56), **only_global) == 0  # no blocks: no global term


def test_teacher_block_trains_but_teacher_features_get_no_gradient():
    student = torch.randn(2, 4, 5, 7, requires_grad=True)
    teacher = torch.randn(2, 4, 5, 7, requires_grad=True)
    global_student, global_teacher = FGDGlobalContext(4), FGDGlobalContext(4)
    loss = FGDLoss(lambda_=1.0)(
        student,
        teacher,
        [torch.zeros(0, 4)] * 2,
        (40, 56),
        global_student=global_student,
        global_teacher=global_teacher,
    )
    loss.backward()
    assert teacher.grad is None
    assert global_teacher.channel_add[-1].weight.grad.abs().sum() > 0
    assert global_student.channel_add[-1].weight.grad.abs().sum() > 0


def test_errors_name_the_argument():
    s, t = torch.randn(2, 4, 5, 7), torch.randn(2, 4, 5, 7)
    boxes = [torch.zeros(0, 4)] * 2
    with pytest.raises(ValueError, match="global_teacher"):
        fgd_loss(s, t, boxes, (40, 56), global_student=FGDGlobalContext(4))
    with pytest.raises(ValueError, match="image_size"):
        fgd_loss(s, t, boxes, (40, 56, 3))
    with pytest.raises(ValueError, match="gt_boxes"):
        fgd_loss(s, t, [torch.zeros(0, 4)], (40, 56))
    with pytest.raises(ValueError, match="temperature"):
        FGDLoss(temperature=0.0)


def test_multilevel_masks_equal_the_per_level_masks_and_feed_the_loss():
    g = torch.Generator().manual_seed(5)
    sizes = [(20, 34), (10, 17), (5, 9), (3, 5), (2, 3)]  # strides 4..64 of a 80x133 image
    xy = torch.rand(2, 30, 2, generator=g) * torch.tensor([133.0, 80.0])
    wh = 2 + torch.rand(2, 30, 2, generator=g) ** 2 * torch.tensor([80.0, 50.0])
    boxes = [torch.cat([xy[0], xy[0] + wh[0]], 1), torch.cat([xy[1, :4], xy[1, :4] + wh[1, :4]], 1)]
    per_level = [fgd_masks(boxes, (80, 133), size) for size in sizes]
    for (fg, bg), (fg_one, bg_one) in zip(fgd_multilevel_masks(boxes, (80, 133), sizes), per_level):
        assert torch.equal(fg, fg_one) and torch.equal(bg, bg_one)
    s, t = torch.randn(2, 8, 10, 17, generator=g), torch.randn(2, 8, 10, 17, generator=g)
    torch.testing.assert_close(
        fgd_loss(s, t, None, None, masks=per_level[1]), fgd_loss(s, t, boxes, (80, 133)), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match=r"masks must be \(fg, bg\) of shape \(2, 10, 17\)"):
        fgd_loss(s, t, None, None, masks=per_level[0])
    with pytest.raises(TypeError, match="gt_boxes must be a list of"):
        fgd_loss(s, t, None, None)
