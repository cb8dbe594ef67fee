"""LD's three terms on every FPN level of a GFL head (80 classes, reg_max 16: 68 box channels), maps precomputed.

The region maps are built once outside the timed closure, as the official head builds them before its
loss: the main region is the locations whose anchor has IoU >= 0.5 with a box (a stand-in for the ATSS
positives) weighted by the student's highest class score, the VLR comes from :func:`ld_valuable_regions`.
``ld_vlr_regions`` times building the VLR maps (forward only).
"""

from __future__ import annotations

import torch

from kdimpl import MultiLevelLoss
from kdimpl.losses.ld import LDClsLoss, LDLoss, LDVLRLoss, ld_grid_anchors, ld_valuable_regions

from . import BenchCase

CLASSES = 80
BOX_CHANNELS = 4 * 17


def _heads(device, dtype, levels, batch, channels, seed):
    generator = torch.Generator().manual_seed(seed)
    students, teachers = [], []
    for height, width in levels:
        student = 2 * torch.randn(batch, channels, height, width, generator=generator)
        teacher = 0.5 * student + 2 * torch.randn(batch, channels, height, width, generator=generator)
        students.append(student.to(device, dtype).requires_grad_(True))
        teachers.append(teacher.to(device, dtype))
    return students, teachers


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def positive_masks(levels, gt_boxes, image_size, device):
    """``(N, H, W)`` masks of the locations whose anchor has IoU >= 0.5 with some box."""
    masks = []
    for anchors in ld_grid_anchors(levels, image_size, device=device):
        flat = anchors.reshape(-1, 1, 4)
        per_image = []
        for boxes in gt_boxes:
            lt = torch.maximum(flat[..., :2], boxes[None, :, :2])
            rb = torch.minimum(flat[..., 2:], boxes[None, :, 2:])
            inter = (rb - lt).clamp(min=0).prod(-1)
            iou = inter / (_area(flat) + _area(boxes)[None] - inter)
            per_image.append((iou >= 0.5).any(dim=1).reshape(anchors.shape[:2]))
        masks.append(torch.stack(per_image))
    return masks


def _make_ld(device, dtype, levels, gt_boxes, image_size):
    students, teachers = _heads(device, dtype, levels, len(gt_boxes), BOX_CHANNELS, 0)
    scores, _ = _heads(device, dtype, levels, len(gt_boxes), CLASSES, 1)
    positives = positive_masks(levels, gt_boxes, image_size, device)
    maps = [p * s.detach().sigmoid().amax(dim=1) for p, s in zip(positives, scores)]
    criterion = MultiLevelLoss(LDLoss(), loss_weight=0.25)
    return lambda: criterion(students, teachers, maps)


def _make_vlr(device, dtype, levels, gt_boxes, image_size):
    students, teachers = _heads(device, dtype, levels, len(gt_boxes), BOX_CHANNELS, 0)
    maps = ld_valuable_regions(ld_grid_anchors(levels, image_size, device=device), gt_boxes)
    criterion = MultiLevelLoss(LDVLRLoss(), loss_weight=0.25)
    return lambda: criterion(students, teachers, maps)


def _make_cls(device, dtype, levels, gt_boxes, image_size):
    students, teachers = _heads(device, dtype, levels, len(gt_boxes), CLASSES, 1)
    positives = positive_masks(levels, gt_boxes, image_size, device)
    criterion = MultiLevelLoss(LDClsLoss(), loss_weight=10.0)
    return lambda: criterion(students, teachers, positives)


def _make_regions(device, dtype, levels, gt_boxes, image_size):
    anchors = ld_grid_anchors(levels, image_size, device=device)
    return lambda: ld_valuable_regions(anchors, gt_boxes)


BENCH = [
    BenchCase("ld", _make_ld, channels=BOX_CHANNELS),
    BenchCase("ld_vlr", _make_vlr, channels=BOX_CHANNELS),
    BenchCase("ld_cls", _make_cls, channels=CLASSES),
    BenchCase("ld_vlr_regions", _make_regions, channels=BOX_CHANNELS, backward=False),
]
