"""GLAMD (unverified reconstruction) on every FPN level with a 4x4 patch grid."""

from __future__ import annotations

import torch

from kdimpl.losses.glamd import glamd_loss
from . import BenchCase

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    pairs = []
    for height, width in levels:
        student = (
            torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype).requires_grad_(True)
        )
        teacher = torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype)
        pairs.append((student, teacher))

    def run():
        return sum(glamd_loss(s, t, grid=4) for s, t in pairs)

    return run


BENCH = [BenchCase("glamd", _make, channels=CHANNELS)]
