"""CCKT-Det alignment on the official setting: Deformable DETR with 300 queries of 512-d embeddings (CLIP
ViT-B/32's size), 48 COCO base classes of regional guidance, batch 2 with the harness's 20 boxes per image
matched to random queries, over the 6 decoder layers.

The shared FPN workload does not apply (query embeddings, no feature maps).
"""

from __future__ import annotations

import torch

from kdimpl import CCKTDetLoss

from . import BenchCase

QUERIES, DIM, CLASSES, LAYERS = 300, 512, 48, 6


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    layers = [torch.randn(batch, QUERIES, DIM, generator=generator).to(device, dtype).requires_grad_(True)
              for _ in range(LAYERS)]
    teacher = torch.randn(CLASSES, DIM, generator=generator).to(device, dtype)
    labels = torch.zeros(batch, QUERIES, dtype=torch.long)
    for n, boxes in enumerate(gt_boxes):
        matched = torch.randperm(QUERIES, generator=generator)[: len(boxes)]
        labels[n, matched] = torch.randint(1, CLASSES + 1, (len(boxes),), generator=generator)
    labels = labels.to(device)
    criterion = CCKTDetLoss()
    return lambda: sum(criterion(queries, teacher, labels) for queries in layers)


BENCH = [BenchCase("cckt_det", _make, channels=DIM)]
