"""Mimic workload: proposal-restricted mimicking on every level, the GT boxes standing in for 20 proposals per image."""

from __future__ import annotations

import torch

from ..losses.mimic import mimic_loss
from . import BenchCase


def _make(device, dtype, levels, gt_boxes, image_size, channels=256):
    student = [torch.randn(2, channels, h, w, device=device, dtype=dtype, requires_grad=True) for h, w in levels]
    teacher = [torch.randn(2, channels, h, w, device=device, dtype=dtype) for h, w in levels]

    def run():
        return sum(mimic_loss(s, t, gt_boxes, image_size=image_size) for s, t in zip(student, teacher))

    return run


BENCH = [BenchCase("mimic", _make)]
