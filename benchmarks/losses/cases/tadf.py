"""TADF: Gaussian-masked feature imitation on every FPN level, and the RoI-head losses on shared proposals.

The head losses use a Faster R-CNN RoI head's sizes: 512 sampled proposals per image, 80 classes and
background; 128 of them positive for the box regression (mmdetection's sampler: 25 % positives).
Proposals are the benchmark's boxes jittered, seeded; ``tadf_masks`` times the Gaussian masks alone.
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss, tadf_cls_loss, tadf_feature_loss, tadf_gaussian_mask, tadf_reg_loss
from . import BenchCase, feature_levels

CHANNELS = 256
CLASSES = 80
ROIS = 512
POSITIVES = 128


def _make_feature(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    return lambda: multilevel_loss(tadf_feature_loss, students, teachers, gt_boxes=gt_boxes, image_size=image_size)


def _make_masks(device, dtype, levels, gt_boxes, image_size):
    return lambda: [tadf_gaussian_mask(gt_boxes, image_size, size) for size in levels]


def _make_cls(device, dtype, levels, gt_boxes, image_size):
    g = torch.Generator().manual_seed(0)
    rois = ROIS * len(gt_boxes)
    student = torch.randn(rois, CLASSES + 1, generator=g)
    teacher = 0.5 * student + torch.randn(rois, CLASSES + 1, generator=g)
    labels = torch.randint(0, CLASSES + 1, (rois,), generator=g).to(device)
    student = student.to(device, dtype).requires_grad_(True)
    teacher = teacher.to(device, dtype)
    return lambda: tadf_cls_loss(student, teacher, labels, temperature=2.0)


def _make_reg(device, dtype, levels, gt_boxes, image_size):
    g = torch.Generator().manual_seed(0)
    targets = torch.cat([b[torch.randint(0, len(b), (POSITIVES,), generator=g)] for b in gt_boxes]).cpu()
    size = (targets[:, 2:] - targets[:, :2]).repeat(1, 2)
    proposals = targets + 0.1 * size * torch.randn(targets.shape, generator=g)
    refined = targets + 0.1 * size * torch.randn(targets.shape, generator=g)
    student = torch.randn(targets.shape, generator=g)
    teacher = 0.5 * student + torch.randn(targets.shape, generator=g)
    student = student.to(device, dtype).requires_grad_(True)
    boxes = [x.to(device, dtype) for x in (teacher, refined, proposals, targets)]
    return lambda: tadf_reg_loss(student, *boxes)


BENCH = [
    BenchCase("tadf_feature", _make_feature, channels=CHANNELS),
    BenchCase("tadf_masks", _make_masks, backward=False),
    BenchCase("tadf_cls", _make_cls),
    BenchCase("tadf_reg", _make_reg),
]
