"""LAD's teacher-side assignment (not a loss; timed forward only): PAA on one anchor per cell of the five FPN
levels (side 8 x stride), 80 classes, the teacher's boxes a noisy copy of the anchors, the harness's boxes."""

from __future__ import annotations

import torch

from kdimpl.losses.lad import lad_assign

from . import BenchCase

CLASSES = 80


def _make(device, dtype, levels, gt_boxes, image_size):
    anchors = []
    for height, width in levels:
        sy, sx = image_size[0] / height, image_size[1] / width
        ys, xs = torch.meshgrid((torch.arange(height) + 0.5) * sy, (torch.arange(width) + 0.5) * sx, indexing="ij")
        centre = torch.stack([xs.flatten(), ys.flatten()], dim=1)
        anchors.append(torch.cat([centre - 4 * sx, centre + 4 * sx], dim=1))
    per_level = [a.shape[0] for a in anchors]
    anchors = torch.cat(anchors).to(device, dtype)
    generator = torch.Generator().manual_seed(0)
    n = len(gt_boxes)
    logits = (torch.randn(n, anchors.shape[0], CLASSES, generator=generator) - 3).to(device, dtype)
    boxes = anchors + 8 * torch.randn(n, anchors.shape[0], 4, generator=generator).to(device, dtype)
    boxes = torch.cat([torch.minimum(boxes[..., :2], boxes[..., 2:]), torch.maximum(boxes[..., :2], boxes[..., 2:]) + 1], -1)
    labels = [torch.randint(0, CLASSES, (len(b),), generator=generator).to(device) for b in gt_boxes]
    # the positives per level, as the forward-only cases return one map per level
    return lambda: lad_assign(logits, boxes, anchors, per_level, gt_boxes, labels).pos_mask.split(per_level, dim=1)


BENCH = [BenchCase("lad_assign", _make, channels=CLASSES, backward=False)]
