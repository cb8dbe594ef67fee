"""RM over the head outputs of all FPN levels, and PFI on every level, with a one-anchor head of 80 classes.

The head has one prior per location (ATSS/FCOS style; the workload's levels start at stride 4, where
a nine-anchor RetinaNet head would not exist), its logits seeded with the teacher correlated to the
student. RM's candidates are built once, outside the timed step, as ATSS does: per object the nine
locations of each level nearest the box centre, kept where they lie inside the box.
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss, pfi_loss, rm_concat_levels, rm_loss
from . import BenchCase, feature_levels

CHANNELS = 256
CLASSES = 80
CANDIDATES_PER_LEVEL = 9


def _head_logits(device, dtype, levels, batch):
    return feature_levels(device, dtype, levels, batch, CLASSES, seed=1)


def _assignment(levels, gt_boxes, image_size):
    """``(N, P)`` object index of each location (-1: none) and the per-image labels."""
    g = torch.Generator().manual_seed(2)
    centres = []
    for height, width in levels:
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        stride = torch.tensor([image_size[1] / width, image_size[0] / height])
        centres.append((torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5) * stride)
    assigned, labels = [], []
    for boxes in gt_boxes:
        boxes = boxes.cpu()
        best = torch.full((sum(c.shape[0] for c in centres),), -1)
        offset = 0
        for level_centres in centres:
            box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            nearest = torch.cdist(box_centres, level_centres).topk(CANDIDATES_PER_LEVEL, largest=False).indices
            points = level_centres[nearest]  # (M, 9, 2)
            inside = ((points > boxes[:, None, :2]) & (points < boxes[:, None, 2:])).all(-1)
            owner = torch.arange(len(boxes))[:, None].expand_as(nearest)
            best[offset + nearest[inside]] = owner[inside]
            offset += level_centres.shape[0]
        assigned.append(best)
        labels.append(torch.randint(0, CLASSES, (len(boxes),), generator=g))
    return torch.stack(assigned), labels


def _make_rm(device, dtype, levels, gt_boxes, image_size):
    students, teachers = _head_logits(device, dtype, levels, len(gt_boxes))
    assigned, labels = _assignment(levels, gt_boxes, image_size)
    assigned, labels = assigned.to(device), [lab.to(device) for lab in labels]
    return lambda: rm_loss(rm_concat_levels(students, CLASSES), rm_concat_levels(teachers, CLASSES), assigned, labels)


def _make_pfi(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    student_logits, teacher_logits = _head_logits(device, dtype, levels, len(gt_boxes))
    return lambda: multilevel_loss(pfi_loss, students, teachers, student_logits, teacher_logits)


BENCH = [BenchCase("rm", _make_rm, channels=CLASSES), BenchCase("pfi", _make_pfi, channels=CHANNELS)]
