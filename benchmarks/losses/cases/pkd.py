"""Benchmark workload for PKD: one loss per FPN level, summed (as mmrazor's ``PKDLoss`` on a tuple)."""

from __future__ import annotations

from kdimpl.losses.pkd import pkd_loss
from . import BenchCase, feature_levels
from .cwd import CHANNELS


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=1)
    return lambda: sum(pkd_loss(s, t) for s, t in zip(students, teachers))


BENCH = [BenchCase("pkd", _make, channels=CHANNELS)]
