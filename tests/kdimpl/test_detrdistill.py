"""DETRDistill: parity with the official code, the equations against brute force, the Hungarian helper, checks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from kdimpl import DETRDistillFeatureLoss, MultiLevelLoss, multilevel_loss
from kdimpl.losses.detrdistill import (
    detrdistill_feature_loss,
    detrdistill_group_loss,
    detrdistill_pred_loss,
    detrdistill_query_weights,
)
from kdimpl.ops import aligned_box_iou, box_cxcywh_to_xyxy, detr_match_cost, hungarian_match

FIXTURE = Path(__file__).parent / "fixtures" / "detrdistill" / "official_detrdistill.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE)


def _boxes(generator, *shape):
    raw = torch.randn(*shape, 4, generator=generator)
    return torch.cat([0.15 + 0.7 * raw[..., :2].sigmoid(), 0.05 + 0.5 * raw[..., 2:].sigmoid()], dim=-1)


# ---------------------------------------------------------------- parity with BIVLab-USTC/DETRDistill@b5ee33d


@pytest.mark.parametrize("layer", [0, 1])
def test_pred_loss_matches_official(official, layer):
    expected = official["pred"][layer]
    logits = official["student_logits"][layer].clone().requires_grad_(True)
    boxes = official["student_boxes"][layer].clone().requires_grad_(True)
    loss = detrdistill_pred_loss(logits, official["teacher_logits"][layer], boxes, official["teacher_boxes"][layer])
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected["total"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad, expected["grad_logits"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(boxes.grad, expected["grad_boxes"], rtol=1e-4, atol=1e-6)


def test_pred_loss_over_layers_in_one_line(official):
    total = multilevel_loss(detrdistill_pred_loss, list(official["student_logits"]), list(official["teacher_logits"]),
                            list(official["student_boxes"]), list(official["teacher_boxes"]))
    torch.testing.assert_close(total, sum(d["total"] for d in official["pred"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [0, 1])
def test_group_loss_matches_official(official, layer):
    expected = official["group"][layer]
    logits = official["group_logits"][layer].clone().requires_grad_(True)
    boxes = official["group_boxes"][layer].clone().requires_grad_(True)
    loss = detrdistill_group_loss(logits, official["teacher_logits"][layer], boxes, official["teacher_boxes"][layer],
                                  official["gt_boxes"], official["gt_labels"], official["image_size"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected["total"].reshape(()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad, expected["grad_logits"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(boxes.grad, expected["grad_boxes"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stage", [0, 1])
def test_feature_loss_matches_official(official, stage):
    expected = official["feature"][stage]
    students = [s.clone().requires_grad_(True) for s in official["student_features"]]
    options = {
        "teacher_queries": official["teacher_queries"][stage],
        "teacher_logits": official["teacher_logits"][stage],
        "teacher_boxes": official["teacher_boxes"][stage],
        "gt_boxes": official["gt_boxes"],
        "image_size": official["image_size"],
        "top_k": official["top_k"],
    }
    loss = multilevel_loss(detrdistill_feature_loss, students, official["teacher_features"], **options)
    grads = torch.autograd.grad(loss, students)
    torch.testing.assert_close(loss.detach(), expected["total"], rtol=1e-5, atol=1e-7)
    for grad, want in zip(grads, expected["grads"]):
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-8)
    _, weights = detrdistill_query_weights(options["teacher_logits"], options["teacher_boxes"], options["gt_boxes"],
                                           options["image_size"], options["top_k"])
    torch.testing.assert_close(weights, expected["weights"], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- the Hungarian helper


def _brute_force(cost):
    rows, cols = cost.shape
    best, best_pairs = math.inf, None
    if rows <= cols:
        candidates = ([(r, c) for r, c in enumerate(perm)] for perm in itertools.permutations(range(cols), rows))
    else:
        candidates = ([(r, c) for c, r in enumerate(perm)] for perm in itertools.permutations(range(rows), cols))
    for pairs in candidates:
        value = sum(float(cost[r, c]) for r, c in pairs)
        if value < best:
            best, best_pairs = value, pairs
    matched = torch.full((rows,), -1, dtype=torch.long)
    for r, c in best_pairs:
        matched[r] = c
    return matched, best


@pytest.mark.parametrize("rows,cols", [(4, 4), (5, 3), (3, 5)])
def test_hungarian_match_is_the_brute_force_optimum(rows, cols):
    generator = torch.Generator().manual_seed(rows * 10 + cols)
    cost = torch.rand(2, rows, cols, generator=generator, dtype=torch.float64)
    matched = hungarian_match(cost)
    for i in range(2):
        want, best = _brute_force(cost[i])
        got = sum(float(cost[i, r, c]) for r, c in enumerate(matched[i].tolist()) if c >= 0)
        assert got == pytest.approx(best)
        assert torch.equal(matched[i], want)
        assert (matched[i] >= 0).sum() == min(rows, cols)


def test_hungarian_match_skips_padding_columns_and_survives_nan():
    cost = torch.tensor([[[0.0, 9.0, 1.0], [5.0, 0.0, 2.0]]])
    assert hungarian_match(cost, torch.tensor([[True, False, True]])).tolist() == [[0, 2]]
    assert hungarian_match(cost, torch.tensor([[False, False, False]])).tolist() == [[-1, -1]]
    nan_cost = torch.full((1, 2, 2), float("nan"))
    assert sorted(hungarian_match(nan_cost)[0].tolist()) == [0, 1]


def test_match_cost_equals_its_formula():
    generator = torch.Generator().manual_seed(3)
    logits, boxes = torch.randn(1, 3, 4, generator=generator), _boxes(generator, 1, 3)
    probs, target_boxes = torch.rand(1, 2, 4, generator=generator), _boxes(generator, 1, 2)
    cost = detr_match_cost(logits, boxes, probs, target_boxes, class_weight=1.0, l1_weight=5.0, giou_weight=2.0)
    for p in range(3):
        for m in range(2):
            z, q = logits[0, p], probs[0, m]
            bce = -(q * torch.log(torch.sigmoid(z)) + (1 - q) * torch.log(1 - torch.sigmoid(z))).sum()
            l1 = (boxes[0, p] - target_boxes[0, m]).abs().sum()
            giou = aligned_box_iou(box_cxcywh_to_xyxy(boxes[0, p]), box_cxcywh_to_xyxy(target_boxes[0, m]),
                                   generalized=True)
            torch.testing.assert_close(cost[0, p, m], bce + 5 * l1 - 2 * giou, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the equations against a naive loop


def _naive_pred_loss(s_logits, t_logits, s_boxes, t_boxes):
    """The best total cost over every matching of the student queries to the teacher's, then the loss."""
    total, matched_count = 0.0, 0
    for i in range(s_logits.shape[0]):
        q_t = torch.sigmoid(t_logits[i])
        xyxy = box_cxcywh_to_xyxy(t_boxes[i]).clamp(0, 1)
        b_t = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
        cost = detr_match_cost(s_logits[i : i + 1], s_boxes[i : i + 1], q_t[None], b_t[None])[0]
        matched, _ = _brute_force(cost)
        for s in range(s_logits.shape[1]):
            t = int(matched[s])
            target = q_t[t] if t >= 0 else torch.zeros_like(q_t[0])
            p = torch.sigmoid(s_logits[i, s])
            total = total - (target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum()
            if t >= 0:
                matched_count += 1
                giou = aligned_box_iou(box_cxcywh_to_xyxy(s_boxes[i, s]), box_cxcywh_to_xyxy(b_t[t]), generalized=True)
                total = total + 5 * (s_boxes[i, s] - b_t[t]).abs().sum() + 2 * (1 - giou)
    return total / max(matched_count, 1)


@pytest.mark.parametrize("queries,teacher_queries", [(4, 4), (5, 3)])
def test_pred_loss_equals_the_naive_form(queries, teacher_queries):
    generator = torch.Generator().manual_seed(queries)
    s_logits = torch.randn(2, queries, 3, generator=generator, dtype=torch.float64)
    t_logits = torch.randn(2, teacher_queries, 3, generator=generator, dtype=torch.float64)
    s_boxes = _boxes(generator, 2, queries).double()
    t_boxes = _boxes(generator, 2, teacher_queries).double()
    t_boxes[0, 0] = torch.tensor([0.05, 0.5, 0.4, 0.3], dtype=torch.float64)  # sticks out: clamped
    loss = detrdistill_pred_loss(s_logits, t_logits, s_boxes, t_boxes)
    torch.testing.assert_close(loss, _naive_pred_loss(s_logits, t_logits, s_boxes, t_boxes))


def test_unmatched_student_queries_learn_background():
    s_logits, t_logits = torch.randn(1, 3, 2), torch.full((1, 1, 2), 20.0)
    s_logits[0, 0] = 20.0  # query 0 takes the one teacher query
    s_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]])
    per_query = detrdistill_pred_loss(s_logits, t_logits, s_boxes, s_boxes[:, :1], reduction="none")
    bce_zero = torch.nn.functional.binary_cross_entropy_with_logits(s_logits, torch.zeros_like(s_logits),
                                                                    reduction="none").sum(-1)
    unmatched = [1, 2]
    torch.testing.assert_close(per_query[0, unmatched], bce_zero[0, unmatched])


