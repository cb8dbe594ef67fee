"""DetKDS: every search-space primitive and the searched distillers against lliai/DetKDS@a7d2127."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (  # noqa: E402
    DetKDSLogitLoss,
    DetKDSLoss,
    MultiLevelLoss,
    detkds_logit_loss,
    detkds_loss,
    detkds_roi_align,
    multilevel_loss,
)
from kdimpl.losses.detkds import (  # noqa: E402
    DETKDS_PRESETS,
    DETKDS_SEARCH_SPACE,
    detkds_distance,
    detkds_transform,
)

from .test_drkd import _roi_align_reference  # noqa: E402  (torchvision's kernel as loops)

FIXTURES = Path(__file__).parent / "fixtures" / "detkds"
IMAGE = (40, 56)
# preset -> (official config, fixture tag, seed of the official call)
PRESET_CONFIGS = {
    "retinanet_r101_r50": ("retina_r101_distill_retina_r50_fpn_2x_coco", "retina_r101", 21),
    "retinanet_x101_r50": ("retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco", "retina_rx101_64x4d", 22),
    "fcos_r101_r50": ("fcos_r101_distill_fcos_r50_2x_coco", "fcos_r101", 23),
    "gfl_r101_r50": ("gfl_r101_distill_gfl_r50_fpn_2x_coco", "gfl_r101", 24),
    "reppoints_x101_r50": ("reppoints_rx101_64x4d_distill_reppoints_r50_fpn_2x_coco", None, None),
    "faster_rcnn_r101_r50": ("faster_rcnn_r101_distill_faster_rcnn_r50_fpn_2x_coco", "faster_rcnn_r101", 25),
}


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "official_detkds.pt", weights_only=True)


@pytest.fixture(scope="module")
def configs():
    return json.loads((FIXTURES / "official_configs.json").read_text())


def _transform_cases():
    for stage in ("attention", "locality", "normalization"):
        for name in DETKDS_SEARCH_SPACE[stage]:
            if name == "no":
                continue
            yield name, "4d"
            if stage == "normalization":
                yield name, "3d"
                yield name, "2d"


@pytest.mark.parity
@pytest.mark.parametrize("name, rank", list(_transform_cases()))
def test_transforms_match_official(official, name, rank):
    x = official[f"x{rank[0]}"]
    rng = torch.Generator().manual_seed(11) if name == "mask" else None
    torch.testing.assert_close(detkds_transform(x, name, rng=rng), official[f"t_{name}_{rank}"], rtol=1e-6, atol=1e-7)


@pytest.mark.parity
@pytest.mark.parametrize("name", DETKDS_SEARCH_SPACE["distance"])
def test_distances_match_official(official, name):
    s, t = official["x4"], official["y4"]
    if name == "kl":
        s, t = s.log_softmax(1), t.softmax(1)
    torch.testing.assert_close(detkds_distance(s, t, name), official[f"d_{name}"], rtol=1e-6, atol=1e-7)


@pytest.mark.parity
def test_golden_values_of_the_specification():
    torch.manual_seed(8)
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for third, expected in (("norm_C", 0.6287516355514526), ("norm_N", 0.8846526145935059)):
        value = detkds_loss(a, b, global_chain=("catt", "no", third, "l1"))
        assert math.isclose(float(value), expected, rel_tol=1e-6)


def _branch_inputs(official):
    return official["branch_student"].clone().requires_grad_(True), official["branch_teacher"], official["branch_boxes"]


@pytest.mark.parity
@pytest.mark.parametrize("preset", [p for p, (_, tag, _) in PRESET_CONFIGS.items() if tag is not None])
def test_presets_match_official_feature_loss(official, preset):
    _, tag, seed = PRESET_CONFIGS[preset]
    student, teacher, boxes = _branch_inputs(official)
    loss = DetKDSLoss.from_preset(preset, rng=torch.Generator().manual_seed(seed))
    value = loss(student, teacher, boxes, IMAGE)
    expected = sum(official[f"branch_{tag}_{part}"] for part in ("global", "fg", "bg", "instance") if f"branch_{tag}_{part}" in official)
    value.backward()
    torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(student.grad, official[f"branch_{tag}_grad"], rtol=1e-4, atol=1e-7)


@pytest.mark.parity
def test_branches_separately_match_official(official):
    student, teacher, boxes = _branch_inputs(official)
    preset = DETKDS_PRESETS["retinanet_r101_r50"]
    glob = detkds_loss(student, teacher, boxes, IMAGE, global_chain=preset["global_chain"], global_weight=6.0)
    torch.testing.assert_close(glob.detach(), official["branch_retina_r101_global"], rtol=1e-6, atol=1e-7)
    # reduction='none' lays out global, fg and bg elements in order: the fg and bg parts sum to their terms
    fbg = detkds_loss(student, teacher, boxes, IMAGE, global_chain=None, fbg_chain=preset["fbg_chain"], fbg_weight=2.0,
                      reduction="none")
    half = fbg.numel() // 2
    torch.testing.assert_close(fbg[:half].mean(), official["branch_retina_r101_fg"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(fbg[half:].mean(), official["branch_retina_r101_bg"], rtol=1e-5, atol=1e-8)


@pytest.mark.parity
def test_logit_branch_matches_official(official):
    logits = official["branch_logits_s"].clone().requires_grad_(True)
    value = DetKDSLogitLoss(normalization="softmax_C", distance="pear", loss_weight=0.1)(logits, official["branch_logits_t"])
    value.backward()
    torch.testing.assert_close(value.detach(), official["branch_faster_rcnn_r101_logits"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(logits.grad, official["branch_faster_rcnn_r101_logits_grad"], rtol=1e-4, atol=1e-9)


@pytest.mark.parity
@pytest.mark.parametrize("preset", list(PRESET_CONFIGS))
def test_presets_hold_the_official_searched_configs(configs, preset):
    config = configs[PRESET_CONFIGS[preset][0]]
    options = DETKDS_PRESETS[preset]
    for method in config["methods"]:  # every level has the same searched distiller
        for branch, enable, prefix, gamma in (("global", "gb_enable", "global", "gamma_global"),
                                               ("fbg", "fbg_enable", "fbg", "gamma_fbg"),
                                               ("instance", "ins_enable", "ins", "gamma_instances")):
            chain = options.get(f"{branch}_chain")
            if not method.get(enable, False):
                assert chain is None, (branch, chain)
                continue
            transforms = tuple(method.get(f"{prefix}_trans{k}", "no") for k in (1, 2, 3))
            # the fg/bg branch computes L1 whatever fbg_dis says
            distance = "l1" if branch == "fbg" else method.get(f"{prefix}_dis", "l2")
            assert tuple(chain) == (*transforms, distance)
            weight = method.get(gamma, method.get("gamma_ins", 1))
            assert options[f"{branch}_weight"] == weight
    assert len(config["methods"]) == (4 if preset == "faster_rcnn_r101_r50" else 5)


def test_roi_align_equals_the_torchvision_kernel_loop():
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 2, 9, 13, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[[0.0, 0.0, 13.0, 9.0], [2.3, 1.1, 7.9, 3.2], [-3.0, -2.5, 4.0, 11.0], [5.0, 5.0, 5.0, 5.0]]],
                         dtype=torch.float64)
    pooled = detkds_roi_align(feature, boxes, 3)
    for m in range(boxes.shape[1]):
        torch.testing.assert_close(pooled[0, m], _roi_align_reference(feature[0], boxes[0, m], 1.0, 1.0, k=3))


def test_shared_mask_makes_identical_inputs_zero():
    x = torch.randn(2, 4, 6, 8)
    chain = ("mask", "no", "norm_C", "l1")
    shared = detkds_loss(x, x, global_chain=chain, shared_mask=True, rng=torch.Generator().manual_seed(0))
    independent = detkds_loss(x, x, global_chain=chain, rng=torch.Generator().manual_seed(0))
    assert float(shared) == 0.0 and float(independent) > 0


def test_reductions_and_weights():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 8, 12, generator=g), torch.randn(2, 4, 8, 12, generator=g)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 16.0]]), torch.tensor([[8.0, 4.0, 40.0, 30.0], [1.0, 1.0, 3.0, 3.0]])]
    options = dict(global_chain=("satt", "local_s2", "norm_HW", "smooth_l1"), fbg_chain=("no", "scale", "no", "l2"),
                   instance_chain=("natt", "no", "norm_C", "l1"), global_weight=2.0, fbg_weight=3.0, instance_weight=0.5)
    none = detkds_loss(s, t, boxes, (32, 48), **options, reduction="none")
    total = detkds_loss(s, t, boxes, (32, 48), **options, reduction="sum")
    torch.testing.assert_close(none.sum(), total)
    # the instance mean runs over the three real boxes only (the padded one is excluded)
    only_instance = detkds_loss(s, t, boxes, (32, 48), global_chain=None, instance_chain=options["instance_chain"])
    summed = detkds_loss(s, t, boxes, (32, 48), global_chain=None, instance_chain=options["instance_chain"], reduction="sum")
    torch.testing.assert_close(only_instance, summed / (3 * 4 * 14 * 14))


def test_instance_branch_without_boxes_is_zero_not_nan():
    s = torch.randn(2, 4, 6, 8, requires_grad=True)
    loss = detkds_loss(s, torch.randn(2, 4, 6, 8), [torch.zeros(0, 4)] * 2, (24, 32), global_chain=None,
                       instance_chain=("catt", "scale_r1", "norm_C", "l1"))
    loss.backward()
    assert float(loss.detach()) == 0.0 and not s.grad.any()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(global_chain=("catt", "scale_r2", "norm_N")), ValueError, "global_chain must be"),
        (dict(global_chain=("catt", "scale_r2", "norm_N", "l3")), ValueError, "not a DetKDS distance"),
        (dict(global_chain=("norm_C", "scale_r2", "norm_N", "l1")), ValueError, "not a DetKDS attention"),
        (dict(global_chain=None), ValueError, "every branch is off"),
        (dict(fbg_chain=("no", "no", "no", "l1")), ValueError, "need gt_boxes and image_size"),
        (dict(global_weight=-1.0), ValueError, "global_weight"),
    ],
)
def test_bad_options_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        detkds_loss(torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), **kwargs)


def test_instance_chain_must_keep_a_map():
    with pytest.raises(ValueError, match="4-D map"):
        detkds_loss(torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), [torch.zeros(1, 4)] * 2, (24, 32),
                    global_chain=None, instance_chain=("no", "no", "channel", "l1"))


def test_box_inputs_are_checked():
    s, t = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    chain = dict(fbg_chain=("no", "no", "no", "l1"))
    with pytest.raises(ValueError, match="gt_boxes has 1 images"):
        detkds_loss(s, t, [torch.zeros(0, 4)], (24, 32), **chain)
    with pytest.raises(ValueError, match="non-finite"):
        detkds_loss(s, t, [torch.tensor([[0.0, 0.0, float("nan"), 4.0]]), torch.zeros(0, 4)], (24, 32), **chain)
    with pytest.raises(ValueError, match="x2 < x1"):
        detkds_loss(s, t, [torch.tensor([[5.0, 0.0, 1.0, 4.0]]), torch.zeros(0, 4)], (24, 32), **chain)
    with pytest.raises(ValueError, match="image_size"):
        detkds_loss(s, t, [torch.zeros(0, 4)] * 2, (0, 32), **chain)


def test_nan_and_integer_and_empty_batch():
    s, t = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    assert torch.isnan(detkds_loss(torch.full_like(s, float("nan")), t))
    with pytest.raises(TypeError, match="student"):
        detkds_loss(s.long(), t)
    empty = torch.randn(0, 4, 6, 8, requires_grad=True)
    loss = detkds_loss(empty, torch.randn(0, 4, 6, 8), [], (24, 32), fbg_chain=("no", "no", "norm_C", "l1"),
                       instance_chain=("catt", "scale_r1", "norm_C", "l1"))
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad is not None


def test_levels_in_one_line_and_per_level_adapters():
    students = [torch.randn(2, 3, 16 // 2**i, 24 // 2**i) for i in range(3)]
    teachers = [torch.randn(2, 4, *s.shape[2:]) for s in students]
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[0.0, 0.0, 64.0, 96.0]])]
    criterion = MultiLevelLoss([DetKDSLoss.from_preset("retinanet_r101_r50", student_channels=3, teacher_channels=4)
                                for _ in range(3)])
    value = criterion(students, teachers, gt_boxes=boxes, image_size=(64, 96))
    value.backward()
    assert len(list(criterion.parameters())) == 3 * 2
    assert all(p.grad is not None for p in criterion.parameters())
    same = [torch.randn(2, 4, *s.shape[2:]) for s in students]
    expected = sum(detkds_loss(s, t, boxes, (64, 96), **DETKDS_PRESETS["retinanet_r101_r50"]) for s, t in zip(same, teachers))
    torch.testing.assert_close(multilevel_loss(detkds_loss, same, teachers, gt_boxes=boxes, image_size=(64, 96),
                                               **DETKDS_PRESETS["retinanet_r101_r50"]), expected)


def test_unknown_preset():
    with pytest.raises(KeyError, match="retinanet_r101_r50"):
        DetKDSLoss.from_preset("retina")


def test_logit_loss_checks():
    with pytest.raises(ValueError, match="normalization"):
        detkds_logit_loss(torch.randn(2, 3), torch.randn(2, 3), normalization="catt")
    with pytest.raises(ValueError, match="distance"):
        detkds_logit_loss(torch.randn(2, 3), torch.randn(2, 3), distance="norm_C")
    with pytest.raises(ValueError, match="student must have shape"):
        detkds_logit_loss(torch.randn(3), torch.randn(3))


def test_instance_correlation_distance_uses_the_real_boxes_only():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 4, 8, 12, generator=g), torch.randn(2, 4, 8, 12, generator=g)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 16.0], [4.0, 2.0, 30.0, 28.0]]), torch.tensor([[8.0, 4.0, 40.0, 30.0]])]
    chain = ("catt", "scale_r1", "norm_C", "cor")
    value = detkds_loss(s, t, boxes, (32, 48), global_chain=None, instance_chain=chain, instance_weight=3.0)
    # the three real RoIs, pooled on the grid of the map (floor/ceil of the boxes at stride 4)
    cells = [torch.tensor([[0.0, 0.0, 5.0, 4.0], [1.0, 0.0, 8.0, 7.0]]), torch.tensor([[2.0, 1.0, 10.0, 8.0]])]
    a, b = (detkds_transform(detkds_transform(detkds_transform(x, "catt"), "scale_r1"), "norm_C") for x in (s, t))
    rois_s = torch.cat([detkds_roi_align(a[i : i + 1], c[None])[0] for i, c in enumerate(cells)])
    rois_t = torch.cat([detkds_roi_align(b[i : i + 1], c[None])[0] for i, c in enumerate(cells)])
    torch.testing.assert_close(value, 3.0 * detkds_distance(rois_s, rois_t, "cor"))
