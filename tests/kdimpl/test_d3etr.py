"""D³ETR: MixMatcher (adaptive and fixed matching) and the prediction and attention losses on its pairs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

import torch.nn.functional as F

from kdimpl import D3ETRCrossAttentionLoss, MultiLevelLoss, multilevel_loss
from kdimpl.losses.d3etr import (
    d3etr_cross_attention_loss,
    d3etr_match,
    d3etr_pred_loss,
    d3etr_self_attention_loss,
)
from kdimpl.ops import aligned_box_iou, box_cxcywh_to_xyxy


def _outputs(seed, batch=2, queries=5, classes=3, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=generator, dtype=dtype)
    raw = torch.randn(batch, queries, 4, generator=generator, dtype=dtype)
    boxes = torch.cat([0.15 + 0.7 * raw[..., :2].sigmoid(), 0.05 + 0.5 * raw[..., 2:].sigmoid()], dim=-1)
    return logits, boxes


def _permutations(seed, batch, queries):
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(queries, generator=generator) for _ in range(batch)])


def _take(values, index):
    return torch.gather(values, 1, index[..., None].expand(-1, -1, values.shape[-1]))


def test_adaptive_matching_recovers_a_permuted_teacher():
    logits, boxes = _outputs(0)
    perm = _permutations(1, 2, 5)
    # teacher query perm[s] predicts exactly what student query s predicts
    inverse = perm.argsort(dim=1)
    t_logits, t_boxes = _take(logits, inverse), _take(boxes, inverse)
    assert torch.equal(d3etr_match(logits, t_logits, boxes, t_boxes), perm)


def test_adaptive_matching_leaves_extra_student_queries_unpaired():
    s_logits, s_boxes = _outputs(2, queries=5)
    t_logits, t_boxes = _outputs(3, queries=3)
    match = d3etr_match(s_logits, t_logits, s_boxes, t_boxes)
    assert ((match >= 0).sum(dim=1) == 3).all()
    for row in match:
        assert sorted(row[row >= 0].tolist()) == [0, 1, 2]


def test_pred_loss_is_zero_on_a_matched_permuted_teacher_and_fixed_is_identity():
    logits, boxes = _outputs(4)
    perm = _permutations(5, 2, 5)
    inverse = perm.argsort(dim=1)
    t_logits, t_boxes = _take(logits, inverse), _take(boxes, inverse)
    match = d3etr_match(logits, t_logits, boxes, t_boxes)
    # the class term is the soft BCE, whose minimum is the teacher's entropy, not 0
    entropy = F.binary_cross_entropy_with_logits(logits, logits.sigmoid(), reduction="none").sum(-1)
    per_query = d3etr_pred_loss(logits, t_logits, boxes, t_boxes, match, reduction="none")
    torch.testing.assert_close(per_query, entropy, rtol=1e-5, atol=1e-5)
    identity = torch.arange(5).expand(2, 5)
    torch.testing.assert_close(d3etr_pred_loss(logits, t_logits, boxes, t_boxes),
                               d3etr_pred_loss(logits, t_logits, boxes, t_boxes, identity))


def test_pred_loss_equals_a_loop_over_pairs():
    s_logits, s_boxes = _outputs(6, dtype=torch.float64)
    t_logits, t_boxes = _outputs(7, dtype=torch.float64)
    match = torch.tensor([[2, 0, -1, 1, 3], [4, 3, 2, 1, 0]])
    total, pairs = 0.0, 0
    for i in range(2):
        for s in range(5):
            t = int(match[i, s])
            target = torch.sigmoid(t_logits[i, t]) if t >= 0 else torch.zeros(3, dtype=torch.float64)
            p = torch.sigmoid(s_logits[i, s])
            total = total - (target * p.log() + (1 - target) * (1 - p).log()).sum()
            if t >= 0:
                pairs += 1
                giou = aligned_box_iou(box_cxcywh_to_xyxy(s_boxes[i, s]), box_cxcywh_to_xyxy(t_boxes[i, t]),
                                       generalized=True)
                total = total + 5 * (s_boxes[i, s] - t_boxes[i, t]).abs().sum() + 2 * (1 - giou)
    torch.testing.assert_close(d3etr_pred_loss(s_logits, t_logits, s_boxes, t_boxes, match), total / pairs)


def test_self_attention_is_invariant_to_permuting_both_query_axes():
    generator = torch.Generator().manual_seed(8)
    student = torch.randn(2, 3, 5, 5, generator=generator)
    perm = _permutations(9, 2, 5)
    # teacher query perm[s] attends to perm[s'] as student query s attends to s'
    teacher = torch.empty_like(student)
    for i in range(2):
        p = perm[i]
        teacher[i][:, p[:, None], p[None, :]] = student[i]
    loss = d3etr_self_attention_loss(student, teacher, perm)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)
    assert d3etr_self_attention_loss(student, teacher) > 0.01  # fixed matching does not see the permutation
    torch.testing.assert_close(d3etr_self_attention_loss(student, student), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_cross_attention_equals_kl_div_of_the_paired_rows():
    generator = torch.Generator().manual_seed(10)
    student, teacher = torch.randn(2, 3, 5, 7, generator=generator), torch.randn(2, 3, 6, 7, generator=generator)
    match = torch.tensor([[5, 0, -1, 2, 3], [1, 2, 3, 4, 0]])
    expected, rows = 0.0, 0
    for i in range(2):
        for s in range(5):
            t = int(match[i, s])
            if t < 0:
                continue
            rows += 3
            expected = expected + F.kl_div(student[i, :, s].log_softmax(-1), teacher[i, :, t].log_softmax(-1),
                                           log_target=True, reduction="sum")
    torch.testing.assert_close(d3etr_cross_attention_loss(student, teacher, match), expected / rows)
    per_row = d3etr_cross_attention_loss(student, teacher, match, reduction="none")
    assert per_row.shape == (2, 3, 5) and (per_row[0, :, 2] == 0).all()


def test_masked_keys_add_nothing_and_stay_finite():
    student, teacher = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    student = student.requires_grad_(True)
    masked_t, masked_s = teacher.clone(), student.detach().clone()
    masked_t[..., -1] = float("-inf")
    masked_s[..., -1] = float("-inf")
    masked_s.requires_grad_(True)
    loss = d3etr_cross_attention_loss(masked_s, masked_t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(masked_s.grad).all()
    torch.testing.assert_close(loss, d3etr_cross_attention_loss(student[..., :-1], teacher[..., :-1]))


def test_losses_over_layers_in_one_line():
    layers = [_outputs(20 + k) for k in range(3)]
    teachers = [_outputs(30 + k) for k in range(3)]
    matches = [d3etr_match(s[0], t[0], s[1], t[1]) for s, t in zip(layers, teachers)]
    total = multilevel_loss(d3etr_pred_loss, [s[0] for s in layers], [t[0] for t in teachers], [s[1] for s in layers],
                            [t[1] for t in teachers], matches)
    expected = sum(d3etr_pred_loss(s[0], t[0], s[1], t[1], m) for s, t, m in zip(layers, teachers, matches))
    torch.testing.assert_close(total, expected)
    generator = torch.Generator().manual_seed(40)
    s_cross = [torch.randn(2, 2, 5, 9, generator=generator) for _ in range(3)]
    t_cross = [torch.randn(2, 2, 5, 9, generator=generator) for _ in range(3)]
    module = MultiLevelLoss([D3ETRCrossAttentionLoss() for _ in range(3)])
    torch.testing.assert_close(module(s_cross, t_cross, matches),
                               sum(d3etr_cross_attention_loss(s, t, m) for s, t, m in zip(s_cross, t_cross, matches)))


def test_teacher_inputs_get_no_gradient():
    s_logits, s_boxes = _outputs(50)
    t_logits, t_boxes = _outputs(51)
    s_logits.requires_grad_(True), s_boxes.requires_grad_(True)
    t_logits.requires_grad_(True), t_boxes.requires_grad_(True)
    match = d3etr_match(s_logits, t_logits, s_boxes, t_boxes)
    s_attn, t_attn = torch.randn(2, 2, 5, 5, requires_grad=True), torch.randn(2, 2, 5, 5, requires_grad=True)
    loss = (d3etr_pred_loss(s_logits, t_logits, s_boxes, t_boxes, match)
            + d3etr_self_attention_loss(s_attn, t_attn, match)
            + d3etr_cross_attention_loss(s_attn, t_attn, match))
    loss.backward()
    assert t_logits.grad is None and t_boxes.grad is None and t_attn.grad is None
    assert s_attn.grad.abs().sum() > 0 and s_logits.grad.abs().sum() > 0 and s_boxes.grad.abs().sum() > 0


def test_inputs_are_checked():
    logits, boxes = _outputs(60)
    with pytest.raises(TypeError, match="match"):
        d3etr_pred_loss(logits, logits, boxes, boxes, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="match"):
        d3etr_pred_loss(logits, logits, boxes, boxes, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_logits"):
        d3etr_pred_loss(logits, logits[:, :4], boxes, boxes[:, :4])  # fixed matching needs as many queries
    with pytest.raises(ValueError, match="teacher_attention"):
        d3etr_self_attention_loss(torch.randn(2, 2, 5, 5), torch.randn(2, 2, 5, 4))
    with pytest.raises(ValueError, match="teacher_attention"):
        d3etr_cross_attention_loss(torch.randn(2, 2, 5, 9), torch.randn(2, 2, 5, 8))
    with pytest.raises(TypeError, match="student_attention"):
        d3etr_cross_attention_loss(torch.ones(2, 2, 5, 9, dtype=torch.long), torch.randn(2, 2, 5, 9))
