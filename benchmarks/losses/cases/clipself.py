"""CLIPSelf on the image-patch setting of the official scripts: EVA-CLIP ViT-B/16 on 1024x1024 images
(a 64x64 map of 768-channel embeddings, L2-normalised per patch), a random m x n grid of crops per image
(m, n <= 6), pooled with clipself_region_embeddings and aligned with the (random, fixed) crop embeddings.

The shared FPN workload does not apply (one ViT map, crops instead of boxes); batch 2 as elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdimpl import CLIPSelfLoss
from kdimpl.losses.clipself import clipself_region_embeddings

from . import BenchCase

SIZE, STRIDE, DIM = 1024, 16, 768


def _grid_boxes(rows, cols, device, dtype):
    ys, xs = torch.linspace(0, SIZE, rows + 1), torch.linspace(0, SIZE, cols + 1)
    boxes = [[xs[j], ys[i], xs[j + 1], ys[i + 1]] for i in range(rows) for j in range(cols)]
    return torch.tensor(boxes, device=device, dtype=dtype)


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    side = SIZE // STRIDE
    dense = torch.randn(len(gt_boxes), DIM, side, side, generator=generator).to(device, dtype).requires_grad_(True)
    boxes = [_grid_boxes(6, 6, device, dtype), _grid_boxes(4, 5, device, dtype)][: len(gt_boxes)]
    teacher = torch.randn(len(gt_boxes), 36, DIM, generator=generator).to(device, dtype)
    criterion = CLIPSelfLoss()

    def step():
        regions, valid = clipself_region_embeddings(F.normalize(dense, dim=1), boxes, (SIZE, SIZE))
        return criterion(regions, teacher, valid_mask=valid)

    return step


BENCH = [BenchCase("clipself", _make, channels=DIM)]
