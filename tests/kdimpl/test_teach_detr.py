"""Teach-DETR: parity with the official criterion, the equation against a direct computation, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from kdimpl import MultiLevelLoss, TeachDETRLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.teach_detr import teach_detr_loss  # noqa: E402
from kdimpl.ops import aligned_box_iou, box_cxcywh_to_xyxy, detr_match_cost  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "teach_detr" / "official_teach_detr.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE)


def _inputs(seed=0, counts=(3, 2), queries=6, classes=4, size=(48, 80)):
    g = torch.Generator().manual_seed(seed)
    n = len(counts)
    logits = torch.randn(n, queries, classes, generator=g, dtype=torch.float64)
    raw = torch.randn(n, queries, 4, generator=g, dtype=torch.float64)
    boxes = torch.cat([0.2 + 0.6 * raw[..., :2].sigmoid(), 0.05 + 0.4 * raw[..., 2:].sigmoid()], dim=-1)
    h, w = size
    t_boxes, t_labels, t_scores = [], [], []
    for m in counts:
        u = torch.rand(m, 4, generator=g, dtype=torch.float64)
        x1, y1 = u[:, 0] * w * 0.6, u[:, 1] * h * 0.6
        t_boxes.append(torch.stack([x1, y1, x1 + 4 + u[:, 2] * w * 0.4, y1 + 4 + u[:, 3] * h * 0.4], dim=1))
        t_labels.append(torch.randint(0, classes, (m,), generator=g))
        t_scores.append(torch.rand(m, generator=g, dtype=torch.float64))
    return logits, boxes, t_scores, t_boxes, t_labels, size


# ---------------------------------------------------------------- parity with LeonHLJ/Teach-DETR@8e15829


@pytest.mark.parametrize("case", ["a", "b"])
def test_matches_official_criterion(official, case):
    d = official[case]
    logits = [x.clone().requires_grad_(True) for x in d["student_logits"]]
    boxes = [x.clone().requires_grad_(True) for x in d["student_boxes"]]
    loss = multilevel_loss(teach_detr_loss, logits, [d["teacher_scores"]] * 2, boxes,
                           teacher_boxes=d["teacher_boxes"], teacher_labels=d["teacher_labels"],
                           image_size=d["image_size"])
    loss.backward()
    # the official GIoU term is 1 - GIoU * s: larger by giou_weight * sum(1 - s) / M per layer (every box is matched)
    scores = torch.cat(d["teacher_scores"]).double()
    offset = len(logits) * 2.0 * (1 - scores).sum() / max(scores.numel(), 1)
    torch.testing.assert_close(loss.detach() + offset, d["official_total"], rtol=1e-10, atol=1e-10)
    for ours, theirs in zip(logits + boxes, d["grad_logits"] + d["grad_boxes"]):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", [0, 1])
def test_each_layer_matches_official(official, layer):
    d = official["a"]
    full = teach_detr_loss(d["student_logits"][layer], d["teacher_scores"], d["student_boxes"][layer],
                           d["teacher_boxes"], d["teacher_labels"], d["image_size"])
    scores = torch.cat(d["teacher_scores"]).double()
    expected = (d["official_terms"][layer] * torch.tensor([2.0, 5.0, 2.0], dtype=torch.float64)).sum()
    torch.testing.assert_close(full + 2.0 * (1 - scores).sum() / scores.numel(), expected)


# ---------------------------------------------------------------- the equation


def test_equation_against_direct_computation():
    logits, boxes, t_scores, t_boxes, t_labels, (h, w) = _inputs(counts=(3, 2), queries=5)
    loss = teach_detr_loss(logits, t_scores, boxes, t_boxes, t_labels, (h, w), reduction="none")
    from scipy.optimize import linear_sum_assignment

    alpha, total = 0.25, 0.0
    for i in range(logits.shape[0]):
        tb = t_boxes[i] / torch.tensor([w, h, w, h], dtype=torch.float64)
        tb = torch.cat([(tb[:, :2] + tb[:, 2:]) / 2, tb[:, 2:] - tb[:, :2]], dim=1)
        onehot = torch.nn.functional.one_hot(t_labels[i], logits.shape[-1]).double()
        cost = detr_match_cost(logits[i : i + 1], boxes[i : i + 1], onehot[None], tb[None], class_cost="focal",
                               class_weight=2.0)[0]
        rows, cols = linear_sum_assignment(cost.numpy())
        for q in range(logits.shape[1]):
            target, weight, box = torch.zeros(logits.shape[-1], dtype=torch.float64), 0.5, 0.0
            if q in rows:
                m = int(cols[list(rows).index(q)])
                target, weight = onehot[m], float(t_scores[i][m])
                giou = aligned_box_iou(box_cxcywh_to_xyxy(boxes[i, q]), box_cxcywh_to_xyxy(tb[m]), generalized=True)
                box = weight * (5.0 * (boxes[i, q] - tb[m]).abs().sum() + 2.0 * (1 - giou))
            p = logits[i, q].sigmoid()
            pt = torch.where(target > 0, p, 1 - p)
            at = torch.where(target > 0, torch.tensor(alpha), torch.tensor(1 - alpha)).double()
            focal = (-at * (1 - pt) ** 2 * pt.log()).sum()
            term = 2.0 * weight * focal + box
            torch.testing.assert_close(loss[i, q], term)
            total = total + term
    mean = teach_detr_loss(logits, t_scores, boxes, t_boxes, t_labels, (h, w))
    torch.testing.assert_close(mean, total / 5)


def test_padded_tensors_equal_lists():
    logits, boxes, t_scores, t_boxes, t_labels, size = _inputs(counts=(2, 2))
    listed = teach_detr_loss(logits, t_scores, boxes, t_boxes, t_labels, size)
    padded = teach_detr_loss(logits, torch.stack(t_scores), boxes, torch.stack(t_boxes), torch.stack(t_labels), size)
    torch.testing.assert_close(listed, padded)


def test_confidence_scales_the_matched_terms():
    logits, boxes, t_scores, t_boxes, t_labels, size = _inputs(counts=(3, 2))
    ones = [torch.ones_like(s) for s in t_scores]
    half = [0.5 * torch.ones_like(s) for s in t_scores]
    full = teach_detr_loss(logits, ones, boxes, t_boxes, t_labels, size, background_weight=1.0, reduction="sum")
    halved = teach_detr_loss(logits, half, boxes, t_boxes, t_labels, size, background_weight=0.5, reduction="sum")
    torch.testing.assert_close(halved, full / 2)


def test_layers_in_one_line_and_module_twin():
    logits, boxes, t_scores, t_boxes, t_labels, size = _inputs()
    layers = [logits, logits * 0.5, logits + 1]
    box_layers = [boxes, boxes.flip(1), boxes]
    shared = dict(teacher_boxes=t_boxes, teacher_labels=t_labels, image_size=size)
    total = multilevel_loss(teach_detr_loss, layers, [t_scores] * 3, box_layers, **shared)
    expected = sum(teach_detr_loss(z, t_scores, b, **shared) for z, b in zip(layers, box_layers))
    torch.testing.assert_close(total, expected)
    module = MultiLevelLoss([TeachDETRLoss(loss_weight=2.0) for _ in range(3)])
    torch.testing.assert_close(module(layers, [t_scores] * 3, box_layers, **shared), 2 * expected)


# ---------------------------------------------------------------- checks and edge cases


def test_rejects_bad_teacher_inputs():
    logits, boxes, t_scores, t_boxes, t_labels, size = _inputs()
    with pytest.raises(ValueError, match="teacher_scores"):
        teach_detr_loss(logits, [t_scores[0][:1], t_scores[1]], boxes, t_boxes, t_labels, size)
    with pytest.raises(ValueError, match="teacher_labels"):
        teach_detr_loss(logits, t_scores, boxes, t_boxes, [t_labels[0] + 10, t_labels[1]], size)
    with pytest.raises(ValueError, match="teacher_boxes"):
        teach_detr_loss(logits, t_scores, boxes, t_boxes[:1], t_labels, size)
    with pytest.raises(ValueError, match="teacher_boxes"):
        teach_detr_loss(logits, t_scores, boxes, [t_boxes[0][:, [2, 1, 0, 3]], t_boxes[1]], t_labels, size)
    with pytest.raises(ValueError, match="teacher_boxes"):
        bad = t_boxes[0].clone()
        bad[0, 0] = float("inf")
        teach_detr_loss(logits, t_scores, boxes, [bad, t_boxes[1]], t_labels, size)
    with pytest.raises(ValueError, match="image_size"):
        teach_detr_loss(logits, t_scores, boxes, t_boxes, t_labels, (0, 80))
    with pytest.raises(TypeError, match="teacher_scores"):
        teach_detr_loss(logits, [(s * 10).long() for s in t_scores], boxes, t_boxes, t_labels, size)
    with pytest.raises(TypeError, match="student_logits"):
        teach_detr_loss(logits.long(), t_scores, boxes, t_boxes, t_labels, size)


@pytest.mark.parametrize("side", ["student_logits", "teacher_scores"])
def test_nan_in_gives_nan_out(side):
    logits, boxes, t_scores, t_boxes, t_labels, size = _inputs()
    if side == "student_logits":
        logits = torch.full_like(logits, float("nan"))
    else:
        t_scores = [torch.full_like(s, float("nan")) for s in t_scores]
    assert torch.isnan(teach_detr_loss(logits, t_scores, boxes, t_boxes, t_labels, size))


def test_no_teacher_boxes_and_empty_batch():
    logits, boxes, _, _, _, size = _inputs(counts=(0, 0))
    logits.requires_grad_(True)
    empty = [torch.zeros(0, dtype=torch.float64)] * 2
    loss = teach_detr_loss(logits, empty, boxes, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, size)
    assert torch.isfinite(loss) and loss > 0  # every query learns background with weight 0.5
    loss.backward()
    student = torch.zeros(0, 6, 4, requires_grad=True)
    zero = teach_detr_loss(student, [], torch.zeros(0, 6, 4), [], [], size)
    assert zero.item() == 0.0
    zero.backward()
    assert student.grad is not None and not student.grad.any()
