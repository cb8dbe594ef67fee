"""PGD: analytic checks and parity with ChenhongyiYang/PGD@81c54d5 (fixtures in fixtures/pgd/)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (
    PGDClsLoss,
    PGDRegLoss,
    pgd_background_weights,
    pgd_cls_loss,
    pgd_prediction_weights,
    pgd_reg_loss,
    pgd_split_levels,
)

FIXTURES = Path(__file__).parent / "fixtures" / "pgd"


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURES / "pgd_official.pt")


def _grid(height, width, stride):
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([xs, ys], -1).reshape(-1, 2) * stride + stride / 2


def _naive_weights(priors, logits, boxes, gts, labels, xi, topk, noise):
    """Per-image, per-box loop written from the paper's description (reference for the vectorised code)."""
    centres = (priors[:, :2] + priors[:, 2:]) / 2
    out = []
    for i, (gt, lab) in enumerate(zip(gts, labels)):
        w = torch.zeros(priors.shape[0], dtype=torch.float64)
        for g in range(gt.shape[0]):
            b = gt[g]
            lt = torch.maximum(boxes[i, :, :2], b[:2])
            rb = torch.minimum(boxes[i, :, 2:], b[2:])
            inter = (rb - lt).clamp(min=0).prod(-1)
            area = (boxes[i, :, 2:] - boxes[i, :, :2]).prod(-1) + (b[2:] - b[:2]).prod() - inter
            q = torch.sigmoid(logits[i, :, lab[g]]) ** (1 - xi) * (inter / area.clamp(min=1e-6)) ** xi
            idx = q.topk(topk).indices
            pts = centres[idx]
            data = pts + noise[i, g]
            mu = data.mean(0)
            cov = (data - mu).T @ (data - mu) / topk
            maha = ((pts - mu) @ torch.linalg.inv(cov) * (pts - mu)).sum(-1)
            inside = (centres[idx] > b[:2]).all(-1) & (centres[idx] < b[2:]).all(-1)
            cand = torch.zeros_like(w)
            cand[idx] = torch.exp(-0.5 * maha) * inside
            w = torch.maximum(w, cand)
        out.append(w)
    return torch.stack(out)


def test_prediction_weights_match_a_per_box_loop():
    gen = torch.Generator().manual_seed(3)
    points = torch.cat([_grid(8, 12, 8), _grid(4, 6, 16)])
    anchors = torch.cat([points - 20, points + 20], -1)
    n, p, k = 2, anchors.shape[0], 4
    logits = torch.randn(n, p, k, generator=gen, dtype=torch.float64)
    boxes = anchors + torch.randn(n, p, 4, generator=gen, dtype=torch.float64) * 6
    gts = [
        torch.tensor([[8.0, 4.0, 60.0, 40.0], [50.0, 20.0, 90.0, 60.0]], dtype=torch.float64),
        torch.tensor([[0.0, 0.0, 95.0, 63.0]], dtype=torch.float64),
    ]
    labels = [torch.tensor([0, 3]), torch.tensor([2])]
    noise = (torch.rand(n, 2, 7, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.1
    ours = pgd_prediction_weights(anchors, logits, boxes, gts, labels, xi=0.6, topk=7, noise=noise)
    torch.testing.assert_close(
        ours, _naive_weights(anchors, logits, boxes, gts, labels, 0.6, 7, noise), rtol=1e-9, atol=1e-9
    )


def test_point_axes_are_x_then_y():
    # point (x=100, y=10) lies in [90, 0, 110, 20]; the official anchor-free reading swaps axes and misses it
    points = torch.tensor([[100.0, 10.0], [10.0, 100.0]])
    box = [torch.tensor([[90.0, 0.0, 110.0, 20.0]])]
    assert pgd_background_weights(points, box).tolist() == [[0.0, 1.0]]
    assert pgd_background_weights(points, box, swap_point_axes=True).tolist() == [[1.0, 0.0]]


def test_no_boxes_gives_zero_weights_and_full_background():
    anchors = torch.cat([_grid(3, 4, 8) - 8, _grid(3, 4, 8) + 8], -1).float()
    w = pgd_prediction_weights(
        anchors, torch.randn(1, 12, 2), anchors[None], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)]
    )
    assert w.shape == (1, 12) and not w.any()
    assert pgd_background_weights(anchors, [torch.zeros(0, 4)]).eq(1).all()


def test_split_levels_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="priors"):
        pgd_split_levels(torch.zeros(1, 10), [(2, 3)])


