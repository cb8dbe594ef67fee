"""OADP's distillation pyramid at the official sizes (the FPN workload does not apply: the losses act on regions).

Batch 2, 512-dim embeddings (CLIP ViT-B/32): ``oadp_embedding`` on 300 object proposals per image (object level),
``oadp_relation`` on the blocks of a 2x2 + 3x3 grid per image with their relations across the batch, ``oadp_global``
on one embedding per image. Teacher embeddings come normalised, as the official offline ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdimpl.losses.oadp import OADPEmbeddingLoss, OADPGlobalLoss, OADPRelationLoss

from . import BenchCase

DIM, OBJECTS, BLOCKS = 512, 300, 13


def _pair(device, dtype, count):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(count, DIM, generator=g)
    teacher = F.normalize(0.5 * student + torch.randn(count, DIM, generator=g), dim=-1)
    return student.to(device, dtype).requires_grad_(True), teacher.to(device, dtype)


def _make_embedding(device, dtype, levels, gt_boxes, image_size):
    student, teacher = _pair(device, dtype, len(gt_boxes) * OBJECTS)
    return lambda: OADPEmbeddingLoss(loss_weight=256.0)(student, teacher)


def _make_relation(device, dtype, levels, gt_boxes, image_size):
    student, teacher = _pair(device, dtype, len(gt_boxes) * BLOCKS)
    return lambda: OADPRelationLoss(loss_weight=8.0)(student, teacher)


def _make_global(device, dtype, levels, gt_boxes, image_size):
    student, teacher = _pair(device, dtype, len(gt_boxes))
    return lambda: OADPGlobalLoss(loss_weight=0.5)(student, teacher)


BENCH = [
    BenchCase("oadp_embedding", _make_embedding, channels=DIM),
    BenchCase("oadp_relation", _make_relation, channels=DIM),
    BenchCase("oadp_global", _make_global, channels=DIM),
]
