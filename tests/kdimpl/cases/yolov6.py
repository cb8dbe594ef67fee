import torch

from . import LossCase

_BINS = 5  # reg_max + 1
_CLASSES = 6


def _pair(generator, device, dtype, batch, anchors, channels, scale):
    student = scale * torch.randn(batch, anchors, channels, generator=generator)
    teacher = 0.5 * student + scale * torch.randn(batch, anchors, channels, generator=generator)
    return student.to(device, dtype), teacher.to(device, dtype)


def _cls_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = _pair(generator, device, dtype, batch, height * width, _CLASSES, 1.0)
    return (student.sigmoid(), teacher.sigmoid()), {}


def _dfl_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = _pair(generator, device, dtype, batch, height * width, 4 * _BINS, 2.0)
    fg = torch.rand(batch, height * width, generator=generator) < 0.3
    return (student, teacher, fg.to(device)), {}


CASES = [
    LossCase("yolov6_cls", _cls_inputs, options={"temperature": 20.0}, uses_boxes=False),
    LossCase("yolov6_dfl", _dfl_inputs, options={"temperature": 20.0}, uses_boxes=False),
]
