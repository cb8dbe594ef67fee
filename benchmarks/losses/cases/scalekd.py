"""ScaleKD workloads: scale-decoupled feature loss on every level; assistant mimicking on dense predictions."""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.adapters.scalekd import ScaleDecoupledFeature
from kdimpl.losses.scalekd import scalekd_assistant_box_loss, scalekd_assistant_cls_loss, scalekd_feature_loss
from . import BenchCase, feature_levels

NUM_CLASSES = 80


def _make_feature(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    module_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    with torch.random.fork_rng():
        torch.manual_seed(0)
        decoupler = ScaleDecoupledFeature(256).to(device=device, dtype=module_dtype)
    return lambda: multilevel_loss(scalekd_feature_loss, students, teachers, decoupler_student=decoupler)


def _predictions(device, dtype, levels, batch, columns, seed):
    """Seeded ``(N, P, columns)`` student/assistant predictions, one per location of every level (FCOS/GFL)."""
    points = sum(h * w for h, w in levels)
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, points, columns, generator=generator)
    assistant = 0.5 * student + torch.randn(batch, points, columns, generator=generator)
    return student.to(device, dtype).requires_grad_(True), assistant.to(device, dtype)


def _make_assistant_cls(device, dtype, levels, gt_boxes, image_size):
    student, assistant = _predictions(device, dtype, levels, len(gt_boxes), NUM_CLASSES, seed=0)
    return lambda: scalekd_assistant_cls_loss(student, assistant, activation="sigmoid")


def _make_assistant_box(device, dtype, levels, gt_boxes, image_size):
    student, assistant = _predictions(device, dtype, levels, len(gt_boxes), 4, seed=1)
    return lambda: scalekd_assistant_box_loss(student, assistant)


BENCH = [
    BenchCase("scalekd_feature", _make_feature),
    BenchCase("scalekd_assistant_cls", _make_assistant_cls),
    BenchCase("scalekd_assistant_box", _make_assistant_box),
]
