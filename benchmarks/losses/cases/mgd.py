"""Benchmark workloads for MGD: the full loss with one generation block per level, and the loss part alone.

Masks are drawn once (seeded) so every timed call does the same work.
"""

from __future__ import annotations

import torch
from torch import nn

from kdimpl import MGDGenerator, mgd_loss, mgd_random_mask, multilevel_loss

from . import BenchCase, feature_levels
from .cwd import CHANNELS


def _make(identity: bool):
    def make(device, dtype, levels, gt_boxes, image_size):
        students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=2)
        rng = torch.Generator().manual_seed(3)
        masks = [mgd_random_mask(s, 0.65, rng=rng) for s in students]
        if identity:  # the loss part: masking and the summed squared error only
            generators = [nn.Identity() for _ in levels]
        else:
            torch.manual_seed(4)
            compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            generators = [MGDGenerator(CHANNELS).to(device=device, dtype=compute) for _ in levels]
        return lambda: 2e-5 * multilevel_loss(mgd_loss, students, teachers, generators, masks)

    return make


BENCH = [
    BenchCase("mgd", _make(identity=False), channels=CHANNELS),
    BenchCase("mgd-loss-part", _make(identity=True), channels=CHANNELS),
]
