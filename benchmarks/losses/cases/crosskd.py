"""CrossKD's losses on GFL head outputs of every FPN level (the cross-head forward itself is the teacher's layers).

Seeded tensors stand in for the cross-head predictions (student) and the teacher's: 80 class logits and
4 x 17 distance bins per location; every anchor is valid and the positives are 9 per box.
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.crosskd import crosskd_box_iou_loss, crosskd_box_loss, crosskd_cls_loss, crosskd_region_weights

from . import BenchCase, feature_levels

CLASSES = 80
BINS = 4 * 17


def _make_cls(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CLASSES)
    npos = 9.0 * sum(b.shape[0] for b in gt_boxes)
    return lambda: multilevel_loss(crosskd_cls_loss, students, teachers, num_positives=npos)


def _make_box(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), BINS)
    _, t_cls = feature_levels(device, dtype, levels, len(gt_boxes), CLASSES, seed=1)

    def run():
        rho_sum = sum(crosskd_region_weights(t).sum() for t in t_cls)
        return multilevel_loss(crosskd_box_loss, students, teachers, t_cls, region_weight_sum=rho_sum)

    return run


def _make_box_iou(device, dtype, levels, gt_boxes, image_size):
    # one anchor per position (ATSS); boxes around each position's point, as a decoder gives them
    offsets, t_off = feature_levels(device, dtype, levels, len(gt_boxes), 4)
    _, t_cls = feature_levels(device, dtype, levels, len(gt_boxes), CLASSES, seed=1)
    npos = 9.0 * sum(b.shape[0] for b in gt_boxes)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=device, dtype=dtype)[:, None, None]

    def run():
        students = [sign * o.exp() for o in offsets]
        teachers = [sign * o.exp() for o in t_off]
        return multilevel_loss(crosskd_box_iou_loss, students, teachers, t_cls, num_positives=npos)

    return run


BENCH = [
    BenchCase("crosskd_cls", _make_cls, channels=CLASSES),
    BenchCase("crosskd_box", _make_box, channels=BINS),
    BenchCase("crosskd_box_iou", _make_box_iou, channels=4),
]
