"""PGD's classification- and regression-tower feature losses on every FPN level, weight maps precomputed.

The weight maps come from :func:`pgd_prediction_weights` on seeded teacher predictions (one prior per
location, 80 classes) and the benchmark's boxes, built once outside the timed closure as the official
head does before the distiller runs; ``pgd_weights`` times building them (forward only).
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.pgd import (
    pgd_background_weights,
    pgd_cls_loss,
    pgd_prediction_weights,
    pgd_reg_loss,
    pgd_split_levels,
)
from . import BenchCase, feature_levels

CHANNELS = 256
CLASSES = 80
TOPK = 9


def _priors(levels, image_size, device):
    anchors = []
    for height, width in levels:
        stride = image_size[1] / width
        ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
        centres = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride
        anchors.append(torch.cat([centres - 4 * stride, centres + 4 * stride], -1))
    return torch.cat(anchors)


def _teacher_predictions(device, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    anchors = _priors(levels, image_size, device)
    batch, num = len(gt_boxes), anchors.shape[0]
    logits = (torch.randn(batch, num, CLASSES, generator=generator) - 2).to(device)
    size = anchors[:, 2:] - anchors[:, :2]
    shift = torch.randn(batch, num, 4, generator=generator).to(device) * size.repeat(1, 2) * 0.1
    labels = [torch.randint(0, CLASSES, (b.shape[0],), generator=generator).to(device) for b in gt_boxes]
    return anchors, logits, anchors + shift, labels, generator


def weight_maps(device, levels, gt_boxes, image_size, xi):
    """Per-level ``(N, H, W)`` key-region weights and background maps for the benchmark workload."""
    anchors, logits, boxes, labels, generator = _teacher_predictions(device, levels, gt_boxes, image_size)
    fg = pgd_prediction_weights(anchors, logits, boxes, gt_boxes, labels, xi=xi, topk=TOPK, rng=generator)
    bg = pgd_background_weights(anchors, gt_boxes)
    return pgd_split_levels(fg, levels), pgd_split_levels(bg, levels)


def _make_weights(device, dtype, levels, gt_boxes, image_size):
    anchors, logits, boxes, labels, generator = _teacher_predictions(device, levels, gt_boxes, image_size)

    def run():
        fg = pgd_prediction_weights(anchors, logits, boxes, gt_boxes, labels, xi=0.8, topk=TOPK, rng=generator)
        return pgd_split_levels(fg, levels)

    return run


def _make_cls(device, dtype, levels, gt_boxes, image_size):
    fg, bg = weight_maps(device, levels, gt_boxes, image_size, 0.8)
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    return lambda: multilevel_loss(pgd_cls_loss, students, teachers, fg, bg)


def _make_reg(device, dtype, levels, gt_boxes, image_size, max_positions=None):
    fg, _ = weight_maps(device, levels, gt_boxes, image_size, 0.6)
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    return lambda: multilevel_loss(pgd_reg_loss, students, teachers, fg, max_positions=max_positions)


def _make_reg_bounded(device, dtype, levels, gt_boxes, image_size):
    # each box marks at most topk (9) priors, so boxes x 9 bounds the key regions of any level
    bound = max(b.shape[0] for b in gt_boxes) * TOPK
    return _make_reg(device, dtype, levels, gt_boxes, image_size, max_positions=bound)


BENCH = [
    BenchCase("pgd_cls", _make_cls, channels=CHANNELS),
    BenchCase("pgd_reg", _make_reg, channels=CHANNELS),
    BenchCase("pgd_reg_max_positions", _make_reg_bounded, channels=CHANNELS),
    BenchCase("pgd_weights", _make_weights, channels=CHANNELS, backward=False),
]