def test_cls_loss_by_hand():
    # one image, one channel, two positions; equal |features| so both attentions are 1
    s = torch.tensor([[[[1.0, -1.0]]]])
    t = torch.tensor([[[[-1.0, 1.0]]]])
    fg = torch.tensor([[[0.5, 0.0]]])  # one non-zero cell: normalised to 0.5 / 1
    bg = torch.tensor([[[0.0, 1.0]]])
    loss = pgd_cls_loss(s, t, fg, bg, fg_weight=2.0, bg_weight=3.0, attention_weight=10.0)
    torch.testing.assert_close(loss, torch.tensor(2.0 * 0.5 * 4 + 3.0 * 1.0 * 4))


def test_reg_loss_by_hand_and_empty_map():
    s = torch.tensor([[[[1.0, 5.0]], [[1.0, 5.0]]]])  # (1, 2, 1, 2): channel attention is 1 everywhere
    t = torch.tensor([[[[3.0, 0.0]], [[-3.0, 0.0]]]])
    w = torch.tensor([[[0.5, 0.0]]])
    # |P| = 1: gamma * 0.5 * mean_c((1-3)^2, (1+3)^2) = gamma * 0.5 * 10;
    # the attention gap is 0 (|s|, |t| equal per pixel)
    torch.testing.assert_close(pgd_reg_loss(s, t, w, fg_weight=2.0), torch.tensor(10.0))
    s = s.clone().requires_grad_(True)
    empty = pgd_reg_loss(s, t, torch.zeros(1, 1, 2))
    empty.backward()
    assert empty.item() == 0.0 and s.grad is not None and not s.grad.any()


def test_mixing_batch_masks_equals_summed_masks():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 5, 6, generator=gen), torch.randn(2, 4, 5, 6, generator=gen)
    fg = torch.rand(2, 5, 6, generator=gen) * (torch.rand(2, 5, 6, generator=gen) > 0.5)
    bg = (fg == 0).float()
    single = [pgd_cls_loss(s[i : i + 1], t[i : i + 1], fg[i : i + 1], bg[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(pgd_cls_loss(s, t, fg, bg), (single[0] + single[1]) / 2)
    assert not torch.allclose(pgd_cls_loss(s, t, fg, bg, mix_batch_masks=True), pgd_cls_loss(s, t, fg, bg))


@pytest.mark.parity
@pytest.mark.parametrize("key", ["anchor_cls", "anchor_reg", "anchor_k1", "point_cls_swapped"])
def test_parity_prediction_weights(fx, key):
    spec = fx["weights"][key]
    priors = fx["points"] if key.startswith("point") else fx["anchors"]
    ours = pgd_prediction_weights(
        priors,
        fx["logits"],
        fx["boxes"],
        fx["gt_boxes"],
        fx["gt_labels"],
        xi=spec["xi"],
        topk=spec["topk"],
        noise=spec["noise"],
        swap_point_axes=key.startswith("point"),
    )
    torch.testing.assert_close(ours, spec["weights"], rtol=1e-5, atol=1e-6)


@pytest.mark.parity
def test_parity_background(fx):
    torch.testing.assert_close(pgd_background_weights(fx["anchors"], fx["gt_boxes"]), fx["weights"]["back_anchor"])
    swapped = pgd_background_weights(fx["points"], fx["gt_boxes"], swap_point_axes=True)
    torch.testing.assert_close(swapped, fx["weights"]["back_point_swapped"])


def _level_maps(fx, key):
    return pgd_split_levels(
        fx["weights"][key] if key.startswith("back") else fx["weights"][key]["weights"], fx["sizes"]
    )


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["cls_batched", "cls_per_image", "reg"])
def test_parity_losses(fx, variant):
    expected = fx["losses"][variant]
    students = [s.clone().requires_grad_(True) for s in fx["student"]]
    if variant == "reg":
        loss = PGDRegLoss()
        total = sum(loss(s, t, w) for s, t, w in zip(students, fx["teacher"], _level_maps(fx, "anchor_reg")))
    else:
        # the official code broadcasts (N,1,1,H,W) masks against (N,C,H,W) features: "cls_batched" is that
        # behaviour, "cls_per_image" is the official loss run one image at a time (what the paper states)
        loss = PGDClsLoss(mix_batch_masks=variant == "cls_batched")
        fg, bg = _level_maps(fx, "anchor_cls"), _level_maps(fx, "back_anchor")
        total = sum(loss(s, t, f, b) for s, t, f, b in zip(students, fx["teacher"], fg, bg))
    torch.testing.assert_close(total, expected["value"], rtol=1e-5, atol=0)
    total.backward()
    for ours, theirs in zip(students, expected["grad_student"]):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-5, atol=1e-8)


def test_attentions_match_the_shared_definitions():
    from kdimpl.attention import spatial_attention
    from kdimpl.losses.pgd import _attentions

    x = torch.randn(2, 5, 3, 4)
    spatial, channel = _attentions(x, 0.8, 0.5)
    torch.testing.assert_close(spatial, spatial_attention(x, 0.8))
    torch.testing.assert_close(channel, 5 * torch.softmax(x.abs() / 0.5, dim=1))
    torch.testing.assert_close(channel.sum(1), torch.full((2, 3, 4), 5.0))


def _reg_inputs(seed=2, dtype=torch.float32, density=0.2):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 6, 7, 9, generator=gen, dtype=dtype)
    t = torch.randn(2, 6, 7, 9, generator=gen, dtype=dtype)
    w = torch.rand(2, 7, 9, generator=gen, dtype=dtype) * (torch.rand(2, 7, 9, generator=gen) < density)
    return s, t, w


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_reg_gathered_form_matches_the_dense_reference(scale):
    from kdimpl.losses.pgd import _reg_dense, _reg_gathered

    s0, t, w = _reg_inputs(dtype=torch.float64)
    s0, t = s0 * scale, t * scale
    positive = w != 0
    options = (0.8, 0.128, 8e-4)
    upstream = torch.rand((), dtype=torch.float64) + 0.5
    results = []
    for form, bound in ((_reg_dense, None), (_reg_gathered, None), (_reg_gathered, 40)):
        s = s0.clone().requires_grad_(True)
        total = form(s, t, w, positive, bound, *options).sum()
        (total * upstream).backward()
        results.append((total.detach(), s.grad))
    for value, grad in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-12, atol=1e-14)


