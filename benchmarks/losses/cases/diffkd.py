"""DiffKD on every FPN level, each with its own diffusion model, noise adapter and 1x1 student adapter (5 DDIM steps).

The learnable pieces are trained by this loss, so backward fills their gradients, as in the official code.
"""

from __future__ import annotations

import torch

from kdimpl import DiffKDLoss, MultiLevelLoss

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    torch.manual_seed(5)
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    criterion = MultiLevelLoss([DiffKDLoss(teacher_channels=CHANNELS) for _ in levels]).to(device=device, dtype=compute)
    rng = torch.Generator(device=device).manual_seed(0)
    return lambda: criterion(students, teachers, rng=rng)


BENCH = [BenchCase("diffkd", _make, channels=CHANNELS)]
