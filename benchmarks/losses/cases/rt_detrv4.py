"""RT-DETRv4 on its workload: the student's stride-32 AIFI output (256 channels) through the 256 -> 768 injector,
against DINOv3 ViT-B/16 patch features (768 channels, stride 16, resized to the student's size), batch 2.
"""

from __future__ import annotations

import torch
from torch import nn

from kdimpl.losses.rt_detrv4 import rt_detrv4_loss

from . import BenchCase


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    height, width = image_size
    batch = len(gt_boxes)
    student = torch.randn(batch, 256, height // 32, width // 32, generator=generator).to(device, dtype)
    student.requires_grad_(True)
    teacher = torch.randn(batch, 768, height // 16, width // 16, generator=generator).to(device, dtype)
    projector = nn.Linear(256, 768).to(device, dtype)
    return lambda: rt_detrv4_loss(student, teacher, projector_student=projector)


BENCH = [BenchCase("rt_detrv4", _make, channels=256)]
