"""FRS on every FPN level: feature imitation and head distillation (80-class one-prior head, as FCOS/GFL).

The official figure covers both terms together: add the two cases' times to compare.
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.frs import frs_cls_loss, frs_feature_loss
from . import BenchCase, feature_levels

CHANNELS = 256
CLASSES = 80


def _logit_levels(device, dtype, levels, batch, requires_grad):
    """Seeded per-level ``(student, teacher)`` classification logits, mostly background (shifted by -4)."""
    students, teachers = feature_levels(device, dtype, levels, batch, CLASSES, seed=1)
    students = [(s.detach() - 4).requires_grad_(requires_grad) for s in students]
    return students, [t - 4 for t in teachers]


def _make_feature(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    _, teacher_logits = _logit_levels(device, dtype, levels, len(gt_boxes), False)
    return lambda: multilevel_loss(frs_feature_loss, students, teachers, teacher_logits)


def _make_cls(device, dtype, levels, gt_boxes, image_size):
    student_logits, teacher_logits = _logit_levels(device, dtype, levels, len(gt_boxes), True)
    return lambda: multilevel_loss(frs_cls_loss, student_logits, teacher_logits)


BENCH = [BenchCase("frs_feature", _make_feature, channels=CHANNELS), BenchCase("frs_cls", _make_cls, channels=CHANNELS)]