def test_reg_max_positions_is_exact_when_the_bound_holds_and_refused_when_exceeded():
    s, t, w = _reg_inputs()
    count = int((w != 0).flatten(1).sum(1).max())
    expected = pgd_reg_loss(s, t, w)
    torch.testing.assert_close(pgd_reg_loss(s, t, w, max_positions=count), expected)
    torch.testing.assert_close(pgd_reg_loss(s, t, w, max_positions=10_000), expected)
    torch.testing.assert_close(pgd_reg_loss(s, t, w, reduction="none").sum() / (w != 0).sum(), expected)
    with pytest.raises(ValueError, match="max_positions"):
        pgd_reg_loss(s, t, w, max_positions=count - 1)
    with pytest.raises(ValueError, match="max_positions"):
        pgd_reg_loss(s, t, w, max_positions=0)
    for bound in (None, count):  # dense without a bound, gathered with one
        torch._dynamo.reset()
        function = lambda a, b, c: pgd_reg_loss(a, b, c, max_positions=bound)  # noqa: E731, B023
        compiled = torch.compile(function, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(s, t, w), expected)
    torch._dynamo.reset()


def test_reg_nan_outside_the_key_regions_still_gives_nan():
    s, t, w = _reg_inputs()
    outside = (w == 0).nonzero()[0]
    for side in ("student", "teacher"):
        s_nan, t_nan = s.clone(), t.clone()
        (s_nan if side == "student" else t_nan)[outside[0], 0, outside[1], outside[2]] = float("nan")
        for bound in (None, 60):
            assert torch.isnan(pgd_reg_loss(s_nan, t_nan, w, max_positions=bound)), side
        assert torch.isnan(pgd_cls_loss(s_nan, t_nan, w, (w == 0).float())), side


def test_empty_batch_gives_a_connected_zero():
    s = torch.randn(0, 4, 5, 6, requires_grad=True)
    t, fg = torch.randn(0, 4, 5, 6), torch.zeros(0, 5, 6)
    for loss in (pgd_cls_loss(s, t, fg, fg), pgd_reg_loss(s, t, fg), pgd_reg_loss(s, t, fg, max_positions=3)):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, s)
        assert grad.shape == s.shape


def test_integer_features_and_bad_options_are_refused():
    s, t, w = _reg_inputs()
    with pytest.raises(TypeError, match="floating"):
        pgd_reg_loss(s.long(), t.long(), w)
    with pytest.raises(TypeError, match="floating"):
        pgd_cls_loss(s.long(), t.long(), w, w)
    with pytest.raises(ValueError, match="spatial_temperature"):
        pgd_cls_loss(s, t, w, w, spatial_temperature=0.0)
    with pytest.raises(ValueError, match="fg_weight"):
        pgd_reg_loss(s, t, w, fg_weight=-1.0)
    with pytest.raises(ValueError, match="fg_map"):
        pgd_reg_loss(s, t, w[:, :-1])
    with pytest.raises(ValueError, match="teacher_cls_logits"):
        pgd_prediction_weights(torch.zeros(4, 4), torch.zeros(1, 5, 2), torch.zeros(1, 5, 4), [torch.zeros(0, 4)],
                               [torch.zeros(0, dtype=torch.long)])