def test_feature_mask_hand_case():
    # queries e1, e2 with weights 0.5, 0.1 (one class, no boxes: w = score) at four pixels
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]).T.reshape(1, 2, 1, 4)
    queries = torch.eye(2)[None]
    logits = torch.tensor([[[0.0], [math.log(0.1 / 0.9)]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 2])
    loss = detrdistill_feature_loss(torch.zeros_like(teacher), teacher, queries, logits, boxes, [torch.zeros(0, 4)],
                                    (10, 40), top_k=2, reduction="none")
    mask = torch.tensor([1.0, 0.2, 0.6 / math.sqrt(2) / (0.5), 0.4 / math.sqrt(2) / 0.5])
    torch.testing.assert_close(loss, (mask * teacher).pow(2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mask, torch.tensor([1.0, 0.2, 0.8485, 0.5657]), rtol=1e-4, atol=1e-4)


def test_feature_weights_use_the_best_ground_truth_iou():
    logits = torch.tensor([[[3.0, -5.0], [-5.0, -5.0]]])  # query 0, class 0 is the top pair
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.2, 0.2]]])
    gt = [torch.tensor([[0.0, 0.0, 50.0, 100.0], [0.0, 0.0, 25.0, 25.0]])]  # image (100, 100): IoU 0.5 and 0.25
    index, weight = detrdistill_query_weights(logits, boxes, gt, (100, 100), top_k=1)
    assert index.tolist() == [[0]]
    torch.testing.assert_close(weight, torch.sigmoid(torch.tensor([[3.0]])) * 0.5)


