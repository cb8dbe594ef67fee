"""DeFeat workloads: decoupled feature imitation over P2-P6 averaged as in the official code, its GT masks, RoI KD."""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.defeat import defeat_gt_mask, defeat_loss, defeat_roi_kd_loss
from . import BenchCase, feature_levels


def _make_feature(device, dtype, levels, gt_boxes, image_size, channels=256):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes), channels)
    weights = [1 / len(levels)] * len(levels)

    def run():
        return multilevel_loss(defeat_loss, student, teacher, gt_boxes=gt_boxes, image_size=image_size,
                               level_weights=weights)

    return run


def _make_roi(device, dtype, levels, gt_boxes, image_size, num_rois=1024, num_classes=81):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(num_rois, num_classes, generator=generator).to(device, dtype).requires_grad_(True)
    teacher = (0.5 * student.detach() + torch.randn(num_rois, num_classes, generator=generator).to(device, dtype))
    labels = torch.randint(0, num_classes, (num_rois,), generator=generator).to(device)

    def run():
        return defeat_roi_kd_loss(student, teacher, labels)

    return run


def _make_masks(device, dtype, levels, gt_boxes, image_size):
    def run():
        return [defeat_gt_mask(gt_boxes, image_size, size, level=i, num_levels=len(levels))
                for i, size in enumerate(levels)]

    return run


BENCH = [
    BenchCase("defeat", _make_feature),
    BenchCase("defeat_masks", _make_masks, backward=False),
    BenchCase("defeat_roi_kd", _make_roi),
]
