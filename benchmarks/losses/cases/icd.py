"""ICD workload: the harness's five FPN levels flattened into one sequence (S = 89 523 positions), 8 heads of 32
channels, 120 instance queries per image (20 real + 100 fake, the official ``NUM_NEG_POS_RATIO = 5``), weight 8."""

from __future__ import annotations

import torch

from kdimpl.losses.icd import ICDLoss

from . import BenchCase, feature_levels

HEADS = 8
QUERIES_PER_BOX = 6


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    n = len(gt_boxes)
    positions = sum(h * w for h, w in levels)
    queries = QUERIES_PER_BOX * max(len(b) for b in gt_boxes)
    generator = torch.Generator().manual_seed(3)
    logits = (2 * torch.randn(n, HEADS, queries, positions, generator=generator)).to(device, dtype)
    real = torch.zeros(n, queries, dtype=torch.bool, device=device)
    for i, boxes in enumerate(gt_boxes):
        real[i, : len(boxes)] = True
    teacher = torch.cat([t.flatten(2) for t in teachers], dim=2).transpose(1, 2).reshape(n, positions, HEADS, -1)
    loss = ICDLoss(loss_weight=8.0)

    def step():
        student = torch.cat([s.flatten(2) for s in students], dim=2).transpose(1, 2).reshape(n, positions, HEADS, -1)
        return loss(student, teacher, logits, real)

    return step


BENCH = [BenchCase("icd", _make)]
