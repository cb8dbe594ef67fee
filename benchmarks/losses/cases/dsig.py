"""DSIG workloads: 2 images x 512 sampled RoIs (25 % foreground, as detectron2's sampler), 256 x 7 x 7 node features.

``dsig_graph``: the instance graph (edges over foreground + mined background, node terms) with the teacher's
81-class RoI logits for the mining; ``dsig_logit``: the RoI classification KD over the 1024 RoIs, 81 classes.
"""

from __future__ import annotations

import torch

from kdimpl.losses.dsig import DSIGGraphLoss, DSIGLogitLoss

from . import BenchCase

ROIS = 512
FG = 128
CLASSES = 81


def _make_graph(device, dtype, levels, gt_boxes, image_size):
    n = len(gt_boxes)
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(n, ROIS, 256, 7, 7, generator=generator)
    teacher = 0.5 * student + torch.randn(n, ROIS, 256, 7, 7, generator=generator)
    logits = 2 * torch.randn(n, ROIS, CLASSES, generator=generator)
    logits[..., 0] += 8.0  # the teacher finds most background RoIs easy: 23 % of them are mined
    fg = torch.zeros(n, ROIS, dtype=torch.bool, device=device)
    fg[:, :FG] = True
    student = student.to(device, dtype).requires_grad_(True)
    teacher, logits = teacher.to(device, dtype), logits.to(device, dtype)
    loss = DSIGGraphLoss()
    return lambda: loss(student, teacher, fg, ~fg, logits)


def _make_logit(device, dtype, levels, gt_boxes, image_size):
    n = len(gt_boxes)
    generator = torch.Generator().manual_seed(1)
    student = 2 * torch.randn(n * ROIS, CLASSES, generator=generator)
    teacher = 0.5 * student + 2 * torch.randn(n * ROIS, CLASSES, generator=generator)
    student = student.to(device, dtype).requires_grad_(True)
    loss = DSIGLogitLoss(loss_weight=3.0)
    return lambda: loss(student, teacher.to(device, dtype))


BENCH = [
    BenchCase("dsig_graph", _make_graph),
    BenchCase("dsig_logit", _make_logit, channels=CLASSES),
]
