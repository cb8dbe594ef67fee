"""GID: selection (GISM) against a naive NMS loop, losses against hand formulas, and parity with the first
author's detectron2 code (tests/kdimpl/fixtures/gid/PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kdimpl import (  # noqa: E402
    GIDFeatureLoss,
    GIDRelationLoss,
    gid_feature_loss,
    gid_relation_loss,
    gid_response_loss,
    gid_select_instances,
)
from kdimpl.ops import box_iou, nms_top_k  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "gid"


def make_inputs(seed: int = 0, dtype=torch.float64) -> dict:
    """The seeded parity inputs: three FPN levels of a 128x192 batch of two, 2 anchors and 3 classes per cell."""
    g = torch.Generator().manual_seed(seed)
    strides, padded, image_sizes = (8, 16, 32), (128, 192), [(120, 190), (128, 176)]
    n, channels, num_anchors, num_classes = 2, 4, 2, 3
    out = {"batch": n, "strides": strides, "padded_size": padded, "image_sizes": image_sizes, "pre_nms_top_k": 300}
    keys = ("student_features", "teacher_features", "student_cls_flat", "teacher_cls_flat", "student_reg_flat",
            "teacher_reg_flat", "student_boxes", "teacher_boxes", "anchors")
    out.update({k: [] for k in keys})
    for stride in strides:
        h, w = padded[0] // stride, padded[1] // stride
        p = h * w * num_anchors
        s = torch.randn(n, channels, h, w, generator=g, dtype=dtype)
        out["student_features"].append(s)
        out["teacher_features"].append(0.5 * s + torch.randn(n, channels, h, w, generator=g, dtype=dtype))
        cls = 2 * torch.randn(n, p, num_classes, generator=g, dtype=dtype)
        out["student_cls_flat"].append(cls)
        out["teacher_cls_flat"].append(0.5 * cls + 2 * torch.randn(n, p, num_classes, generator=g, dtype=dtype))
        reg = torch.randn(n, p, 4, generator=g, dtype=dtype)
        out["student_reg_flat"].append(reg)
        out["teacher_reg_flat"].append(reg + 0.5 * torch.randn(n, p, 4, generator=g, dtype=dtype))
        for side in ("student_boxes", "teacher_boxes"):
            centre = torch.rand(n, p, 2, generator=g, dtype=dtype) * torch.tensor([padded[1], padded[0]], dtype=dtype)
            half = (6 + 44 * torch.rand(n, p, 2, generator=g, dtype=dtype))
            out[side].append(torch.cat([centre - half, centre + half], dim=-1))
        ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
        cx, cy = ((xs + 0.5) * stride).reshape(-1, 1), ((ys + 0.5) * stride).reshape(-1, 1)
        half = torch.tensor([1.5, 2.5], dtype=dtype) * stride  # two square anchors per cell
        out["anchors"].append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4))
    return out


def _head_map(flat: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, H*W*A, K) back to the head's (N, A*K, H, W) map."""
    n, _, k = flat.shape
    return flat.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def _maps(inputs, key):
    return [_head_map(x, f.shape[-2], f.shape[-1]) for x, f in zip(inputs[key], inputs["student_features"])]


# ---------------------------------------------------------------- NMS and selection


def _naive_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if scores[i] == float("-inf"):
            continue
        if all(float(box_iou(boxes[i : i + 1], boxes[j : j + 1])) <= threshold for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(4))
def test_nms_top_k_equals_a_naive_greedy_loop(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 60, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + 40 * torch.rand(2, 60, 2, generator=g)], dim=-1)
    scores = torch.rand(2, 60, generator=g)
    scores[0, :5] = float("-inf")
    index, kept = nms_top_k(boxes, scores, 12, 0.3)
    for i in range(2):
        expected = _naive_nms(boxes[i], scores[i], 0.3)[:12]
        assert index[i][kept[i]].tolist() == expected
        assert kept[i].tolist() == [True] * len(expected) + [False] * (12 - len(expected))


def test_nms_top_k_without_candidates():
    index, kept = nms_top_k(torch.zeros(1, 0, 4), torch.zeros(1, 0), 3, 0.5)
    assert index.shape == (1, 3) and not kept.any()


