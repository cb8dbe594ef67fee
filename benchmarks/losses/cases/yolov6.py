"""YOLOv6's distillation terms on the anchors of all five FPN levels concatenated (80 classes, reg_max 16).

The foreground mask (a stand-in for the TAL assigner's ``topk=13``) is, for every GT box, the 13 anchors of
any level whose cell centre lies inside the box closest to its centre, built once outside the timed closure.
"""

from __future__ import annotations

import torch

from kdimpl.losses.yolov6 import YOLOv6ClsLoss, YOLOv6DFLLoss

from . import BenchCase

CLASSES = 80
DISTRI = 4 * 17


def _anchors(device, dtype, levels, batch, channels, seed, sigmoid=False):
    generator = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in levels)
    student = 2 * torch.randn(batch, total, channels, generator=generator)
    teacher = 0.5 * student + 2 * torch.randn(batch, total, channels, generator=generator)
    if sigmoid:
        student, teacher = student.sigmoid(), teacher.sigmoid()
    return student.to(device, dtype).requires_grad_(True), teacher.to(device, dtype)


def foreground(levels, gt_boxes, image_size, device, topk=13):
    """``(N, A)`` mask: per box, the ``topk`` anchors (all levels) inside it whose cell centres are closest to its centre."""
    centres = []
    for height, width in levels:
        sy, sx = image_size[0] / height, image_size[1] / width
        ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
        centres.append(torch.stack([xs.flatten() * sx, ys.flatten() * sy], dim=1))
    points = torch.cat(centres).to(device)[:, None]  # (A, 1, 2)
    masks = []
    for boxes in gt_boxes:
        inside = ((points >= boxes[None, :, :2]) & (points <= boxes[None, :, 2:])).all(-1)  # (A, M)
        distance = (points - (boxes[None, :, :2] + boxes[None, :, 2:]) / 2).norm(dim=-1).masked_fill(~inside, float("inf"))
        nearest, index = distance.topk(topk, dim=0, largest=False)
        mask = torch.zeros(points.shape[0], dtype=torch.bool, device=device)
        mask[index[nearest.isfinite()]] = True
        masks.append(mask)
    return torch.stack(masks)


def _make_cls(device, dtype, levels, gt_boxes, image_size):
    student, teacher = _anchors(device, dtype, levels, len(gt_boxes), CLASSES, 0, sigmoid=True)
    criterion = YOLOv6ClsLoss()
    return lambda: criterion(student, teacher)


def _make_dfl(device, dtype, levels, gt_boxes, image_size):
    student, teacher = _anchors(device, dtype, levels, len(gt_boxes), DISTRI, 1)
    fg = foreground(levels, gt_boxes, image_size, device)
    criterion = YOLOv6DFLLoss(loss_weight=0.5)
    return lambda: criterion(student, teacher, fg)


BENCH = [
    BenchCase("yolov6_cls", _make_cls, channels=CLASSES),
    BenchCase("yolov6_dfl", _make_dfl, channels=DISTRI),
]