def test_feature_loss_over_three_levels_with_boxes_given_once():
    generator = torch.Generator().manual_seed(5)
    sizes = [(16, 24), (8, 12), (4, 6)]
    students = [torch.randn(2, 8, h, w, generator=generator) for h, w in sizes]
    teachers = [torch.randn(2, 8, h, w, generator=generator) for h, w in sizes]
    shared = {"teacher_queries": torch.randn(2, 6, 8, generator=generator),
                  "teacher_logits": torch.randn(2, 6, 3, generator=generator), "teacher_boxes": _boxes(generator, 2, 6),
                  "gt_boxes": [torch.tensor([[4.0, 4.0, 60.0, 40.0]]), torch.zeros(0, 4)], "image_size": (128, 192)}
    total = multilevel_loss(detrdistill_feature_loss, students, teachers, **shared)
    torch.testing.assert_close(total, sum(detrdistill_feature_loss(s, t, **shared) for s, t in zip(students, teachers)))
    module = MultiLevelLoss([DETRDistillFeatureLoss() for _ in sizes])
    torch.testing.assert_close(module(students, teachers, **shared), total)


def test_teacher_inputs_get_no_gradient():
    generator = torch.Generator().manual_seed(6)
    t_queries = torch.randn(2, 6, 8, generator=generator, requires_grad=True)
    t_logits = torch.randn(2, 6, 3, generator=generator, requires_grad=True)
    t_boxes = _boxes(generator, 2, 6).requires_grad_(True)
    student = torch.randn(2, 8, 5, 7, generator=generator, requires_grad=True)
    loss = detrdistill_feature_loss(student, torch.randn(2, 8, 5, 7), t_queries, t_logits, t_boxes,
                                    [torch.zeros(0, 4)] * 2, (40, 56))
    s_logits = torch.randn(2, 6, 3, generator=generator, requires_grad=True)
    s_boxes = _boxes(generator, 2, 6).requires_grad_(True)
    loss = loss + detrdistill_pred_loss(s_logits, t_logits, s_boxes, t_boxes)
    gt = [torch.tensor([[1.0, 2.0, 30.0, 20.0]])] * 2
    loss = loss + detrdistill_group_loss(s_logits, t_logits, s_boxes, t_boxes, gt, [torch.tensor([1])] * 2, (40, 56))
    loss.backward()
    assert t_queries.grad is None and t_logits.grad is None and t_boxes.grad is None
    assert student.grad.abs().sum() > 0 and s_logits.grad.abs().sum() > 0 and s_boxes.grad.abs().sum() > 0


def test_group_loss_nan_teacher_gives_nan():
    logits, boxes = torch.randn(1, 4, 3), _boxes(torch.Generator().manual_seed(0), 1, 4)
    loss = detrdistill_group_loss(logits, torch.full_like(logits, float("nan")), boxes, boxes,
                                  [torch.tensor([[1.0, 2.0, 30.0, 20.0]])], [torch.tensor([1])], (40, 56))
    assert torch.isnan(loss)


