"""Benchmark workloads for MGD: the full loss with one generation block per level, and the loss part alone.

Masks are drawn once (seeded) so every timed call does the same work.
"""

from __future__ import annotations

import torch
from torch import nn

from kdimpl.adapters.mgd import MGDGenerator
from kdimpl.losses.mgd import mgd_loss, mgd_random_mask
from . import BenchCase, feature_levels
from .cwd import CHANNELS


def _inputs(device, dtype, levels, batch, identity):
    students, teachers = feature_levels(device, dtype, levels, batch, CHANNELS, seed=2)
    rng = torch.Generator().manual_seed(3)
    masks = [mgd_random_mask(s, 0.65, rng=rng) for s in students]
    if identity:
        generators = [nn.Identity() for _ in levels]
    else:
        torch.manual_seed(4)
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        generators = [MGDGenerator(CHANNELS).to(device=device, dtype=compute) for _ in levels]
    return students, teachers, masks, generators


def _make_full(device, dtype, levels, gt_boxes, image_size):
    students, teachers, masks, generators = _inputs(device, dtype, levels, len(gt_boxes), identity=False)
    return lambda: sum(
        2e-5 * mgd_loss(s, t, g, mask=m) for s, t, g, m in zip(students, teachers, generators, masks)
    )


def _make_loss_part(device, dtype, levels, gt_boxes, image_size):
    # identity generation block: masking + summed squared error only
    students, teachers, masks, generators = _inputs(device, dtype, levels, len(gt_boxes), identity=True)
    return lambda: sum(
        2e-5 * mgd_loss(s, t, g, mask=m) for s, t, g, m in zip(students, teachers, generators, masks)
    )


BENCH = [
    BenchCase("mgd", _make_full, channels=CHANNELS),
    BenchCase("mgd-loss-part", _make_loss_part, channels=CHANNELS),
]
