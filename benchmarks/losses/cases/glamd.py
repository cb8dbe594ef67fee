"""GLAMD (unverified reconstruction) on every FPN level with a 4x4 patch grid."""

from __future__ import annotations

from kdimpl import GLAMDLoss, MultiLevelLoss
from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    criterion = MultiLevelLoss(GLAMDLoss(grid=4))
    return lambda: criterion(students, teachers)


BENCH = [BenchCase("glamd", _make, channels=CHANNELS)]
