"""Benchmark workload for CWD: the loss on every FPN level, summed (temperature 1, as the mmrazor detection configs)."""

from __future__ import annotations

from kdimpl import cwd_loss, multilevel_loss

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    return lambda: multilevel_loss(cwd_loss, students, teachers, temperature=1.0)


BENCH = [BenchCase("cwd", _make, channels=CHANNELS)]
