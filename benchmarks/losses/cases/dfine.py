"""D-FINE's DDF loss over the decoder layers of a D-FINE-L-sized decoder (not FPN levels).

300 queries, reg_max 32 (132 distribution logits per query), 80 classes, 6 decoder layers (the last one
teaches the other five); the harness's boxes are the GT, and the first 20 queries of each image are
matched to them (``matched_gt``), built once outside the timed closure.
"""

from __future__ import annotations

import torch

from kdimpl import MultiLevelLoss
from kdimpl.losses.dfine import DFineDDFLoss

from . import BenchCase

QUERIES = 300
CORNERS = 4 * 33
CLASSES = 80
LAYERS = 6


def _make_ddf(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    corners = [2 * torch.randn(batch, QUERIES, CORNERS, generator=generator) for _ in range(LAYERS)]
    students = [c.to(device, dtype).requires_grad_(True) for c in corners[:-1]]
    teacher = corners[-1].to(device, dtype)
    logits = torch.randn(batch, QUERIES, CLASSES, generator=generator).to(device, dtype)
    height, width = image_size
    xy = torch.rand(LAYERS - 1, batch, QUERIES, 2, generator=generator) * torch.tensor([width, height]) * 0.7
    wh = torch.rand(LAYERS - 1, batch, QUERIES, 2, generator=generator) * 200 + 8
    boxes = list(torch.cat([xy, xy + wh], dim=-1).to(device, dtype))
    matched = torch.full((batch, QUERIES), -1, dtype=torch.long)
    for i, gt in enumerate(gt_boxes):
        matched[i, : gt.shape[0]] = torch.arange(gt.shape[0])
    matched = matched.to(device)
    criterion = MultiLevelLoss(DFineDDFLoss(), loss_weight=1.5)
    return lambda: criterion(students, [teacher] * (LAYERS - 1), boxes, teacher_logits=logits,
                             matched_gt=matched, gt_boxes=gt_boxes)


BENCH = [BenchCase("dfine_ddf", _make_ddf, channels=CORNERS)]
