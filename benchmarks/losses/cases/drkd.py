"""DRKD workloads: pixel relation on all levels, instance relation on the two finest (as the official code).

``drkd_pixel`` includes the GloRe units and adaptation convolutions (learnable layers that the official
code runs the same way); ``drkd_pixel-loss-part`` times the loss alone on precomputed relation features.
"""

from __future__ import annotations

import torch
from torch import nn

from kdimpl.adapters.drkd import GloReUnit, InstanceRelation
from kdimpl.losses.drkd import drkd_instance_loss, drkd_pixel_loss
from . import BenchCase, feature_levels


def _module_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _make_pixel(device, dtype, levels, gt_boxes, image_size):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes))
    nodes = [64 if i < 2 else 256 for i in range(len(levels))]  # official: 64 nodes on P2-P3, 256 above
    to = dict(device=device, dtype=_module_dtype(dtype))
    s_units = nn.ModuleList([GloReUnit(256, m) for m in nodes]).to(**to)
    t_units = nn.ModuleList([GloReUnit(256, m) for m in nodes]).to(**to)
    adapt = nn.ModuleList([nn.Conv2d(256, 256, 1) for _ in nodes]).to(**to)

    def run():
        return sum(
            drkd_pixel_loss(s, t, student_glore=su, teacher_glore=tu, adaptation=a)
            for s, t, su, tu, a in zip(student, teacher, s_units, t_units, adapt)
        )

    return run


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
    to = dict(device=device, dtype=_module_dtype(dtype))
    s_rel = nn.ModuleList([InstanceRelation(256 * 9) for _ in range(2)]).to(**to)
    t_rel = nn.ModuleList([InstanceRelation(256 * 9) for _ in range(2)]).to(**to)
    adapt = nn.ModuleList([nn.Conv2d(256, 256, 1) for _ in range(4)]).to(**to)

    def run():
        return sum(
            drkd_instance_loss(
                student[i],
                teacher[i],
                gt_boxes,
                image_size,
                student_relation=s_rel[i],
                teacher_relation=t_rel[i],
                adaptation=adapt[i],
                feature_adaptation=adapt[2 + i],
                reduction="sum",
            )
            for i in range(2)
        )

    return run


BENCH = [
    BenchCase("drkd_pixel", _make_pixel),
    BenchCase("drkd_pixel-loss-part", _make_pixel_loss_part),
    BenchCase("drkd_instance", _make_instance),
]
