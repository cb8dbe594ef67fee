"""FGD on every FPN level with per-level global-context blocks (the official RetinaNet setting), and its masks alone."""

from __future__ import annotations

from kdimpl import FGDLoss, MultiLevelLoss
from kdimpl.losses.fgd import fgd_masks
from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    # the RetinaNet configs' weights; each level owns its two global-context blocks
    criterion = MultiLevelLoss([FGDLoss(channels=CHANNELS, attention_weight=5e-4) for _ in levels]).to(device)
    return lambda: criterion(students, teachers, gt_boxes=gt_boxes, image_size=image_size)


def _make_masks(device, dtype, levels, gt_boxes, image_size):
    return lambda: [fgd_masks(gt_boxes, image_size, size) for size in levels]


BENCH = [BenchCase("fgd", _make, channels=CHANNELS), BenchCase("fgd_masks", _make_masks, backward=False)]
