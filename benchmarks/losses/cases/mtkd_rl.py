"""MTKD-RL with three teachers: the weighted feature term on every FPN level (one student map for all
teachers, the official MSE form), and the weighted logit term on per-image logits of 80 classes."""

from __future__ import annotations

import torch

from kdimpl import MTKDRLFeatureLoss, MTKDRLLogitLoss, MultiLevelLoss

from . import BenchCase, feature_levels

CHANNELS, TEACHERS, CLASSES = 256, 3, 80


def _weights(device, dtype, batch):
    generator = torch.Generator().manual_seed(7)
    return torch.softmax(torch.randn(batch, TEACHERS, generator=generator), dim=1).to(device, dtype)


def _make_feature(device, dtype, levels, gt_boxes, image_size):
    batch = len(gt_boxes)
    students, teachers = feature_levels(device, dtype, levels, batch, CHANNELS)
    others = [feature_levels(device, dtype, levels, batch, CHANNELS, seed=seed)[1] for seed in range(1, TEACHERS)]
    stacked = [torch.stack([t, *(o[level] for o in others)], dim=1) for level, t in enumerate(teachers)]
    criterion = MultiLevelLoss([MTKDRLFeatureLoss() for _ in levels], loss_weight=5.0)
    weights = _weights(device, dtype, batch)
    return lambda: criterion(students, stacked, teacher_weights=weights)


def _make_logit(device, dtype, levels, gt_boxes, image_size):
    batch = len(gt_boxes)
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(batch, CLASSES, generator=generator).to(device, dtype).requires_grad_(True)
    teacher = torch.randn(batch, TEACHERS, CLASSES, generator=generator).to(device, dtype)
    criterion = MTKDRLLogitLoss()
    weights = _weights(device, dtype, batch)
    return lambda: criterion(student, teacher, weights)


BENCH = [
    BenchCase("mtkd_rl_feature", _make_feature, channels=CHANNELS),
    BenchCase("mtkd_rl_logit", _make_logit, channels=CHANNELS),
]
