"""Chen et al. 2017 workloads: hint on every level; soft CE and bounded regression on 2 x 512 RoIs."""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.chen2017 import chen2017_bounded_regression_loss, chen2017_hint_loss, chen2017_soft_ce_loss
from . import BenchCase, feature_levels

NUM_ROIS = 1024  # 2 images x 512 sampled RoIs, as Faster R-CNN's RoI head
NUM_CLASSES = 81  # 80 COCO classes + background


def _roi_pair(device, dtype, columns, seed):
    """Seeded ``(R, columns)`` student/teacher outputs on the same RoIs, teacher correlated with the student."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(NUM_ROIS, columns, generator=generator)
    teacher = 0.5 * student + torch.randn(NUM_ROIS, columns, generator=generator)
    target = torch.randn(NUM_ROIS, columns, generator=generator)
    return student.to(device, dtype).requires_grad_(True), teacher.to(device, dtype), target.to(device, dtype)


def _make_hint(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    return lambda: multilevel_loss(chen2017_hint_loss, students, teachers)


def _make_soft_ce(device, dtype, levels, gt_boxes, image_size):
    student, teacher, _ = _roi_pair(device, dtype, NUM_CLASSES, seed=0)
    return lambda: chen2017_soft_ce_loss(student, teacher)


def _make_bounded(device, dtype, levels, gt_boxes, image_size):
    student, teacher, target = _roi_pair(device, dtype, 4, seed=1)
    return lambda: chen2017_bounded_regression_loss(student, teacher, target)


BENCH = [
    BenchCase("chen2017_hint", _make_hint),
    BenchCase("chen2017_soft_ce", _make_soft_ce),
    BenchCase("chen2017_bounded_regression", _make_bounded),
]
