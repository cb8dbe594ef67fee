"""FGD on every FPN level with per-level global-context blocks (the official RetinaNet setting), and its masks alone."""

from __future__ import annotations

import torch

from kdimpl.adapters.fgd import FGDGlobalContext
from kdimpl.losses.fgd import fgd_loss, fgd_multilevel_masks
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
        blocks = (FGDGlobalContext(CHANNELS).to(device), FGDGlobalContext(CHANNELS).to(device))
        pairs.append((student, teacher, blocks))
    options = {"temperature": 0.5, "alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lambda_": 5e-6}

    def run():
        masks = fgd_multilevel_masks(gt_boxes, image_size, levels)  # all levels at once
        return sum(
            fgd_loss(s, t, None, None, masks=m, global_student=gs, global_teacher=gt, **options)
            for (s, t, (gs, gt)), m in zip(pairs, masks)
        )

    return run


def _make_masks(device, dtype, levels, gt_boxes, image_size):
    return lambda: fgd_multilevel_masks(gt_boxes, image_size, levels)


BENCH = [BenchCase("fgd", _make, channels=CHANNELS), BenchCase("fgd_masks", _make_masks, backward=False)]
