"""Benchmark workload for Structural KD: SSIM loss (window 11) per FPN level, summed."""

from __future__ import annotations

from kdimpl.losses.structural_kd import structural_kd_loss
from . import BenchCase, feature_levels
from .cwd import CHANNELS


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=5)
    return lambda: sum(structural_kd_loss(s, t, window_size=11) for s, t in zip(students, teachers))


BENCH = [BenchCase("structural_kd", _make, channels=CHANNELS)]