def test_selection_hand_case():
    # GISM hand case: P_t = [[.9, .1], [.2, .3]], P_s = [[.5, .1], [.2, .8]] (as probabilities).
    logit = lambda p: torch.logit(torch.tensor(p))  # noqa: E731
    t, s = logit([[[0.9, 0.1], [0.2, 0.3]]]), logit([[[0.5, 0.1], [0.2, 0.8]]])
    box_t = torch.tensor([[[0.0, 0, 20, 20], [50, 50, 70, 70]]])
    box_s = box_t + 2.0
    gi = gid_select_instances(s, t, box_s, box_t, (100, 100), score_rule="paper")
    torch.testing.assert_close(gi.scores[0, :2], torch.tensor([0.5, 0.4]))
    # position 1: the student is more confident (0.8 > 0.3) -> its box; position 0: the teacher's
    torch.testing.assert_close(gi.boxes[0, :2], torch.stack([box_s[0, 1], box_t[0, 0]]))
    assert gi.mask[0].tolist() == [True, True] + [False] * 8
    official = gid_select_instances(s, t, box_s, box_t, (100, 100))  # |max P_t - max P_s|
    torch.testing.assert_close(official.scores[0, :2], torch.tensor([0.5, 0.4]))


def test_selection_clips_and_drops_small_boxes():
    s = torch.zeros(1, 3, 1)
    t = torch.tensor([[[3.0], [2.0], [1.0]]])
    boxes = torch.tensor([[[-10.0, -10, 30, 30], [95, 0, 120, 40], [40, 40, 60, 60]]])
    gi = gid_select_instances(s, t, boxes, boxes, (100, 100), top_k=3)
    # box 0 clipped to the image, box 1 is 5 px wide once clipped (<= 10): dropped
    torch.testing.assert_close(gi.boxes[0, :2], torch.tensor([[0.0, 0, 30, 30], [40, 40, 60, 60]]))
    assert gi.mask[0].tolist() == [True, True, False]


def test_selection_rejects_unknown_score_rule():
    with pytest.raises(ValueError, match="score_rule"):
        gid_select_instances(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4),
                             (8, 8), score_rule="max")


# ---------------------------------------------------------------- equations


def test_relation_matches_the_rkd_distance_hand_case():
    # teacher points (0,0),(1,0),(0,2); student (0,0),(2,0),(0,2): SmoothL1 mean over the 6 off-diagonal pairs
    from kdimpl.losses import gid as module

    pts_t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    pts_s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # one-cell feature maps whose 1x1 RoI features are the points
    student = pts_s.T.reshape(1, 2, 1, 3).repeat(1, 1, 1, 1)
    teacher = pts_t.T.reshape(1, 2, 1, 3)
    boxes = [torch.tensor([[0.0, 0, 1, 1], [1, 0, 2, 1], [2, 0, 3, 1]], dtype=torch.float64)]
    original = module.gid_instance_features

    def centre_values(features, boxes, image_size, **_):
        return torch.stack([features[0][0, :, 0, i] for i in range(3)])[None, :, :, None, None]

    module.gid_instance_features = centre_values
    try:
        loss = gid_relation_loss(student, teacher, boxes, (1, 3), output_size=1)
    finally:
        module.gid_instance_features = original
    torch.testing.assert_close(loss, torch.tensor(0.027727, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_gram_distances_equal_the_reference(scale):
    from kdimpl.losses.gid import _pairwise_distances, _pairwise_distances_gram

    g = torch.Generator().manual_seed(0)
    x = scale * torch.randn(7, 50, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:1] + 1e-3 * scale]).requires_grad_(True)  # a near-duplicate pair
    weights = torch.rand(8, 8, generator=g, dtype=torch.float64) * (1 - torch.eye(8, dtype=torch.float64))
    fast, reference = _pairwise_distances_gram(x), _pairwise_distances(x)
    off = ~torch.eye(8, dtype=torch.bool)
    torch.testing.assert_close(fast[off], reference[off], rtol=1e-9, atol=1e-9 * scale)
    grad_fast, = torch.autograd.grad((fast * weights).sum(), x)
    grad_reference, = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(grad_fast, grad_reference, rtol=1e-7, atol=1e-9)


def test_relation_needs_three_instances():
    s, t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    boxes = [torch.tensor([[0.0, 0, 30, 30], [20, 20, 60, 60]])]
    assert gid_relation_loss(s, t, boxes, (64, 64)) == 0
    more = [torch.cat([boxes[0], torch.tensor([[5.0, 30, 50, 60]])])]
    assert gid_relation_loss(s, t, more, (64, 64)) > 0


