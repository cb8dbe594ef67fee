"""TADF: the Gaussian mask and the three losses against per-box / per-proposal loops (no official code exists)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (  # noqa: E402
    MultiLevelLoss,
    TADFClsLoss,
    TADFFeatureLoss,
    TADFRegLoss,
    multilevel_loss,
    tadf_cls_loss,
    tadf_feature_loss,
    tadf_gaussian_mask,
    tadf_reg_loss,
)

IMAGE = (64, 96)


def _boxes(seed, counts, image=IMAGE):
    g = torch.Generator().manual_seed(seed)
    out = []
    for count in counts:
        xy = torch.rand(count, 2, generator=g) * torch.tensor([image[1] * 0.7, image[0] * 0.7])
        wh = 4 + torch.rand(count, 2, generator=g) * torch.tensor([image[1] * 0.3, image[0] * 0.3])
        out.append(torch.cat([xy, xy + wh], 1).double())
    return out


def _naive_mask(gt_boxes, image_size, feature_size, sigma_ratio=0.5):
    """Per-image, per-box, per-cell loop of the mask's formula."""
    img_h, img_w = image_size
    height, width = feature_size
    masks = torch.zeros(len(gt_boxes), height, width, dtype=torch.float64)
    for n, boxes in enumerate(gt_boxes):
        for box in boxes.tolist():
            x1, x2 = box[0] / img_w * width, box[2] / img_w * width
            y1, y2 = box[1] / img_h * height, box[3] / img_h * height
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            sx, sy = sigma_ratio * (x2 - x1), sigma_ratio * (y2 - y1)
            for i in range(height):
                for j in range(width):
                    value = math.exp(-((j + 0.5 - cx) ** 2) / (2 * sx**2) - ((i + 0.5 - cy) ** 2) / (2 * sy**2))
                    masks[n, i, j] = max(masks[n, i, j].item(), value)
    return masks


def test_mask_is_one_at_the_centre_and_exp_minus_half_one_sigma_away():
    # a box 32 px wide on a stride-8 map: 4 cells, sigma 2 cells; centre on the cell centre (3.5, 3.5)
    box = torch.tensor([[12.0, 12.0, 44.0, 44.0]])
    mask = tadf_gaussian_mask([box], (64, 64), (8, 8))
    assert mask[0, 3, 3].item() == pytest.approx(1.0)
    assert mask[0, 3, 5].item() == pytest.approx(math.exp(-0.5))  # two cells = one sigma along x
    assert mask[0, 1, 3].item() == pytest.approx(math.exp(-0.5))


def test_overlapping_boxes_keep_the_largest_value():
    a, b = torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.tensor([[16.0, 16.0, 64.0, 64.0]])
    both = tadf_gaussian_mask([torch.cat([a, b])], (64, 64), (8, 8))
    separate = torch.maximum(tadf_gaussian_mask([a], (64, 64), (8, 8)), tadf_gaussian_mask([b], (64, 64), (8, 8)))
    torch.testing.assert_close(both, separate)


@pytest.mark.parametrize("counts", [(3, 0), (12, 5)])
def test_mask_matches_the_per_box_loop_and_padding_is_ignored(counts):
    boxes = _boxes(0, counts)
    expected = _naive_mask(boxes, IMAGE, (8, 12))
    torch.testing.assert_close(tadf_gaussian_mask(boxes, IMAGE, (8, 12)), expected)
    padded = torch.zeros(len(boxes), max(counts), 4, dtype=torch.float64)
    valid = torch.zeros(len(boxes), max(counts), dtype=torch.bool)
    for i, b in enumerate(boxes):
        padded[i, : len(b)], valid[i, : len(b)] = b, True
    torch.testing.assert_close(tadf_gaussian_mask(padded, IMAGE, (8, 12), gt_mask=valid), expected)


def test_feature_loss_matches_the_formula():
    boxes = _boxes(1, (4, 2))
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 8, 12, generator=g, dtype=torch.float64), torch.randn(2, 5, 8, 12, generator=g, dtype=torch.float64)
    mask = _naive_mask(boxes, IMAGE, (8, 12), sigma_ratio=0.3)
    per_cell = mask * (s - t).pow(2).sum(1)
    torch.testing.assert_close(tadf_feature_loss(s, t, boxes, IMAGE, sigma_ratio=0.3), per_cell.sum() / (2 * mask.sum()))
    torch.testing.assert_close(tadf_feature_loss(s, t, boxes, IMAGE, sigma_ratio=0.3, reduction="none"), per_cell)
    torch.testing.assert_close(tadf_feature_loss(s, t, boxes, IMAGE, sigma_ratio=0.3, reduction="sum"), per_cell.sum())


