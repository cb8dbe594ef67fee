"""Teach-DETR on an H-Deformable-DETR-sized workload: 6 decoder layers of 300 queries, 80 classes, batch 2, the
harness's 20 boxes per image standing in for the teachers' merged boxes (scores and labels seeded).
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.teach_detr import teach_detr_loss

from . import BenchCase

LAYERS, QUERIES, CLASSES = 6, 300, 80


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    s_logits, s_boxes = [], []
    for _ in range(LAYERS):
        logits = torch.randn(len(gt_boxes), QUERIES, CLASSES, generator=generator) - 4
        raw = torch.randn(len(gt_boxes), QUERIES, 4, generator=generator)
        boxes = torch.cat([raw[..., :2].sigmoid(), 0.02 + 0.4 * raw[..., 2:].sigmoid()], -1)
        s_logits.append(logits.to(device, dtype).requires_grad_(True))
        s_boxes.append(boxes.to(device, dtype).requires_grad_(True))
    scores = [torch.rand(b.shape[0], generator=generator).to(device, dtype) for b in gt_boxes]
    labels = [torch.randint(0, CLASSES, (b.shape[0],), generator=generator).to(device) for b in gt_boxes]
    return lambda: multilevel_loss(teach_detr_loss, s_logits, [scores] * LAYERS, s_boxes, teacher_boxes=gt_boxes,
                                   teacher_labels=labels, image_size=image_size)


BENCH = [BenchCase("teach_detr", _make, channels=CLASSES)]
