"""KD-DETR on a DAB-DETR-sized workload: 6 student decoder layers at 600 distillation points (300 teacher anchors
and 300 random anchors) against the teacher's final layer, 91 classes, batch 2; the logits branch on 300
detection queries with 20 matched objects per image.
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.kd_detr import kd_detr_logits_loss, kd_detr_loss

from . import BenchCase

LAYERS, POINTS, QUERIES, CLASSES = 6, 600, 300, 91


def _outputs(device, dtype, batch, points, seed):
    generator = torch.Generator().manual_seed(seed)
    s_logits, s_boxes = [], []
    for _ in range(LAYERS):
        logits = torch.randn(batch, points, CLASSES, generator=generator) - 4
        raw = torch.randn(batch, points, 4, generator=generator)
        boxes = torch.cat([raw[..., :2].sigmoid(), 0.02 + 0.4 * raw[..., 2:].sigmoid()], -1)
        s_logits.append(logits.to(device, dtype).requires_grad_(True))
        s_boxes.append(boxes.to(device, dtype).requires_grad_(True))
    t_logits = [(torch.randn(batch, points, CLASSES, generator=generator) - 4).to(device, dtype) for _ in range(LAYERS)]
    raw = torch.randn(LAYERS, batch, points, 4, generator=generator)
    t_boxes = list(torch.cat([raw[..., :2].sigmoid(), 0.02 + 0.4 * raw[..., 2:].sigmoid()], -1).to(device, dtype))
    return s_logits, t_logits, s_boxes, t_boxes


def _make_points(device, dtype, levels, gt_boxes, image_size):
    s_logits, t_logits, s_boxes, t_boxes = _outputs(device, dtype, len(gt_boxes), POINTS, 0)
    teacher_logits, teacher_boxes = [t_logits[-1]] * LAYERS, [t_boxes[-1]] * LAYERS
    return lambda: multilevel_loss(kd_detr_loss, s_logits, teacher_logits, s_boxes, teacher_boxes)


def _make_logits(device, dtype, levels, gt_boxes, image_size):
    s_logits, t_logits, s_boxes, t_boxes = _outputs(device, dtype, len(gt_boxes), QUERIES, 1)
    generator = torch.Generator().manual_seed(2)
    count = max(b.shape[0] for b in gt_boxes)

    def match():
        return torch.stack([torch.randperm(QUERIES, generator=generator)[:count] for _ in gt_boxes]).to(device)

    s_match, t_match = [match() for _ in range(LAYERS)], [match() for _ in range(LAYERS)]
    return lambda: multilevel_loss(kd_detr_logits_loss, s_logits, t_logits, s_boxes, t_boxes, s_match, t_match)


BENCH = [
    BenchCase("kd_detr", _make_points, channels=CLASSES),
    BenchCase("kd_detr_logits", _make_logits, channels=CLASSES),
]
