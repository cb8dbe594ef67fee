"""DeFeat workloads: decoupled feature imitation over P2-P6 (as the official config), its GT masks alone, RoI KD."""

from __future__ import annotations

import torch

from kdimpl.losses.defeat import defeat_gt_masks, defeat_multilevel_loss, defeat_roi_kd_loss
from . import BenchCase, feature_levels


def _make_feature(device, dtype, levels, gt_boxes, image_size, channels=256):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes), channels)
    strides = tuple(2 ** (2 + i) for i in range(len(levels)))  # P2-P6 on the padded input

    def run():
        return defeat_multilevel_loss(student, teacher, gt_boxes, strides=strides)

    return run


def _make_roi(device, dtype, levels, gt_boxes, image_size, num_rois=1024, num_classes=81):
    student = torch.randn(num_rois, num_classes, device=device, dtype=dtype, requires_grad=True)
    teacher = torch.randn(num_rois, num_classes, device=device, dtype=dtype)
    labels = torch.randint(0, num_classes, (num_rois,), device=device)

    def run():
        return defeat_roi_kd_loss(student, teacher, labels)

    return run


def _make_masks(device, dtype, levels, gt_boxes, image_size):
    strides = tuple(2 ** (2 + i) for i in range(len(levels)))
    return lambda: defeat_gt_masks(gt_boxes, levels, strides)


BENCH = [
    BenchCase("defeat", _make_feature),
    BenchCase("defeat_gt_masks", _make_masks, backward=False),
    BenchCase("defeat_roi_kd", _make_roi),
]
