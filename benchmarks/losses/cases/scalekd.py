"""ScaleKD workloads: scale-decoupled feature loss on every level; assistant mimicking on dense predictions."""

from __future__ import annotations

import torch

from kdimpl.adapters.scalekd import ScaleDecoupledFeature
from kdimpl.losses.scalekd import scalekd_assistant_box_loss, scalekd_assistant_cls_loss, scalekd_feature_loss
from . import BenchCase, feature_levels

NUM_CLASSES = 80


def _make_feature(device, dtype, levels, gt_boxes, image_size):
    student, teacher = feature_levels(device, dtype, levels, len(gt_boxes))
    module_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    decoupler = ScaleDecoupledFeature(256).to(device=device, dtype=module_dtype)

    def run():
        return sum(scalekd_feature_loss(s, t, decoupler=decoupler) for s, t in zip(student, teacher))

    return run


def _make_assistant(device, dtype, levels, gt_boxes, image_size):
    points = sum(h * w for h, w in levels)  # one prediction per location, as in FCOS/GFL
    kw = dict(device=device, dtype=dtype)
    s_cls = torch.randn(2, points, NUM_CLASSES, requires_grad=True, **kw)
    a_cls = torch.randn(2, points, NUM_CLASSES, **kw)
    s_box = torch.randn(2, points, 4, requires_grad=True, **kw)
    a_box = torch.randn(2, points, 4, **kw)

    def run():
        cls = scalekd_assistant_cls_loss(s_cls, a_cls, activation="sigmoid")
        return 0.2 * cls + 0.05 * scalekd_assistant_box_loss(s_box, a_box)

    return run


BENCH = [BenchCase("scalekd_feature", _make_feature), BenchCase("scalekd_assistant", _make_assistant)]
