"""UniKD (no official code; unverified): the balanced knowledge loss, the extractor and its stage-1 objectives."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from kdimpl import (  # noqa: E402
    ChannelAdapter,
    UniKDKnowledgeExtractor,
    UniKDLoss,
    UniKDPredictionHead,
    multilevel_loss,
    unikd_content_extractor_loss,
    unikd_loss,
    unikd_position_extractor_loss,
    unikd_sample_position_boxes,
)
from kdimpl.ops import aligned_box_iou, box_cxcywh_to_xyxy, box_iou  # noqa: E402


def test_balanced_mse_analytic_case():
    # one positive with squared error 4, three negatives with 0: 4 + 0, where the plain mean is 1
    s, t = torch.zeros(1, 4, 1), torch.tensor([[[2.0], [0.0], [0.0], [0.0]]])
    positive = torch.tensor([[True, False, False, False]])
    assert float(unikd_loss(s, t, positive)) == 4.0
    assert float(unikd_loss(s, t)) == 1.0


def test_balanced_mse_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 7, 5, generator=g, dtype=torch.float64), torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    positive = torch.rand(2, 7, generator=g) > 0.6
    pos = [((s[n, q] - t[n, q]) ** 2).mean() for n in range(2) for q in range(7) if positive[n, q]]
    neg = [((s[n, q] - t[n, q]) ** 2).mean() for n in range(2) for q in range(7) if not positive[n, q]]
    expected = torch.stack(pos).mean() + torch.stack(neg).mean()
    torch.testing.assert_close(unikd_loss(s, t, positive), expected)
    torch.testing.assert_close(UniKDLoss(loss_weight=10.0)(s, t, positive), 10 * expected)
    # one group empty: it adds 0
    torch.testing.assert_close(unikd_loss(s, t, torch.ones(2, 7, dtype=torch.bool)), F.mse_loss(s, t))


def test_checks():
    s = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="same shape"):
        unikd_loss(s, torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="student"):
        unikd_loss(s.long(), s)
    with pytest.raises(ValueError, match="positive_mask"):
        unikd_loss(s, s, torch.ones(2, 4, dtype=torch.bool))
    assert torch.isnan(unikd_loss(torch.full_like(s, float("nan")), s, torch.ones(2, 3, dtype=torch.bool)))


def test_extractor_shapes_and_modes():
    teacher = [torch.randn(2, 16, 8, 12), torch.randn(2, 16, 4, 6), torch.randn(2, 16, 2, 3)]
    content = UniKDKnowledgeExtractor(16, num_queries=10, num_heads=2, ffn_channels=32, num_levels=3)
    assert content(teacher).shape == (2, 10, 16)
    position = UniKDKnowledgeExtractor(16, mode="position", num_heads=2, ffn_channels=32, num_levels=3)
    boxes, positive, _ = unikd_sample_position_boxes([torch.tensor([[4.0, 4.0, 40.0, 30.0]])] * 2, (32, 48), 7,
                                                     rng=torch.Generator().manual_seed(0))
    assert position(teacher, boxes=boxes, image_size=(32, 48)).shape == (2, 7, 16)
    with pytest.raises(ValueError, match="needs boxes"):
        position(teacher)
    with pytest.raises(ValueError, match="num_levels"):
        UniKDKnowledgeExtractor(16, num_queries=4, num_heads=2, num_levels=2)(teacher)
    with pytest.raises(ValueError, match="mode"):
        UniKDKnowledgeExtractor(16, mode="both")


def test_stage_two_trains_the_student_through_the_frozen_extractor():
    torch.manual_seed(0)
    ake = UniKDKnowledgeExtractor(16, num_queries=6, num_heads=2, ffn_channels=32, num_levels=2).requires_grad_(False)
    adapter = ChannelAdapter(8, 16)
    teacher = [torch.randn(2, 16, 6, 8), torch.randn(2, 16, 3, 4)]
    student = [torch.randn(2, 8, 6, 8, requires_grad=True), torch.randn(2, 8, 3, 4, requires_grad=True)]
    queries = ake.queries(teacher)
    z_t = ake.extract(queries, teacher)
    z_s = ake.extract(queries, [adapter(x) for x in student])
    loss = UniKDLoss(loss_weight=10.0)(z_s, z_t)
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in student)
    assert all(p.grad is not None for p in adapter.parameters())
    assert all(p.grad is None for p in ake.parameters())
    # the teacher's own knowledge through the same queries is the target: zero at student == teacher
    assert float(unikd_loss(ake.extract(queries, teacher), z_t)) == 0.0


def test_levels_in_one_line():
    zs = [torch.randn(2, 5, 4) for _ in range(3)]
    zt = [torch.randn(2, 5, 4) for _ in range(3)]
    masks = [torch.rand(2, 5) > 0.5 for _ in range(3)]
    expected = sum(unikd_loss(s, t, m) for s, t, m in zip(zs, zt, masks))
    torch.testing.assert_close(multilevel_loss(unikd_loss, zs, zt, masks), expected)


def test_position_boxes_respect_the_iou_thresholds():
    gt = [torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 5.0, 90.0, 60.0]]), torch.zeros(0, 4)]
    boxes, positive, matched = unikd_sample_position_boxes(gt, (64, 96), 40, rng=torch.Generator().manual_seed(1))
    assert boxes.shape == (2, 40, 4) and positive.shape == (2, 40)
    assert int(positive[0].sum()) == 20 and not positive[1].any()
    assert (matched[positive] >= 0).all() and (matched[~positive] == -1).all()
    iou = aligned_box_iou(boxes[0][positive[0]], gt[0][matched[0][positive[0]]])
    assert (iou > 0.6).all()
    assert (box_iou(boxes[0][~positive[0]], gt[0]).amax(1) < 0.4).all()
    assert ((boxes[..., 2:] > boxes[..., :2]).all())
    again = unikd_sample_position_boxes(gt, (64, 96), 40, rng=torch.Generator().manual_seed(1))[0]
    assert torch.equal(boxes, again)


def _focal_sum(logits, targets):
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    return (ce * (1 - p_t) ** 2 * (0.25 * targets + 0.75 * (1 - targets))).sum()


def _set_loss_brute_force(logits, boxes, gt_xyxy, labels, image_size):
    """One image: the assignment minimising Deformable DETR's matching cost, tried over every permutation, and its loss."""
    h, w = image_size
    x1, y1, x2, y2 = (gt_xyxy / torch.tensor([w, h, w, h], dtype=boxes.dtype)).unbind(-1)
    target = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
    p = logits.sigmoid()
    pos_cost = -(p + 1e-12).log() * 0.25 * (1 - p) ** 2
    neg_cost = -(1 - p + 1e-12).log() * 0.75 * p**2

    def giou(q, m):
        return aligned_box_iou(box_cxcywh_to_xyxy(boxes[q]), box_cxcywh_to_xyxy(target[m]), generalized=True)

    def cost(perm):
        return sum(2 * (pos_cost[q, labels[m]] - neg_cost[q, labels[m]]) + 5 * (boxes[q] - target[m]).abs().sum()
                   - 2 * giou(q, m) for m, q in enumerate(perm))

    perm = min(itertools.permutations(range(logits.shape[0]), len(labels)), key=lambda perm: float(cost(perm)))
    cls_t = torch.zeros_like(logits)
    for m, q in enumerate(perm):
        cls_t[q, labels[m]] = 1.0
    l1 = sum((boxes[q] - target[m]).abs().sum() for m, q in enumerate(perm))
    g = sum(1 - giou(q, m) for m, q in enumerate(perm))
    return (2 * _focal_sum(logits, cls_t) + 5 * l1 + 2 * g) / len(labels)


