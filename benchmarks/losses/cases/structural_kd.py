"""Benchmark workload for Structural KD: SSIM loss (window 11) on every FPN level, summed."""

from __future__ import annotations

from kdimpl import multilevel_loss, structural_kd_loss

from . import BenchCase, feature_levels
from .cwd import CHANNELS


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=5)
    return lambda: multilevel_loss(structural_kd_loss, students, teachers, window_size=11)


BENCH = [BenchCase("structural_kd", _make, channels=CHANNELS)]