# ---------------------------------------------------------------- input checks


def _group_args():
    logits, boxes = torch.randn(2, 4, 3), _boxes(torch.Generator().manual_seed(0), 2, 4)
    return [logits, logits.clone(), boxes, boxes.clone()], {
        "gt_boxes": [torch.tensor([[1.0, 2.0, 30.0, 20.0]])] * 2,
        "gt_labels": [torch.tensor([1])] * 2,
        "image_size": (40, 56),
    }


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"gt_boxes": [torch.tensor([[1.0, 2.0, float("nan"), 20.0]])] * 2}, ValueError, "non-finite"),
        ({"gt_boxes": [torch.tensor([[30.0, 2.0, 1.0, 20.0]])] * 2}, ValueError, "x2 < x1"),
        ({"gt_boxes": [torch.tensor([[1.0, 2.0, 30.0, 20.0]])]}, ValueError, "batch size"),
        ({"image_size": (0, 56)}, ValueError, "image_size"),
        ({"image_size": (float("inf"), 56)}, ValueError, "image_size"),
        ({"gt_labels": [torch.tensor([3])] * 2}, ValueError, "gt_labels"),
        ({"gt_labels": [torch.tensor([1.0])] * 2}, TypeError, "gt_labels"),
        ({"gt_labels": [torch.tensor([1, 2])] * 2}, ValueError, "one label per box"),
        ({"gt_labels": [torch.tensor([1])]}, ValueError, "one label per box"),
    ],
)
def test_group_loss_checks_its_inputs(change, error, match):
    args, kwargs = _group_args()
    with pytest.raises(error, match=match):
        detrdistill_group_loss(*args, **{**kwargs, **change})


def test_feature_loss_checks_boxes_and_shapes():
    student = torch.randn(2, 8, 5, 7)
    args = (student, student.clone(), torch.randn(2, 6, 8), torch.randn(2, 6, 3), torch.rand(2, 6, 4))
    with pytest.raises(ValueError, match="non-finite"):
        detrdistill_feature_loss(*args, [torch.tensor([[0.0, 0.0, float("inf"), 1.0]])] * 2, (40, 56))
    with pytest.raises(ValueError, match="teacher_queries"):
        detrdistill_feature_loss(*args[:2], torch.randn(2, 6, 4), *args[3:], [torch.zeros(0, 4)] * 2, (40, 56))
    with pytest.raises(ValueError, match="image_size"):
        detrdistill_feature_loss(*args, [torch.zeros(0, 4)] * 2, (-1, 56))
    with pytest.raises(ValueError, match="width, height"):
        detrdistill_feature_loss(*args, [torch.zeros(0, 4)] * 2, (56, 40))


def test_pred_loss_checks_shapes():
    with pytest.raises(ValueError, match="teacher_logits"):
        detrdistill_pred_loss(torch.randn(2, 4, 3), torch.randn(2, 4, 5), torch.rand(2, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(TypeError, match="student_boxes"):
        detrdistill_pred_loss(torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.ones(2, 4, 4, dtype=torch.long),
                              torch.rand(2, 4, 4))


def test_sigmoid_focal_loss_is_the_textbook_form():
    from kdimpl.ops import sigmoid_focal_loss

    z = torch.linspace(-4, 4, 9, dtype=torch.float64)
    p = z.sigmoid()
    ones, zeros = torch.ones_like(z), torch.zeros_like(z)
    torch.testing.assert_close(sigmoid_focal_loss(z, ones, alpha=0.3, gamma=2.0), -0.3 * (1 - p) ** 2 * p.log())
    torch.testing.assert_close(sigmoid_focal_loss(z, zeros, alpha=0.3, gamma=2.0), -0.7 * p**2 * (1 - p).log())


def test_gather_rows_and_cxcywh_box_terms():
    from kdimpl.ops import cxcywh_box_terms, gather_rows

    values = torch.arange(12.0).reshape(1, 4, 3)
    assert gather_rows(values, torch.tensor([[3, 0]])).tolist() == [[[9.0, 10.0, 11.0], [0.0, 1.0, 2.0]]]
    box = torch.tensor([0.5, 0.5, 0.2, 0.2])
    l1, giou = cxcywh_box_terms(torch.stack([box, box]), torch.stack([box, torch.tensor([0.6, 0.5, 0.2, 0.2])]))
    torch.testing.assert_close(l1, torch.tensor([0.0, 0.1]))
    # the second pair overlaps by half its width: IoU 1/3, the enclosing box is the union, so GIoU = IoU
    torch.testing.assert_close(giou, torch.tensor([0.0, 2 / 3]))
