"""MimicDet workload: both mimicking paths (classification and regression) on 2 images x 512 sampled refined
boxes, 256-channel head features flattened over a 7x7 window (12544-d vectors)."""

from __future__ import annotations

import torch

from kdimpl.losses.mimicdet import MimicDetLoss

from . import BenchCase

BOXES = 512
DIM = 256 * 7 * 7


def _make(device, dtype, levels, gt_boxes, image_size):
    n = len(gt_boxes)
    generator = torch.Generator().manual_seed(0)
    students = [torch.randn(n * BOXES, DIM, generator=generator).to(device, dtype).requires_grad_(True) for _ in range(2)]
    teachers = [(0.5 * s.detach() + torch.randn(n * BOXES, DIM, generator=generator).to(device, dtype)) for s in students]
    loss = MimicDetLoss()
    return lambda: loss(students[0], teachers[0]) + loss(students[1], teachers[1])


BENCH = [BenchCase("mimicdet", _make)]
