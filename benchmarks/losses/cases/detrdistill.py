"""DETRDistill on a Deformable-DETR-sized workload: 6 decoder layers of 300 queries and 80 classes, batch 2.

Seeded decoder outputs stand in for the student's and the teacher's (logits, normalised ``cx, cy, w, h``
boxes, 256-d query embeddings); ``detrdistill_feature`` runs the six decoder stages over the shared five FPN
levels (256 channels) with the workload's boxes, ``detrdistill_group`` uses them as ground truth (labels seeded).
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.detrdistill import detrdistill_feature_loss, detrdistill_group_loss, detrdistill_pred_loss

from . import BenchCase, feature_levels

LAYERS, QUERIES, CLASSES, DIM = 6, 300, 80, 256


def decoder_outputs(device, dtype, batch, seed=0, requires_grad=True):
    """Per-layer ``(student_logits, teacher_logits, student_boxes, teacher_boxes, teacher_queries)`` lists."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(LAYERS):
        s_logits = torch.randn(batch, QUERIES, CLASSES, generator=generator) - 4
        t_logits = 0.5 * s_logits + torch.randn(batch, QUERIES, CLASSES, generator=generator) - 2
        raw = torch.randn(2, batch, QUERIES, 4, generator=generator)
        boxes = torch.cat([raw[..., :2].sigmoid(), 0.02 + 0.4 * raw[..., 2:].sigmoid()], dim=-1)
        queries = torch.randn(batch, QUERIES, DIM, generator=generator)
        out.append((s_logits.to(device, dtype).requires_grad_(requires_grad), t_logits.to(device, dtype),
                    boxes[0].to(device, dtype).requires_grad_(requires_grad), boxes[1].to(device, dtype),
                    queries.to(device, dtype)))
    return [list(x) for x in zip(*out)]


def _make_pred(device, dtype, levels, gt_boxes, image_size):
    s_logits, t_logits, s_boxes, t_boxes, _ = decoder_outputs(device, dtype, len(gt_boxes))
    return lambda: multilevel_loss(detrdistill_pred_loss, s_logits, t_logits, s_boxes, t_boxes)


def _make_group(device, dtype, levels, gt_boxes, image_size):
    g_logits, t_logits, g_boxes, t_boxes, _ = decoder_outputs(device, dtype, len(gt_boxes))
    generator = torch.Generator().manual_seed(1)
    labels = [torch.randint(0, CLASSES, (b.shape[0],), generator=generator).to(device) for b in gt_boxes]
    return lambda: multilevel_loss(detrdistill_group_loss, g_logits, t_logits, g_boxes, t_boxes,
                                   gt_boxes=gt_boxes, gt_labels=labels, image_size=image_size)


def _make_feature(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    _, t_logits, _, t_boxes, t_queries = decoder_outputs(device, dtype, len(gt_boxes), requires_grad=False)

    def run():
        return sum(
            multilevel_loss(detrdistill_feature_loss, students, teachers, teacher_queries=t_queries[stage],
                            teacher_logits=t_logits[stage], teacher_boxes=t_boxes[stage], gt_boxes=gt_boxes,
                            image_size=image_size)
            for stage in range(LAYERS)
        )

    return run


BENCH = [
    BenchCase("detrdistill_pred", _make_pred, channels=CLASSES),
    BenchCase("detrdistill_group", _make_group, channels=CLASSES),
    BenchCase("detrdistill_feature", _make_feature),
]
