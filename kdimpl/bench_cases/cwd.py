"""Benchmark workload for CWD: one loss per FPN level, summed (tau = 1, as the mmrazor detection configs)."""

from __future__ import annotations

import torch

from ..losses.cwd import cwd_loss
from . import BenchCase

CHANNELS = 256


def feature_levels(device, dtype, levels, channels=CHANNELS, seed=0):
    """Seeded student (requires grad) and teacher maps, one pair per level, batch 2."""
    generator = torch.Generator().manual_seed(seed)
    students, teachers = [], []
    for h, w in levels:
        s = torch.randn(2, channels, h, w, generator=generator)
        t = 0.5 * s + torch.randn(2, channels, h, w, generator=generator)
        students.append(s.to(device=device, dtype=dtype).requires_grad_(True))
        teachers.append(t.to(device=device, dtype=dtype))
    return students, teachers


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels)
    return lambda: sum(cwd_loss(s, t, tau=1.0) for s, t in zip(students, teachers))


BENCH = [BenchCase("cwd", _make, channels=CHANNELS)]
