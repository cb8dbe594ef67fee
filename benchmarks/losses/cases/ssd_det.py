"""SSD-Det's self-distillation losses on the refiner's bags: 20 objects per image, 50 proposals per bag."""

from __future__ import annotations

import torch

from kdimpl.losses.ssd_det import ssd_det_sisd_loss, ssd_det_spsd_loss

from . import BenchCase

BAG = 50


def _bags(device, dtype, gt_boxes):
    boxes = torch.cat(list(gt_boxes)).to(device, dtype)
    generator = torch.Generator().manual_seed(11)
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    jitter = (torch.rand(boxes.shape[0], BAG, 4, generator=generator) - 0.5).to(device, dtype) * 0.4 * size[:, None]
    return boxes, boxes[:, None] + jitter, generator


def _make_spsd(device, dtype, levels, gt_boxes, image_size):
    boxes, proposals, generator = _bags(device, dtype, gt_boxes)
    deltas = (0.3 * torch.randn(proposals.shape, generator=generator)).to(device, dtype).requires_grad_(True)
    scores = torch.rand(boxes.shape[0], generator=generator).to(device, dtype)
    # stage I (weights 1) and stage II (bag-score weights), official weight 0.25 each
    return lambda: 0.25 * (ssd_det_spsd_loss(deltas, boxes, proposals)
                           + ssd_det_spsd_loss(deltas, boxes, proposals, bag_scores=scores))


def _make_sisd(device, dtype, levels, gt_boxes, image_size):
    boxes, proposals, generator = _bags(device, dtype, gt_boxes)
    scores = (0.5 * torch.randn(proposals.shape[:2], generator=generator)).to(device, dtype).requires_grad_(True)
    return lambda: 5.0 * ssd_det_sisd_loss(scores, boxes, proposals)


BENCH = [BenchCase("ssd_det_spsd", _make_spsd), BenchCase("ssd_det_sisd", _make_sisd)]
