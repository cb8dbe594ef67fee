"""G-DetKD workloads: 2 images x 512 RoIs, as a Faster R-CNN RoI head samples them.

``gdetkd_sgfi``: 7x7 RoI features of 256 channels pooled from four student levels (todd's typical
``4 x 1024 x 256 x 7 x 7``), the teacher's from one, through the level attention (128/64 channels);
``gdetkd_contrastive``: 1024-d region embeddings with the overlap filter and a memory of 10 earlier batches.
"""

from __future__ import annotations

import torch

from kdimpl.losses.gdetkd import GDetKDContrastiveLoss, GDetKDSGFILoss

from . import BenchCase

ROIS = 512
LEVELS = 4
DIM = 1024


def _make_sgfi(device, dtype, levels, gt_boxes, image_size):
    n = len(gt_boxes)
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(LEVELS, n * ROIS, 256, 7, 7, generator=generator)
    teacher = 0.5 * student[1] + torch.randn(n * ROIS, 256, 7, 7, generator=generator)
    student = student.to(device, dtype).requires_grad_(True)
    torch.manual_seed(0)
    loss = GDetKDSGFILoss(channels=256).to(device, dtype)
    return lambda: loss(student, teacher.to(device, dtype))


def _make_contrastive(device, dtype, levels, gt_boxes, image_size):
    n = len(gt_boxes)
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(n, ROIS, DIM, generator=generator).to(device, dtype).requires_grad_(True)
    teacher = torch.randn(n, ROIS, DIM, generator=generator).to(device, dtype)
    memory = torch.nn.functional.normalize(torch.randn(10 * n * ROIS, DIM, generator=generator), dim=-1)
    memory = memory.to(device, dtype)
    xy = torch.rand(n, ROIS, 2, generator=generator) * torch.tensor([image_size[1], image_size[0]]) * 0.8
    wh = 16 + torch.rand(n, ROIS, 2, generator=generator) * 200
    rois = torch.cat([xy, xy + wh], dim=-1).to(device, dtype)
    loss = GDetKDContrastiveLoss()
    return lambda: loss(student, teacher, rois, memory=memory)


BENCH = [
    BenchCase("gdetkd_sgfi", _make_sgfi),
    BenchCase("gdetkd_contrastive", _make_contrastive, channels=DIM),
]
