"""LD: parity with the official head's loss terms and VLR, hand-checkable cases, input checks, levels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.ld import (  # noqa: E402
    LDClsLoss,
    LDLoss,
    LDVLRLoss,
    ld_cls_loss,
    ld_grid_anchors,
    ld_loss,
    ld_valuable_regions,
    ld_vlr_loss,
)

FIXTURE = Path(__file__).parent / "fixtures" / "ld" / "official_ld.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _main_maps(official):
    """The official main-region weights: the student's max class score on the positives."""
    return [p * c.sigmoid().amax(dim=1) for p, c in zip(official["pos_mask"], official["student_cls"])]


_TERMS = {
    # name: (module, student key, teacher key, loss weight, maps)
    "ld": (LDLoss, "student_box", "teacher_box", 0.25, _main_maps),
    "ld_vlr": (LDVLRLoss, "student_box", "teacher_box", 0.25, lambda f: f["vlr_map"]),
    "ld_cls": (LDClsLoss, "student_cls", "teacher_cls", 10.0, lambda f: f["pos_mask"]),
}


@pytest.mark.parity
def test_grid_anchors_and_valuable_regions_match_official(official):
    sizes = [tuple(a.shape[:2]) for a in official["anchors"]]
    anchors = ld_grid_anchors(sizes, official["image_size"])
    for ours, theirs in zip(anchors, official["anchors"]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for ours, theirs in zip(ld_valuable_regions(anchors, official["gt_boxes"]), official["vlr_map"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert official["vlr_map"][0].count_nonzero() > 0, "fixture: the VLR must not be empty"


@pytest.mark.parity
@pytest.mark.parametrize("name", list(_TERMS))
def test_per_level_terms_and_gradients_match_official(official, name):
    module, student_key, teacher_key, weight, maps = _TERMS[name]
    criterion = module(loss_weight=weight)
    students = [s.clone().requires_grad_(True) for s in official[student_key]]
    values = torch.stack([criterion(s, t, m) for s, t, m in zip(students, official[teacher_key], maps(official))])
    torch.testing.assert_close(values, official[name], rtol=1e-5, atol=1e-7)
    grads = torch.autograd.grad(values.sum(), students)
    for ours, theirs in zip(grads, official[f"grad_{name}"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-8)


@pytest.mark.parity
def test_official_total_in_one_line_per_term(official):
    boxes_s, boxes_t = official["student_box"], official["teacher_box"]
    anchors = ld_grid_anchors([b.shape[-2:] for b in boxes_s], official["image_size"])
    vlr_maps = ld_valuable_regions(anchors, official["gt_boxes"])
    cls_s, cls_t = official["student_cls"], official["teacher_cls"]
    total = (
        multilevel_loss(LDLoss(loss_weight=0.25), boxes_s, boxes_t, _main_maps(official))
        + multilevel_loss(LDVLRLoss(loss_weight=0.25), boxes_s, boxes_t, vlr_maps)
        + multilevel_loss(LDClsLoss(loss_weight=10.0), cls_s, cls_t, official["pos_mask"])
    )
    expected = official["ld"].sum() + official["ld_vlr"].sum() + official["ld_cls"].sum()
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-7)


def test_two_bin_hand_case():
    # one location, every edge: d_s = [0, 0], d_t = [ln 3, 0], T = 1: KL = 0.75 ln 1.5 + 0.25 ln 0.5, over 2 bins
    kl_over_bins = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    student = torch.zeros(1, 8, 1, 1)
    teacher = torch.tensor([math.log(3.0), 0.0] * 4).reshape(1, 8, 1, 1)
    ones = torch.ones(1, 1, 1)
    main = ld_loss(student, teacher, ones, temperature=1.0).item()
    vlr = ld_vlr_loss(student, teacher, ones, temperature=1.0).item()
    torch.testing.assert_close(main, kl_over_bins, rtol=1e-6, atol=0)
    torch.testing.assert_close(vlr, kl_over_bins / 4, rtol=1e-6, atol=0)
    assert abs(kl_over_bins - 0.065406) < 1e-6


def _naive_edge_terms(student, teacher, region, temperature):
    """Loop over images, edges and locations: w * T^2 / R * KL(softmax(t / T) || softmax(s / T))."""
    n, c, h, w = student.shape
    bins = c // 4
    out = torch.zeros(n, 4, h, w, dtype=torch.float64)
    for i in range(n):
        for e in range(4):
            for y in range(h):
                for x in range(w):
                    p = (teacher[i, e * bins:(e + 1) * bins, y, x].double() / temperature).softmax(0)
                    q = (student[i, e * bins:(e + 1) * bins, y, x].double() / temperature).softmax(0)
                    out[i, e, y, x] = region[i, y, x] * temperature**2 / bins * (p * (p / q).log()).sum()
    return out


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_edge_terms_and_normalisers_match_a_naive_loop(temperature):
    g = torch.Generator().manual_seed(3)
    student, teacher = 3 * torch.randn(2, 4 * 6, 3, 5, generator=g), 3 * torch.randn(2, 4 * 6, 3, 5, generator=g)
    region = torch.rand(2, 3, 5, generator=g) * (torch.rand(2, 3, 5, generator=g) < 0.5)
    naive = _naive_edge_terms(student, teacher, region, temperature).float()
    torch.testing.assert_close(ld_loss(student, teacher, region, temperature=temperature, reduction="none"), naive)
    torch.testing.assert_close(ld_loss(student, teacher, region, temperature=temperature), naive.sum() / 4)
    torch.testing.assert_close(ld_vlr_loss(student, teacher, region, temperature=temperature), naive.sum() / 16)


def test_cls_kd_is_the_mean_over_positives_of_the_class_kl():
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2, 7, 4, 5, generator=g), torch.randn(2, 7, 4, 5, generator=g)
    positives = torch.rand(2, 4, 5, generator=g) < 0.3
    p = (teacher / 2).softmax(1)
    per_location = 4.0 / 7 * (p * (p.log() - (student / 2).log_softmax(1))).sum(1)
    expected = per_location[positives].sum() / positives.sum()
    torch.testing.assert_close(ld_cls_loss(student, teacher, positives), expected)
    torch.testing.assert_close(ld_cls_loss(student, teacher, positives, reduction="none"), per_location * positives)


def test_cls_kd_without_positives_is_zero_in_the_graph():
    student = torch.randn(2, 5, 3, 4, requires_grad=True)
    loss = ld_cls_loss(student, torch.randn(2, 5, 3, 4), torch.zeros(2, 3, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert not student.grad.any()


def test_nan_outside_the_region_still_gives_nan():
    student, teacher = torch.randn(1, 8, 2, 2), torch.randn(1, 8, 2, 2)
    region = torch.zeros(1, 2, 2)
    region[0, 0, 0] = 1.0
    student[0, 0, 1, 1] = float("nan")  # a location of weight 0
    assert torch.isnan(ld_loss(student, teacher, region))


def test_valuable_regions_lie_below_the_atss_threshold():
    anchors = ld_grid_anchors([(8, 12), (4, 6)], (64, 96))
    boxes = [torch.tensor([[10.0, 8.0, 50.0, 40.0]]), torch.zeros(0, 4)]
    maps = ld_valuable_regions(anchors, boxes)
    assert [m.shape for m in maps] == [(2, 8, 12), (2, 4, 6)]
    assert all(not m[1].any() for m in maps), "an image without boxes has no valuable region"
    weights = torch.cat([m[0].flatten() for m in maps])
    assert weights.count_nonzero() > 0 and bool(((weights >= 0) & (weights <= 1)).all())


def test_valuable_regions_of_an_empty_batch():
    anchors = ld_grid_anchors([(4, 6)], (32, 48))
    assert ld_valuable_regions(anchors, [])[0].shape == (0, 4, 6)


def test_grid_anchors_derive_the_stride_from_the_image_size():
    (anchors,) = ld_grid_anchors([(2, 3)], (32, 48))  # stride 16
    torch.testing.assert_close(anchors[1, 2], torch.tensor([32.0 - 64, 16.0 - 64, 32.0 + 64, 16.0 + 64]))


def test_input_checks_name_the_argument():
    s, t, m = torch.randn(2, 20, 3, 4), torch.randn(2, 20, 3, 4), torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match="4 \\* \\(reg_max \\+ 1\\) channels"):
        ld_loss(torch.randn(2, 18, 3, 4), torch.randn(2, 18, 3, 4), m)
    with pytest.raises(ValueError, match="region_map has [HW]=.* but head output has"):
        ld_loss(s, t, torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="vlr_map must have shape"):
        ld_vlr_loss(s, t, torch.rand(2, 1, 3, 4))
    with pytest.raises(ValueError, match="pos_mask has N=1 but head output has N=2"):
        ld_cls_loss(s, t, torch.ones(1, 3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        ld_loss(s.long(), t, m)
    with pytest.raises(ValueError, match="student and teacher must have the same shape"):
        ld_loss(s, t[:, :8], m)
    with pytest.raises(ValueError, match="temperature"):
        ld_loss(s, t, m, temperature=0.0)
    anchors = ld_grid_anchors([(3, 4)], (24, 32))
    with pytest.raises(ValueError, match="non-finite"):
        ld_valuable_regions(anchors, [torch.tensor([[0.0, 0.0, float("nan"), 4.0]])])
    with pytest.raises(ValueError, match="x2 < x1"):
        ld_valuable_regions(anchors, [torch.tensor([[8.0, 0.0, 4.0, 4.0]])])
    with pytest.raises(ValueError, match="anchors\\[0\\] must have shape"):
        ld_valuable_regions([anchors[0].reshape(-1, 4)], [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="image_size"):
        ld_grid_anchors([(3, 4)], (0, 32))


def test_levels_in_one_line_with_boxes_given_once():
    g = torch.Generator().manual_seed(5)
    image_size, sizes = (64, 96), [(8, 12), (4, 6), (2, 3)]
    students = [torch.randn(2, 4 * 5, h, w, generator=g).requires_grad_(True) for h, w in sizes]
    teachers = [torch.randn(2, 4 * 5, h, w, generator=g) for h, w in sizes]
    gt_boxes = [
        torch.tensor([[4.0, 6.0, 40.0, 30.0]]),
        torch.tensor([[50.0, 20.0, 90.0, 60.0], [0.0, 0.0, 20.0, 20.0]]),
    ]
    vlr = ld_valuable_regions(ld_grid_anchors(sizes, image_size), gt_boxes)
    total = MultiLevelLoss(LDVLRLoss(), loss_weight=0.25)(students, teachers, vlr)
    expected = 0.25 * sum(ld_vlr_loss(s, t, m) for s, t, m in zip(students, teachers, vlr))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(s.grad is not None for s in students)


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
@pytest.mark.parametrize("name", ["ld", "ld_vlr", "ld_cls"])
def test_region_form_equals_the_dense_reference(name, scale):
    from kdimpl.losses import ld

    g = torch.Generator().manual_seed(6)
    channels = 4 * 7 if name != "ld_cls" else 9
    student = (scale * torch.randn(3, channels, 5, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    teacher = scale * torch.randn(3, channels, 5, 6, generator=g, dtype=torch.float64)
    weights = torch.rand(3, 5, 6, generator=g, dtype=torch.float64) * (torch.rand(3, 5, 6, generator=g) < 0.3)
    forms = {"ld_cls": (ld._class_kl, ld._class_kl_at_region)}
    dense, region = forms.get(name, (ld._edge_kl, ld._edge_kl_at_region))
    reference = dense(student, teacher, weights, 3.0).sum()
    fast = region(student, teacher, weights, 3.0).sum()
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(x, student)[0] for x in (reference, fast)]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
    # the public function takes the region form for 'mean'/'sum' and the dense form for 'none'
    function = {"ld": ld.ld_loss, "ld_vlr": ld.ld_vlr_loss, "ld_cls": ld.ld_cls_loss}[name]
    torch.testing.assert_close(function(student, teacher, weights, reduction="sum"),
                               function(student, teacher, weights, reduction="none").sum())
