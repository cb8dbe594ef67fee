"""Chen et al. 2017 workloads: hint on every level; soft CE and bounded regression on 2 x 512 RoIs."""

from __future__ import annotations

import torch

from kdimpl.losses.chen2017 import chen2017_bounded_regression_loss, chen2017_hint_loss, chen2017_soft_ce_loss
from . import BenchCase, feature_levels


def _make_hint(device, dtype, levels, gt_boxes, image_size, channels=256):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes), channels)

    def run():
        return sum(chen2017_hint_loss(s, t) for s, t in zip(student, teacher))

    return run


def _make_soft_ce(device, dtype, levels, gt_boxes, image_size, num_rois=1024, num_classes=81):
    student = torch.randn(num_rois, num_classes, device=device, dtype=dtype, requires_grad=True)
    teacher = torch.randn(num_rois, num_classes, device=device, dtype=dtype)

    def run():
        return chen2017_soft_ce_loss(student, teacher)

    return run


def _make_bounded(device, dtype, levels, gt_boxes, image_size, num_rois=1024):
    student = torch.randn(num_rois, 4, device=device, dtype=dtype, requires_grad=True)
    teacher = torch.randn(num_rois, 4, device=device, dtype=dtype)
    target = torch.randn(num_rois, 4, device=device, dtype=dtype)

    def run():
        return chen2017_bounded_regression_loss(student, teacher, target)

    return run


BENCH = [
    BenchCase("chen2017_hint", _make_hint),
    BenchCase("chen2017_soft_ce", _make_soft_ce),
    BenchCase("chen2017_bounded_regression", _make_bounded),
]
