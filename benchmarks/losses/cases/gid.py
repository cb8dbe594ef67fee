"""GID on the shared workload: the three losses on all five levels at once (each normalises over all levels),
the workload's boxes standing in for the selected general instances.

``gid_response`` uses a one-anchor-per-location head (80 classes, 4 box channels, a square anchor of eight
strides per location); ``gid_select`` times the instance selection (GISM with NMS) on those head outputs,
forward only.
"""

from __future__ import annotations

import torch

from kdimpl.losses.gid import GIDFeatureLoss, GIDRelationLoss, GIDResponseLoss, gid_select_instances

from . import BenchCase, feature_levels

CLASSES = 80


def _anchors(levels, image_size, device, dtype):
    anchors = []
    for height, width in levels:
        stride = image_size[1] / width
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        cx, cy = (xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride
        half = 4 * stride
        anchors.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1).to(device, dtype))
    return anchors


def _make_feature(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    criterion = GIDFeatureLoss()
    return lambda: criterion(students, teachers, gt_boxes, image_size)


def _make_relation(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes))
    criterion = GIDRelationLoss()
    return lambda: criterion(students, teachers, gt_boxes, image_size)


def _make_response(device, dtype, levels, gt_boxes, image_size):
    s_cls, t_cls = feature_levels(device, dtype, levels, len(gt_boxes), channels=CLASSES, seed=1)
    s_reg, t_reg = feature_levels(device, dtype, levels, len(gt_boxes), channels=4, seed=2)
    anchors = _anchors(levels, image_size, device, dtype)
    criterion = GIDResponseLoss()
    return lambda: criterion(s_cls, t_cls, s_reg, t_reg, anchors, gt_boxes)


def _make_select(device, dtype, levels, gt_boxes, image_size):
    s_cls, t_cls = feature_levels(device, dtype, levels, len(gt_boxes), channels=CLASSES, seed=1)
    flat = lambda x: x.detach().flatten(2).transpose(1, 2)  # noqa: E731  (N, H*W, 80)
    s_cls, t_cls = [flat(x) for x in s_cls], [flat(x) for x in t_cls]
    anchors = _anchors(levels, image_size, device, dtype)
    generator = torch.Generator().manual_seed(3)
    jitter = [8 * torch.randn(len(gt_boxes), a.shape[0], 4, generator=generator).to(device, dtype) for a in anchors]
    s_boxes = [a + j for a, j in zip(anchors, jitter)]
    t_boxes = [a - j for a, j in zip(anchors, jitter)]
    return lambda: gid_select_instances(s_cls, t_cls, s_boxes, t_boxes, image_size).boxes


BENCH = [
    BenchCase("gid_feature", _make_feature),
    BenchCase("gid_relation", _make_relation),
    BenchCase("gid_response", _make_response, channels=CLASSES),
    BenchCase("gid_select", _make_select, channels=CLASSES, backward=False),
]
