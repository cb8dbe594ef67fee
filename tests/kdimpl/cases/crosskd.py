import torch

from . import LossCase, feature_pair
from .bckd import BINS, CLASSES, _cls_inputs, _valid_mask


def _box_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4 * BINS, height, width)
    _, teacher_logits = feature_pair(generator, device, dtype, batch, CLASSES, height, width)
    mask = _valid_mask(generator, device, dtype, batch, height, width)
    return (student, teacher, teacher_logits, mask), {}


CASES = [
    LossCase("crosskd_cls", _cls_inputs, options={"beta": 1.0}, uses_boxes=False),
    LossCase("crosskd_box", _box_inputs, options={"temperature": 1.0}, uses_boxes=False),
]


def _box_iou_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    anchors = 2
    xy = torch.rand(batch, anchors, 2, height, width, generator=generator) * 50
    wh = 1 + torch.rand(batch, anchors, 2, height, width, generator=generator) * 20
    teacher = torch.cat([xy, xy + wh], dim=2).reshape(batch, 4 * anchors, height, width)
    student = teacher + 2 * torch.randn(teacher.shape, generator=generator)
    logits = torch.randn(batch, anchors * CLASSES, height, width, generator=generator)
    mask = (torch.rand(batch, anchors, height, width, generator=generator) > 0.2).to(device, dtype)
    tensors = (t.to(device, dtype) for t in (student, teacher, logits))
    return (*tensors, mask), {"num_positives": 3.0}


CASES.append(LossCase("crosskd_box_iou", _box_iou_inputs, uses_boxes=False))
