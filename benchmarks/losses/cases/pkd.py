"""Benchmark workload for PKD: the loss on every FPN level, summed (as mmrazor's ``PKDLoss`` on a tuple)."""

from __future__ import annotations

from kdimpl import multilevel_loss, pkd_loss

from . import BenchCase, feature_levels
from .cwd import CHANNELS


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=1)
    return lambda: multilevel_loss(pkd_loss, students, teachers)


BENCH = [BenchCase("pkd", _make, channels=CHANNELS)]
