"""GKD on the five FPN levels: both models' features and their detection-loss gradients given (seeded)."""

from __future__ import annotations

from kdimpl import MultiLevelLoss
from kdimpl.losses.gkd import GKDLoss

from . import BenchCase, feature_levels


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    grads_s, grads_t = feature_levels(device, dtype, levels, len(gt_boxes), seed=1)
    grads_s = [g.detach() for g in grads_s]
    criterion = MultiLevelLoss(GKDLoss(), loss_weight=0.5)
    return lambda: criterion(students, teachers, grads_s, grads_t)


BENCH = [BenchCase("gkd", _make)]
