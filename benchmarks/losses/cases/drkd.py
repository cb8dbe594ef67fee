"""DRKD workloads: pixel relation on all levels, instance relation on the two finest (as the official code).

``drkd_pixel`` includes the GloRe units and adaptation convolutions (learnable layers that the official
code runs the same way); ``drkd_pixel-loss-part`` times the loss alone on precomputed relation features.
"""

from __future__ import annotations

import torch

from kdimpl import MultiLevelLoss
from kdimpl.losses.drkd import DRKDInstanceLoss, DRKDPixelLoss, drkd_pixel_loss
from . import BenchCase, feature_levels


def _module_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _make_pixel(device, dtype, levels, gt_boxes, image_size):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes))
    nodes = [64 if i < 2 else 256 for i in range(len(levels))]  # official: 64 nodes on P2-P3, 256 above
    torch.manual_seed(0)
    criterion = MultiLevelLoss([DRKDPixelLoss(channels=256, num_nodes=m) for m in nodes])
    criterion.to(device=device, dtype=_module_dtype(dtype))
    return lambda: criterion(student, teacher)


def _make_pixel_loss_part(device, dtype, levels, gt_boxes, image_size):
    # Stand-ins for the outputs of the GloRe units (student side after its adaptation): both are leaves
    # that take a gradient, as the two trained units' outputs do, so the teacher side is not detached.
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), seed=1)
    teachers = [t.requires_grad_(True) for t in teachers]

    def run():
        return sum(drkd_pixel_loss(s, t, detach_teacher=False) for s, t in zip(students, teachers))

    return run


def _make_instance(device, dtype, levels, gt_boxes, image_size):
    student, teacher = feature_levels(device, dtype, levels[:2], len(gt_boxes))
    torch.manual_seed(0)
    criterion = MultiLevelLoss([DRKDInstanceLoss(channels=256) for _ in range(2)])
    criterion.to(device=device, dtype=_module_dtype(dtype))
    return lambda: criterion(student, teacher, gt_boxes=gt_boxes, image_size=image_size)


BENCH = [
    BenchCase("drkd_pixel", _make_pixel),
    BenchCase("drkd_pixel-loss-part", _make_pixel_loss_part),
    BenchCase("drkd_instance", _make_instance),
]
