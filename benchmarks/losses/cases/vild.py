"""ViLD's two losses on region embeddings of realistic size (the FPN workload does not apply: both act on RoIs).

``vild_text``: 512 sampled RoIs per image (the official sampler), 512-dim embeddings (CLIP ViT-B/32), 866 base
categories (LVIS frequent + common) plus the learned background. ``vild_image``: 300 pre-computed proposals per
image (the official ``max_num_rois``) against their CLIP image embeddings.
"""

from __future__ import annotations

import torch

from kdimpl.losses.vild import ViLDImageLoss, ViLDTextLoss

from . import BenchCase

DIM, CLASSES, ROIS, PROPOSALS = 512, 866, 512, 300


def _make_text(device, dtype, levels, gt_boxes, image_size):
    g = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    regions = torch.randn(batch, ROIS, DIM, generator=g).to(device, dtype).requires_grad_(True)
    text = torch.randn(CLASSES, DIM, generator=g).to(device, dtype)
    labels = torch.randint(0, CLASSES + 1, (batch, ROIS), generator=g).to(device)
    criterion = ViLDTextLoss(embed_dim=DIM).to(device, dtype)
    return lambda: criterion(regions, text, labels)


def _make_image(device, dtype, levels, gt_boxes, image_size):
    g = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    regions = torch.randn(batch, PROPOSALS, DIM, generator=g).to(device, dtype).requires_grad_(True)
    clip = (0.5 * regions.detach() + torch.randn(batch, PROPOSALS, DIM, generator=g).to(device, dtype))
    return lambda: ViLDImageLoss(loss_weight=0.5)(regions, clip)


BENCH = [
    BenchCase("vild_text", _make_text, channels=DIM),
    BenchCase("vild_image", _make_image, channels=DIM),
]