def test_content_objective_uses_the_optimal_assignment():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 3, generator=g, dtype=torch.float64)
    boxes = torch.rand(1, 4, 4, generator=g, dtype=torch.float64) * 0.4 + 0.2
    gt = torch.tensor([[8.0, 6.0, 60.0, 40.0], [50.0, 30.0, 90.0, 60.0]], dtype=torch.float64)
    labels = torch.tensor([1, 2])
    value = unikd_content_extractor_loss(logits, boxes, [gt], [labels], (64, 96))
    torch.testing.assert_close(value, _set_loss_brute_force(logits[0], boxes[0], gt, labels.tolist(), (64, 96)))
    # permuting the queries permutes the matching: the loss is the same
    order = torch.tensor([2, 0, 3, 1])
    permuted = unikd_content_extractor_loss(logits[:, order], boxes[:, order], [gt], [labels], (64, 96))
    torch.testing.assert_close(permuted, value)


def test_position_objective_equals_a_direct_formula():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 2, generator=g, dtype=torch.float64)
    boxes = torch.rand(1, 3, 4, generator=g, dtype=torch.float64) * 0.4 + 0.2
    gt = torch.tensor([[8.0, 6.0, 60.0, 40.0]], dtype=torch.float64)
    matched = torch.tensor([[0, -1, 0]])
    value = unikd_position_extractor_loss(logits, boxes, matched, [gt], [torch.tensor([1])], (64, 96))
    cls_t = torch.zeros(3, 2, dtype=torch.float64)
    cls_t[0, 1] = cls_t[2, 1] = 1.0
    focal = _focal_sum(logits[0], cls_t)
    target = torch.tensor([34.0 / 96, 23.0 / 64, 52.0 / 96, 34.0 / 64], dtype=torch.float64)
    l1 = (boxes[0, [0, 2]] - target).abs().sum()
    giou = (1 - aligned_box_iou(box_cxcywh_to_xyxy(boxes[0, [0, 2]]), box_cxcywh_to_xyxy(target.expand(2, 4)),
                                generalized=True)).sum()
    torch.testing.assert_close(value, (2 * focal + 5 * l1 + 2 * giou) / 2)
    with pytest.raises(ValueError, match="beyond"):
        unikd_position_extractor_loss(logits, boxes, torch.tensor([[1, -1, 0]]), [gt], [torch.tensor([1])], (64, 96))
    with pytest.raises(ValueError, match="gt_labels"):
        unikd_position_extractor_loss(logits, boxes, matched, [gt], [torch.tensor([5])], (64, 96))


def test_objectives_without_boxes_and_with_a_head():
    head = UniKDPredictionHead(8, 3)
    logits, boxes = head(torch.randn(2, 5, 8))
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    no_labels = [torch.zeros(0, dtype=torch.long)] * 2
    loss = unikd_content_extractor_loss(logits, boxes, empty, no_labels, (32, 32))
    loss = loss + unikd_position_extractor_loss(logits, boxes, torch.full((2, 5), -1), empty, no_labels, (32, 32))
    loss.backward()
    assert torch.isfinite(loss) and head.classifier.weight.grad is not None
