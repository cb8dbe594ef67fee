import torch

from . import LossCase, feature_pair

CLASSES = 5
BINS = 8  # reg_max + 1


def _valid_mask(generator, device, dtype, batch, height, width):
    return (torch.rand(batch, height, width, generator=generator) > 0.2).to(device, dtype)


def _cls_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CLASSES, height, width)
    mask = _valid_mask(generator, device, dtype, batch, height, width)
    return (student, teacher, mask), {"num_positives": 3.0}


def _box_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4 * BINS, height, width)
    _, teacher_logits = feature_pair(generator, device, dtype, batch, CLASSES, height, width)
    mask = _valid_mask(generator, device, dtype, batch, height, width)
    return (student, teacher, teacher_logits, mask), {}


CASES = [
    LossCase("crosskd_cls", _cls_inputs, options={"beta": 1.0}, uses_boxes=False),
    LossCase("crosskd_box", _box_inputs, options={"temperature": 1.0}, uses_boxes=False),
]