def _one_image_inputs():
    anchors = torch.cat([_grid(3, 4, 8) - 8, _grid(3, 4, 8) + 8], -1).float()
    return anchors, torch.randn(1, 12, 2), anchors[None]


@pytest.mark.parametrize(
    "boxes, match",
    [
        ([torch.tensor([[0.0, 0.0, float("nan"), 4.0]])], "non-finite"),
        ([torch.tensor([[5.0, 0.0, 1.0, 4.0]])], "x2 < x1"),
        ([torch.zeros(0, 4), torch.zeros(0, 4)], "batch size"),
    ],
)
def test_bad_boxes_are_refused(boxes, match):
    anchors, logits, pred = _one_image_inputs()
    labels = [torch.zeros(b.shape[0], dtype=torch.long) for b in boxes]
    with pytest.raises(ValueError, match=match):
        pgd_prediction_weights(anchors, logits, pred, boxes, labels)
    if match != "batch size":
        with pytest.raises(ValueError, match=match):
            pgd_background_weights(anchors, boxes)


def test_labels_are_range_checked():
    anchors, logits, pred = _one_image_inputs()
    box = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    with pytest.raises(ValueError, match="gt_labels"):
        pgd_prediction_weights(anchors, logits, pred, box, [torch.tensor([2])])  # K = 2 classes
    with pytest.raises(ValueError, match="gt_labels"):
        pgd_prediction_weights(anchors, logits, pred, box, [torch.tensor([0, 1])])  # two labels, one box


def test_rng_makes_the_jitter_reproducible():
    anchors, logits, pred = _one_image_inputs()
    box, label = [torch.tensor([[0.0, 0.0, 30.0, 20.0]])], [torch.tensor([1])]
    runs = [pgd_prediction_weights(anchors, logits, pred, box, label, topk=4, rng=torch.Generator().manual_seed(5))
            for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_three_levels_in_one_line_with_boxes_given_once():
    from kdimpl import MultiLevelLoss, multilevel_loss

    gen = torch.Generator().manual_seed(4)
    sizes, strides = [(16, 24), (8, 12), (4, 6)], [8, 16, 32]
    points = [_grid(h, w, stride) for (h, w), stride in zip(sizes, strides)]
    anchors = torch.cat([torch.cat([p - 2 * stride, p + 2 * stride], -1) for p, stride in zip(points, strides)]).float()
    n, p = 2, anchors.shape[0]
    logits = torch.randn(n, p, 3, generator=gen)
    pred = anchors + 4 * torch.randn(n, p, 4, generator=gen)
    gt_boxes = [
        torch.tensor([[10.0, 8.0, 90.0, 60.0], [100.0, 40.0, 180.0, 120.0]]),
        torch.tensor([[20.0, 20.0, 150.0, 100.0]]),
    ]
    gt_labels = [torch.tensor([0, 2]), torch.tensor([1])]
    fg = pgd_split_levels(pgd_prediction_weights(anchors, logits, pred, gt_boxes, gt_labels, topk=6, rng=gen), sizes)
    bg = pgd_split_levels(pgd_background_weights(anchors, gt_boxes), sizes)
    students = [torch.randn(n, 5, h, w, generator=gen, requires_grad=True) for h, w in sizes]
    teachers = [torch.randn(n, 5, h, w, generator=gen) for h, w in sizes]
    assert sum(bool(m.any()) for m in fg) >= 2  # the key regions span levels
    cls = multilevel_loss(pgd_cls_loss, students, teachers, fg, bg)
    torch.testing.assert_close(cls, sum(pgd_cls_loss(*args) for args in zip(students, teachers, fg, bg)))
    reg = MultiLevelLoss(PGDRegLoss(), level_weights=[1.0, 1.25, 1.5])(students, teachers, fg)
    expected = sum(wt * pgd_reg_loss(*args) for wt, args in zip([1.0, 1.25, 1.5], zip(students, teachers, fg)))
    torch.testing.assert_close(reg, expected)
    (cls + reg).backward()
    assert all(s.grad is not None for s in students)
