"""HEAD workloads: 2 images x 512 sampled RoIs, as the official RoI sampler gives.

``head_mimic``: both mimic losses (``shared_fcs[0]`` and ``[-1]``, 1024-d, each through its own
``Linear(1024, 1024)``); ``head_cross``: the student's 256-channel classification-tower maps on the
workload's five levels, one position per RoI (a quarter of the RoIs are ground-truth RoIs without an
anchor), through ``Linear(256, 1024)``, against the teacher's 1024-d RoI features.
"""

from __future__ import annotations

import torch

from kdimpl.losses.head import HEADCrossLoss, HEADMimicLoss

from . import BenchCase, feature_levels

ROIS = 512
FC = 1024


def _make_mimic(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    n = len(gt_boxes)
    students = [torch.randn(n * ROIS, FC, generator=generator).to(device, dtype).requires_grad_(True) for _ in range(2)]
    teachers = [torch.randn(n * ROIS, FC, generator=generator).to(device, dtype) for _ in range(2)]
    torch.manual_seed(0)
    losses = [HEADMimicLoss(student_channels=FC, channels=FC).to(device, dtype) for _ in range(2)]
    return lambda: losses[0](students[0], teachers[0]) + losses[1](students[1], teachers[1])


def _make_cross(device, dtype, levels, gt_boxes, image_size):
    n = len(gt_boxes)
    students, _ = feature_levels(device, dtype, levels, n)
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(n, ROIS, FC, generator=generator).to(device, dtype)
    level = torch.randint(0, len(levels), (n, ROIS), generator=generator)
    sizes = torch.tensor(levels)[level]  # (N, R, 2)
    yx = (torch.rand(n, ROIS, 2, generator=generator) * sizes).long()
    positions = torch.cat([level[..., None], yx], dim=-1)
    positions[:, : ROIS // 4] = -1
    torch.manual_seed(0)
    loss = HEADCrossLoss(student_channels=students[0].shape[1], channels=FC).to(device, dtype)
    return lambda: loss(students, teacher, positions.to(device))


BENCH = [
    BenchCase("head_mimic", _make_mimic, channels=FC),
    BenchCase("head_cross", _make_cross),
]