def test_feature_loss_is_the_pooled_squared_error_over_instances_and_bins():
    from kdimpl.losses.gid import gid_instance_features

    s, t = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    boxes = torch.tensor([[[0.0, 0, 30, 30], [20, 20, 60, 60]], [[5.0, 5, 40, 50], [0, 0, 0, 0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    pooled = lambda x: gid_instance_features(x, boxes, (64, 64), output_size=3)  # noqa: E731
    expected = ((pooled(s) - pooled(t)).square().sum(dim=(2, 3, 4)) * mask).sum() / (3 * 9)
    torch.testing.assert_close(gid_feature_loss(s, t, boxes, (64, 64), mask, output_size=3), expected)


def test_instances_are_pooled_on_the_level_their_size_maps_to():
    from kdimpl.losses.gid import gid_instance_features

    levels = [torch.full((1, 1, 64 // 2**i, 64 // 2**i), float(i)) for i in range(3)]  # strides 8, 16, 32
    # sqrt(area) 40 -> level floor(4 + log2(40/224)) = 1 -> P3 (clamped), 224 -> P4, 600 -> P5 (clamped)
    boxes = torch.tensor([[[0.0, 0, 40, 40], [0, 0, 224, 224], [0, 0, 500, 500]]])
    pooled = gid_instance_features(levels, boxes, (512, 512), output_size=2)
    assert pooled[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_response_mask_is_the_anchors_with_iou_of_at_least_the_threshold():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [20, 20, 30, 30]])  # one 3x1 map, one anchor a cell
    s, t = torch.randn(1, 2, 3, 1, dtype=torch.float64), torch.randn(1, 2, 3, 1, dtype=torch.float64)
    ds, dt = torch.randn(1, 4, 3, 1, dtype=torch.float64), torch.randn(1, 4, 3, 1, dtype=torch.float64)
    boxes = [torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float64)]  # IoU 1, 0.5, 0
    per_anchor = gid_response_loss(s, t, ds, dt, anchors, boxes, reduction="none")
    cls = F.binary_cross_entropy_with_logits(s[0, :, :, 0].T, t[0, :, :, 0].T.sigmoid(), reduction="none").sum(1)
    reg = (ds[0, :, :, 0].T - dt[0, :, :, 0].T).abs().sum(1)
    expected = (0.1 * cls + reg) * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(per_anchor[0], expected)
    torch.testing.assert_close(gid_response_loss(s, t, ds, dt, anchors, boxes), expected.sum() / 2)


# ---------------------------------------------------------------- parity with the official code


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "official_gid.pt")


@pytest.fixture(scope="module")
def selected():
    inputs = make_inputs()
    sizes = torch.tensor(inputs["image_sizes"], dtype=torch.float64)
    gi = gid_select_instances(inputs["student_cls_flat"], inputs["teacher_cls_flat"], inputs["student_boxes"],
                              inputs["teacher_boxes"], sizes, pre_nms_top_k=inputs["pre_nms_top_k"])
    # the official losses see the boxes through detectron2's Boxes, which hold float32
    return inputs, gi._replace(boxes=gi.boxes.float().double())


@pytest.mark.parity
def test_parity_selection(official, selected):
    _, gi = selected
    for i, (boxes, scores) in enumerate(zip(official["gi_boxes"], official["gi_scores"])):
        k = boxes.shape[0]
        assert gi.mask[i].sum() == k and gi.mask[i, :k].all()
        torch.testing.assert_close(gi.boxes[i, :k].float(), boxes)  # detectron2's Boxes hold float32
        torch.testing.assert_close(gi.scores[i, :k], scores)


@pytest.mark.parity
@pytest.mark.parametrize("part", ["feature", "relation"])
def test_parity_feature_and_relation(official, selected, part):
    inputs, gi = selected
    students = [x.clone().requires_grad_(True) for x in inputs["student_features"]]
    loss_fn = {"feature": GIDFeatureLoss(), "relation": GIDRelationLoss()}[part]
    loss = loss_fn(students, inputs["teacher_features"], gi.boxes, inputs["padded_size"], gi.mask)
    torch.testing.assert_close(loss, official[part], rtol=1e-6, atol=1e-9)
    grads = torch.autograd.grad(loss, students)
    for grad, expected in zip(grads, official[f"{part}_grad"]):
        torch.testing.assert_close(grad.float(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parity
def test_parity_response(official, selected):
    inputs, gi = selected
    s_cls = [x.clone().requires_grad_(True) for x in _maps(inputs, "student_cls_flat")]
    s_reg = [x.clone().requires_grad_(True) for x in _maps(inputs, "student_reg_flat")]
    loss = gid_response_loss(s_cls, _maps(inputs, "teacher_cls_flat"), s_reg, _maps(inputs, "teacher_reg_flat"),
                             inputs["anchors"], gi.boxes, gi.mask)
    torch.testing.assert_close(loss, official["response"], rtol=1e-6, atol=1e-9)
    grads = torch.autograd.grad(loss, s_cls + s_reg)
    flat = [g.permute(0, 2, 3, 1).reshape(g.shape[0], -1, o.shape[-1])
            for g, o in zip(grads, official["response_grad_cls"] + official["response_grad_reg"])]
    for grad, expected in zip(flat, official["response_grad_cls"] + official["response_grad_reg"]):
        torch.testing.assert_close(grad.float(), expected, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- levels, inputs, edge cases


def test_levels_in_one_call_with_boxes_given_once_and_adapters_owned():
    inputs, gi = make_inputs(dtype=torch.float32), None
    students = [torch.randn(2, 3, f.shape[-2], f.shape[-1]) for f in inputs["student_features"]]
    boxes = [torch.tensor([[0.0, 0, 40, 40], [10, 10, 120, 100], [60, 20, 190, 128]]), torch.zeros(0, 4)]
    loss = GIDFeatureLoss(student_channels=3, channels=4)
    value = loss(students, [x.float() for x in inputs["teacher_features"]], boxes, inputs["padded_size"])
    value.backward()
    assert loss.adapter_student.weight.grad is not None and value > 0
    assert len(list(loss.parameters())) == 2
    relation = GIDRelationLoss(student_channels=3, channels=4)
    assert relation(students, [x.float() for x in inputs["teacher_features"]], boxes, inputs["padded_size"]) > 0


@pytest.mark.parametrize("fn", [gid_feature_loss, gid_relation_loss])
def test_box_and_image_size_checks(fn):
    s, t = torch.randn(2, 4, 8, 12), torch.randn(2, 4, 8, 12)
    good = [torch.tensor([[0.0, 0, 30, 30]]), torch.tensor([[5.0, 5, 40, 40]])]
    with pytest.raises(ValueError, match="instance_boxes has 1 images"):
        fn(s, t, good[:1], (64, 96))
    with pytest.raises(ValueError, match="non-finite"):
        fn(s, t, [good[0], torch.tensor([[float("nan"), 0, 1, 1]])], (64, 96))
    with pytest.raises(ValueError, match="x2 < x1"):
        fn(s, t, [good[0], torch.tensor([[10.0, 0, 1, 1]])], (64, 96))
    with pytest.raises(ValueError, match="image_size"):
        fn(s, t, good, (0, 96))
    with pytest.raises(ValueError, match="not \\(width, height\\)"):
        fn(s, t, good, (96, 64))
    with pytest.raises(ValueError, match="levels"):
        fn([s, s], [t], good, (64, 96))


def test_response_input_checks():
    anchors = torch.zeros(6, 4)
    x = torch.randn(1, 2, 2, 3)
    d = torch.randn(1, 4, 2, 3)
    with pytest.raises(TypeError, match="student_deltas"):
        gid_response_loss(x, x, d.long(), d, anchors, [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="same shape"):
        gid_response_loss(x, x[:, :1], d, d, anchors, [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="anchors has 5 rows"):
        gid_response_loss(x, x, d, d, anchors[:5], [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="one entry per level"):
        gid_response_loss([x, x], [x], [d], [d], [anchors], [torch.zeros(0, 4)])


def test_selection_compiles_without_graph_breaks():
    s, t = torch.randn(2, 50, 3), torch.randn(2, 50, 3)
    xy = torch.rand(2, 50, 2) * 60
    boxes = torch.cat([xy, xy + 20], dim=-1)
    expected = gid_select_instances(s, t, boxes, boxes + 1, (80, 80), top_k=4)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: gid_select_instances(*a, (80, 80), top_k=4), backend="eager", fullgraph=True)
    for actual, wanted in zip(compiled(s, t, boxes, boxes + 1), expected):
        torch.testing.assert_close(actual, wanted)
