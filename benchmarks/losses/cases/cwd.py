"""Benchmark workload for CWD: one loss per FPN level, summed (temperature 1, as the mmrazor detection configs)."""

from __future__ import annotations

from kdimpl.losses.cwd import cwd_loss
from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    return lambda: sum(cwd_loss(s, t, temperature=1.0) for s, t in zip(students, teachers))


BENCH = [BenchCase("cwd", _make, channels=CHANNELS)]