def test_levels_take_the_boxes_once():
    boxes = _boxes(2, (3, 1))
    g = torch.Generator().manual_seed(1)
    sizes = [(16, 24), (8, 12), (4, 6)]
    students = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    teachers = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    boxes = [b.float() for b in boxes]
    expected = sum(tadf_feature_loss(s, t, boxes, IMAGE) for s, t in zip(students, teachers))
    torch.testing.assert_close(multilevel_loss(tadf_feature_loss, students, teachers, gt_boxes=boxes, image_size=IMAGE), expected)
    criterion = MultiLevelLoss(TADFFeatureLoss(), loss_weight=2.0)
    torch.testing.assert_close(criterion(students, teachers, gt_boxes=boxes, image_size=IMAGE), 2 * expected)


@pytest.mark.parametrize(
    ("boxes", "image_size", "error", "match"),
    [
        ([torch.tensor([[float("nan"), 0.0, 8.0, 8.0]]), torch.zeros(0, 4)], IMAGE, ValueError, "non-finite"),
        ([torch.tensor([[10.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)], IMAGE, ValueError, "x2 < x1"),
        ([torch.zeros(0, 4)], IMAGE, ValueError, "1 images but the features have batch size 2"),
        ([torch.zeros(0, 4)] * 2, (0, 96), ValueError, "image_size"),
        ([torch.zeros(0, 4)] * 2, (float("nan"), 96), ValueError, "image_size"),
        ([torch.zeros(0, 4)] * 2, (96, 64), ValueError, "not \\(width, height\\)"),
    ],
)
def test_bad_boxes_and_image_sizes_are_refused(boxes, image_size, error, match):
    s, t = torch.randn(2, 4, 8, 12), torch.randn(2, 4, 8, 12)
    with pytest.raises(error, match=match):
        tadf_feature_loss(s, t, boxes, image_size)


def test_feature_loss_edge_cases():
    boxes = [b.float() for b in _boxes(3, (2, 2))]
    s, t = torch.randn(2, 4, 8, 12), torch.randn(2, 4, 8, 12)
    with pytest.raises(TypeError, match="student"):
        tadf_feature_loss(s.long(), t, boxes, IMAGE)
    with pytest.raises(ValueError, match="sigma_ratio"):
        tadf_feature_loss(s, t, boxes, IMAGE, sigma_ratio=0.0)
    s_nan = s.clone()
    s_nan[1, 2, 0, 0] = float("nan")  # far from any box: weight ~0, still NaN out
    assert torch.isnan(tadf_feature_loss(s_nan, t, boxes, IMAGE))
    assert tadf_feature_loss(s, t, [torch.zeros(0, 4)] * 2, IMAGE).item() == 0.0
    empty = torch.randn(0, 4, 8, 12, requires_grad=True)
    loss = tadf_feature_loss(empty, torch.randn(0, 4, 8, 12), [], IMAGE)
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None and not empty.grad.any()


def _naive_cls(s, t, labels, temperature):
    total, count = 0.0, 0
    for r in range(s.shape[0]):
        p_s, p_t = torch.softmax(s[r], 0), torch.softmax(t[r], 0)
        if labels is not None and not p_t[labels[r]] > p_s[labels[r]]:
            continue
        q_s, q_t = torch.softmax(s[r] / temperature, 0), torch.softmax(t[r] / temperature, 0)
        total += temperature**2 * float((q_t * (q_t.log() - q_s.log())).sum())
        count += 1
    return total / max(count, 1), count


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_cls_loss_matches_the_per_proposal_loop(temperature):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (40,), generator=g)
    expected, count = _naive_cls(s, t, labels, temperature)
    assert 0 < count < 40
    assert tadf_cls_loss(s, t, labels, temperature=temperature).item() == pytest.approx(expected, rel=1e-10)
    everything, _ = _naive_cls(s, t, None, temperature)
    assert tadf_cls_loss(s, t, temperature=temperature).item() == pytest.approx(everything, rel=1e-10)


def test_cls_selection_by_hand_and_checks():
    s = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([1, 1])  # the teacher is surer of class 1 on row 0 only
    per_roi = tadf_cls_loss(s, t, labels, reduction="none")
    assert per_roi[0] > 0 and per_roi[1] == 0
    torch.testing.assert_close(tadf_cls_loss(s, t, labels), per_roi[0])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        tadf_cls_loss(s, t, torch.tensor([1, 3]))
    with pytest.raises(TypeError, match="labels"):
        tadf_cls_loss(s, t, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        tadf_cls_loss(s, t[:, :2], labels)
    s_nan = s.clone()
    s_nan[1, 0] = float("nan")  # an unselected row
    assert torch.isnan(tadf_cls_loss(s_nan, t, labels))
    torch.testing.assert_close(TADFClsLoss(temperature=2.0, loss_weight=3.0)(s, t, labels), 3 * tadf_cls_loss(s, t, labels, temperature=2.0))


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_reg_loss_matches_the_per_proposal_loop(beta):
    g = torch.Generator().manual_seed(5)
    r = 30
    gt = torch.cat([torch.rand(r, 2, generator=g) * 50, torch.rand(r, 2, generator=g) * 50 + 60], 1).double()
    proposals = gt + torch.randn(r, 4, generator=g).double() * 5
    refined = gt + torch.randn(r, 4, generator=g).double() * 5
    s, t = torch.randn(r, 4, generator=g).double(), torch.randn(r, 4, generator=g).double()
    total, count = 0.0, 0
    for i in range(r):
        if _iou(refined[i].tolist(), gt[i].tolist()) > _iou(proposals[i].tolist(), gt[i].tolist()):
            d = (s[i] - t[i]).abs()
            total += float(torch.where(d < beta, 0.5 * d**2 / max(beta, 1e-300), d - 0.5 * beta).sum())
            count += 1
    assert 0 < count < r
    assert tadf_reg_loss(s, t, refined, proposals, gt, beta=beta).item() == pytest.approx(total / count, rel=1e-10)
    assert TADFRegLoss(beta=beta)(s, t, refined, proposals, gt).item() == pytest.approx(total / count, rel=1e-10)


def test_reg_checks_and_edge_cases():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    s, t = torch.zeros(1, 4), torch.ones(1, 4)
    with pytest.raises(ValueError, match="proposals"):
        tadf_reg_loss(s, t, boxes, torch.zeros(2, 4), boxes)
    with pytest.raises(ValueError, match="student_deltas"):
        tadf_reg_loss(torch.zeros(1, 3), t, boxes, boxes, boxes)
    with pytest.raises(ValueError, match="beta"):
        tadf_reg_loss(s, t, boxes, boxes, boxes, beta=-1.0)
    # equal IoU: the teacher does not improve the proposal, nothing is distilled
    assert tadf_reg_loss(s, t, boxes, boxes, boxes).item() == 0.0
    assert torch.isnan(tadf_reg_loss(torch.full((1, 4), float("nan")), t, boxes, boxes, boxes))
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = tadf_reg_loss(empty, torch.zeros(0, 4), *(torch.zeros(0, 4),) * 3)
    loss.backward()
    assert loss.item() == 0.0 and not empty.grad.any()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_fast_masked_error_equals_the_reference(scale):
    from kdimpl.losses.tadf import _MaskedSquaredError, _masked_squared_error

    g = torch.Generator().manual_seed(6)
    s = (scale * torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = scale * torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 6, 7, generator=g, dtype=torch.float64)
    weights = torch.randn(2, 6, 7, generator=g, dtype=torch.float64)
    fast, reference = _MaskedSquaredError.apply(s, t, mask), _masked_squared_error(s, t, mask)
    torch.testing.assert_close(fast, reference)
    grad_fast, = torch.autograd.grad((fast * weights).sum(), s)
    grad_reference, = torch.autograd.grad((reference * weights).sum(), s)
    torch.testing.assert_close(grad_fast, grad_reference)
    assert torch.autograd.gradcheck(lambda x: _MaskedSquaredError.apply(x, t, mask), (s,), fast_mode=True)
