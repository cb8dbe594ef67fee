"""BCKD's classification and localisation distillation on GFL head outputs of every FPN level.

Seeded head outputs stand in for the student's and teacher's: 80 class logits and 4 x 17 distance
bins per location; every anchor is valid and the positives are 9 per box (ATSS's top-k).
"""

from __future__ import annotations

from kdimpl import multilevel_loss
from kdimpl.losses.bckd import bckd_cls_loss, bckd_loc_loss

from . import BenchCase, feature_levels

CLASSES = 80
BINS = 4 * 17


def _num_positives(gt_boxes):
    return 9.0 * sum(b.shape[0] for b in gt_boxes)


def _make_cls(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CLASSES)
    return lambda: multilevel_loss(bckd_cls_loss, students, teachers, num_positives=_num_positives(gt_boxes))


def _make_loc(device, dtype, levels, gt_boxes, image_size):
    s_box, t_box = feature_levels(device, dtype, levels, len(gt_boxes), BINS)
    s_cls, t_cls = feature_levels(device, dtype, levels, len(gt_boxes), CLASSES, seed=1)
    npos = _num_positives(gt_boxes)
    return lambda: multilevel_loss(bckd_loc_loss, s_box, t_box, s_cls, t_cls, num_positives=npos)


BENCH = [
    BenchCase("bckd_cls", _make_cls, channels=CLASSES),
    BenchCase("bckd_loc", _make_loc, channels=BINS),
]
