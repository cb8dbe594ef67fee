"""DeCLIP context distillation on the official EVA-CLIP ViT-B/16 setting: 560x560 images (a 35x35 map of
768-channel query features) against DINOv2-B features of a 490x490 proxy image (patch 14: the same 35x35 grid,
768 channels; the released scripts size the proxy image so that the grids agree), batch 2.

The shared FPN workload does not apply (one ViT map per model, no boxes).
"""

from __future__ import annotations

import torch

from kdimpl import DeCLIPContextLoss

from . import BenchCase

DIM = 768


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    student = torch.randn(batch, DIM, 35, 35, generator=generator).to(device, dtype).requires_grad_(True)
    teacher = torch.randn(batch, DIM, 35, 35, generator=generator).to(device, dtype)
    criterion = DeCLIPContextLoss()
    return lambda: criterion(student, teacher)


BENCH = [BenchCase("declip_context", _make, channels=DIM)]
