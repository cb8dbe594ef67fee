"""FRS on every FPN level: feature imitation plus head distillation (80-class one-prior head, as FCOS/GFL)."""

from __future__ import annotations

import torch

from kdimpl.losses.frs import frs_cls_loss, frs_feature_loss
from . import BenchCase

CHANNELS = 256
CLASSES = 80


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    inputs = []
    for height, width in levels:
        student = (
            torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype).requires_grad_(True)
        )
        teacher = torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype)
        z_s = (
            (torch.randn(batch, CLASSES, height, width, generator=generator) - 4).to(device, dtype).requires_grad_(True)
        )
        z_t = (torch.randn(batch, CLASSES, height, width, generator=generator) - 4).to(device, dtype)
        inputs.append((student, teacher, z_s, z_t))

    def run():
        return sum(frs_feature_loss(s, t, z_t) + frs_cls_loss(z_s, z_t) for s, t, z_s, z_t in inputs)

    return run


BENCH = [BenchCase("frs", _make, channels=CHANNELS)]
