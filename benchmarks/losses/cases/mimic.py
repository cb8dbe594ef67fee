"""Mimic workload: proposal-restricted mimicking on every level, the GT boxes standing in for 20 proposals per image."""

from __future__ import annotations

from kdimpl import mimic_loss, multilevel_loss

from . import BenchCase, feature_levels
from .cwd import CHANNELS


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    return lambda: multilevel_loss(mimic_loss, students, teachers, proposals=gt_boxes, image_size=image_size)


BENCH = [BenchCase("mimic", _make, channels=CHANNELS)]
