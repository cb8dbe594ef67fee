"""Mimic workload: proposal-restricted mimicking on every level, the GT boxes standing in for 20 proposals per image."""

from __future__ import annotations

from kdimpl.losses.mimic import mimic_loss
from . import BenchCase, feature_levels


def _make(device, dtype, levels, gt_boxes, image_size, channels=256):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes), channels)

    def run():
        return sum(mimic_loss(s, t, gt_boxes, image_size=image_size) for s, t in zip(student, teacher))

    return run


BENCH = [BenchCase("mimic", _make)]
