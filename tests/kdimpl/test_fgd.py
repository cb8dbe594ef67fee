"""FGD: official-code parity (yzd-v/FGD@c03a6cf), the pre-c22b81d mask-axis bug, analytic cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl.adapters.fgd import FGDGlobalContext
from kdimpl import MultiLevelLoss, multilevel_loss
from kdimpl.checkpoints import fgd_state_dict
from kdimpl.losses.fgd import FGDLoss, fgd_cell_bounds, fgd_loss, fgd_masks

FIXTURE = Path(__file__).parent / "fixtures" / "fgd" / "official_feature_loss.pt"
# our weight names and the official terms they scale: alpha, beta, gamma, lambda
TERMS = {
    "fg_weight": "term_alpha",
    "bg_weight": "term_beta",
    "attention_weight": "term_gamma",
    "global_weight": "term_lambda",
}
DEFAULTS = {"fg_weight": 1e-3, "bg_weight": 5e-4, "attention_weight": 1e-3, "global_weight": 5e-6}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE)


def official_blocks(state_dict, channels):
    """The official ``FeatureLoss`` GcBlocks (``conv_mask_s``, ``channel_add_conv_s``...), loaded through
    :func:`kdimpl.checkpoints.fgd_state_dict` as a user loads them from a checkpoint."""
    twin = FGDLoss(channels=channels)
    twin.load_state_dict(fgd_state_dict({"distill_losses.loss_fgd_fpn_0." + k: v for k, v in state_dict.items()},
                                        prefix="distill_losses.loss_fgd_fpn_0."))
    return twin.global_student, twin.global_teacher


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
    # Many overlapping, nested and duplicated boxes (ties), a different count per image.
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
    # L = fg_weight * C c^2 * sum(fg) + bg_weight * C c^2 * sum(bg) and the attention term is 0.
    c, channels = 0.5, 3
    student = torch.full((2, channels, 4, 6), c)
    teacher = torch.zeros_like(student)
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 20.0, 50.0, 30.0]]), torch.zeros(0, 4)]
    per_image = fgd_loss(student, teacher, boxes, (40, 60), fg_weight=2.0, bg_weight=3.0, attention_weight=7.0, reduction="none")
    # Image 0: two disjoint boxes inside the map, each fg mask sums to 1. Image 1: only background.
    expected = torch.tensor([2.0 * channels * c**2 * 2 + 3.0 * channels * c**2, 3.0 * channels * c**2])
    torch.testing.assert_close(per_image, expected)
    torch.testing.assert_close(
        fgd_loss(student, teacher, boxes, (40, 60), fg_weight=2.0, bg_weight=3.0, attention_weight=7.0), expected.mean()
    )


def test_global_term_with_identity_blocks_is_the_squared_error():
    # The official init zeroes the last conv, so at initialisation R(F) = F.
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, 7, generator=generator), torch.randn(2, 4, 5, 7, generator=generator)
    boxes = [torch.zeros(0, 4)] * 2
    only_global = {"fg_weight": 0.0, "bg_weight": 0.0, "attention_weight": 0.0, "global_weight": 1.0}
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
    loss = FGDLoss(global_weight=1.0)(
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


def test_module_owns_its_global_blocks_per_level_and_levels_take_boxes_once():
    g = torch.Generator().manual_seed(5)
    sizes = [(20, 34), (10, 17), (5, 9)]  # strides 4, 8, 16 of an 80x133 input
    students = [torch.randn(2, 8, h, w, generator=g, requires_grad=True) for h, w in sizes]
    teachers = [0.5 * s.detach() + torch.randn(s.shape, generator=g) for s in students]
    boxes = [torch.tensor([[3.0, 5.0, 60.0, 41.0], [70.0, 10.0, 130.0, 79.0]]), torch.tensor([[0.0, 0.0, 20.0, 12.0]])]
    criterion = MultiLevelLoss([FGDLoss(channels=8, global_weight=1e-2) for _ in sizes])
    with torch.no_grad():  # non-identity blocks, different on every level
        for p in criterion.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    per_block = len(list(FGDGlobalContext(8).parameters()))
    assert len(list(criterion.parameters())) == 2 * per_block * len(sizes)
    for level in criterion.losses:
        assert isinstance(level.global_student, FGDGlobalContext) and isinstance(level.global_teacher, FGDGlobalContext)
    loss = criterion(students, teachers, gt_boxes=boxes, image_size=(80, 133))
    expected = sum(
        fgd_loss(s, t, boxes, (80, 133), global_student=m.global_student, global_teacher=m.global_teacher,
                 global_weight=1e-2)
        for s, t, m in zip(students, teachers, criterion.losses)
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for name, p in criterion.named_parameters():
        if name.endswith("conv_mask.bias"):
            # a constant added to every position's logit leaves the softmax unchanged: zero gradient up to rounding
            assert p.grad is not None and p.grad.abs().max() < 1e-5, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # without blocks the function runs over the levels as well
    plain = multilevel_loss(fgd_loss, students, teachers, gt_boxes=boxes, image_size=(80, 133))
    assert plain.dim() == 0 and torch.isfinite(plain)


def test_blocks_passed_to_forward_override_the_owned_ones():
    s, t = torch.randn(2, 4, 5, 7), torch.randn(2, 4, 5, 7)
    boxes = [torch.zeros(0, 4)] * 2
    only_global = {"fg_weight": 0.0, "bg_weight": 0.0, "attention_weight": 0.0, "global_weight": 1.0}
    owned = FGDLoss(channels=4, **only_global)
    torch.testing.assert_close(owned(s, t, boxes, (40, 56)), (s - t).square().sum() / 2)  # identity at init
    assert FGDLoss(**only_global)(s, t, boxes, (40, 56)) == 0  # no blocks: no global term
    zero = torch.nn.Identity()
    other = FGDLoss(channels=4, **only_global)(s, t, boxes, (40, 56), global_student=zero, global_teacher=lambda x: 0 * x)
    torch.testing.assert_close(other, s.square().sum() / 2)


def _pair(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 5, 7, generator=g), torch.randn(batch, 4, 5, 7, generator=g)


@pytest.mark.parametrize(
    "boxes,image_size,error,match",
    [
        ([torch.tensor([[1.0, 2.0, float("nan"), 9.0]]), torch.zeros(0, 4)], (40, 56), ValueError, "non-finite"),
        ([torch.tensor([[1.0, 2.0, float("inf"), 9.0]]), torch.zeros(0, 4)], (40, 56), ValueError, "non-finite"),
        ([torch.tensor([[30.0, 2.0, 10.0, 9.0]]), torch.zeros(0, 4)], (40, 56), ValueError, "x2 < x1"),
        ([torch.tensor([[1.0, 20.0, 10.0, 9.0]]), torch.zeros(0, 4)], (40, 56), ValueError, "y2 < y1"),
        ([torch.zeros(0, 4)], (40, 56), ValueError, "batch size 2"),
        ([torch.zeros(0, 4)] * 3, (40, 56), ValueError, "batch size 2"),
        (None, (40, 56), TypeError, "gt_boxes"),
        ([torch.zeros(0, 4)] * 2, (0, 56), ValueError, "image_size"),
        ([torch.zeros(0, 4)] * 2, (40, float("nan")), ValueError, "image_size"),
        ([torch.zeros(0, 4)] * 2, (-40, 56), ValueError, "image_size"),
        ([torch.zeros(0, 4)] * 2, (56, 40), ValueError, r"\(width, height\)"),
        ([torch.zeros(0, 4)] * 2, (40, 56, 3), ValueError, "image_size"),
    ],
)
def test_bad_boxes_and_image_sizes_are_refused(boxes, image_size, error, match):
    s, t = _pair()
    with pytest.raises(error, match=match):
        fgd_loss(s, t, boxes, image_size)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_integer_features_are_refused(side):
    s, t = _pair()
    args = {"student": s, "teacher": t}
    args[side] = (args[side] * 10).round().long()
    with pytest.raises(TypeError, match=side):
        fgd_loss(args["student"], args["teacher"], [torch.zeros(0, 4)] * 2, (40, 56))


@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize("with_blocks", [False, True])
def test_one_nan_element_gives_a_nan_loss(side, with_blocks):
    s, t = _pair()
    (s if side == "student" else t)[1, 2, 3, 4] = float("nan")
    blocks = {"global_student": FGDGlobalContext(4), "global_teacher": FGDGlobalContext(4)} if with_blocks else {}
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.zeros(0, 4)]
    assert torch.isnan(fgd_loss(s, t, boxes, (40, 56), **blocks))
    assert torch.isnan(fgd_loss(s, t, boxes, (40, 56), reduction="none")[1])


def test_empty_batch_gives_a_zero_in_the_graph():
    student = torch.zeros(0, 4, 5, 7, requires_grad=True)
    loss = FGDLoss(channels=4)(student, torch.zeros(0, 4, 5, 7), [], (40, 56))
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert student.grad is not None and not student.grad.any()
    assert fgd_loss(student, torch.zeros(0, 4, 5, 7), torch.zeros(0, 3, 4), torch.zeros(0, 2), reduction="none").shape == (0,)


def test_padded_boxes_compile_to_one_graph_for_any_box_count():
    # A fixed capacity of 8 boxes per image and a validity mask: no recompilation when the count changes.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    masks_of = torch.compile(lambda b, v: fgd_masks(b, (80, 112), (10, 14), v), backend=backend, dynamic=False)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 30.0, 30.0], [50.0, 40.0, 112.0, 80.0]])
    padded = torch.zeros(2, 8, 4)
    padded[:, :3] = boxes
    for count in (0, 1, 3):
        valid = torch.zeros(2, 8, dtype=torch.bool)
        valid[0, :count] = True
        fg, bg = masks_of(padded, valid)
        want_fg, want_bg = fgd_masks([boxes[:count], torch.zeros(0, 4)], (80, 112), (10, 14))
        assert torch.equal(fg, want_fg) and torch.equal(bg, want_bg)
    assert len(graphs) == 1
