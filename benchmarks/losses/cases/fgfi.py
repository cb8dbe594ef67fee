"""FGFI workload: the imitation loss on every level, each with its own 3 anchors (FGFI itself is single-level)."""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.fgfi import fgfi_grid_anchors, fgfi_imitation_mask, fgfi_loss
from . import BenchCase, feature_levels


def level_anchors(levels, image_size, device, dtype=torch.float32):
    """Per-level ``(H, W, 3, 4)`` anchors: base size 8 x stride, ratios 0.5/1/2 (mmdet-style RPN anchors)."""
    anchors = []
    for i, (h, w) in enumerate(levels):
        stride = 2 ** (2 + i)  # P2-P6 on the padded input
        size = 8 * stride
        ratios = torch.tensor([0.5, 1.0, 2.0], device=device, dtype=dtype)
        half_w, half_h = size / ratios.sqrt() / 2, size * ratios.sqrt() / 2
        centre = stride / 2
        base = torch.stack([centre - half_w, centre - half_h, centre + half_w, centre + half_h], dim=1)
        anchors.append(fgfi_grid_anchors(base, (h, w), stride))
    return anchors


def _make(device, dtype, levels, gt_boxes, image_size, channels=256):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes), channels)
    anchors = level_anchors(levels, image_size, device)
    return lambda: multilevel_loss(fgfi_loss, student, teacher, anchors, gt_boxes=gt_boxes)


def _make_masks(device, dtype, levels, gt_boxes, image_size):
    anchors = level_anchors(levels, image_size, device)
    return lambda: [fgfi_imitation_mask(gt_boxes, a) for a in anchors]


BENCH = [BenchCase("fgfi", _make), BenchCase("fgfi_masks", _make_masks, backward=False)]
