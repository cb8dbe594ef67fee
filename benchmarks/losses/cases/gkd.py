"""GKD on the five FPN levels: both models' features and their detection-loss gradients given (seeded);
``gkd_bmfi`` on the same features with the harness's boxes."""

from __future__ import annotations

from kdimpl import MultiLevelLoss
from kdimpl.losses.gkd import GKDBMFILoss, GKDLoss

from . import BenchCase, feature_levels


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    grads_s, grads_t = feature_levels(device, dtype, levels, len(gt_boxes), seed=1)
    grads_s = [g.detach() for g in grads_s]
    criterion = MultiLevelLoss(GKDLoss(), loss_weight=0.5)
    return lambda: criterion(students, teachers, grads_s, grads_t)


def _make_bmfi(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    criterion = MultiLevelLoss(GKDBMFILoss())
    return lambda: criterion(students, teachers, gt_boxes=gt_boxes, image_size=image_size)


BENCH = [BenchCase("gkd", _make), BenchCase("gkd_bmfi", _make_bmfi)]
