import torch

from . import LossCase

_BINS = 5  # reg_max + 1
_CLASSES = 6


def _pair(generator, device, dtype, batch, channels, height, width):
    student = 2 * torch.randn(batch, channels, height, width, generator=generator)
    teacher = 0.5 * student + 2 * torch.randn(batch, channels, height, width, generator=generator)
    return student.to(device, dtype), teacher.to(device, dtype)


def _region(generator, device, dtype, batch, height, width):
    """A sparse region map: about a fifth of the locations, with weights in (0, 1)."""
    inside = torch.rand(batch, height, width, generator=generator) < 0.2
    return (inside * torch.rand(batch, height, width, generator=generator)).to(device, dtype)


def _box_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = _pair(generator, device, dtype, batch, 4 * _BINS, height, width)
    return (student, teacher, _region(generator, device, dtype, batch, height, width)), {}


def _cls_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = _pair(generator, device, dtype, batch, _CLASSES, height, width)
    positives = torch.rand(batch, height, width, generator=generator) < 0.2
    return (student, teacher, positives.to(device)), {}


CASES = [
    LossCase("ld", _box_inputs, options={"temperature": 10.0}, uses_boxes=False),
    LossCase("ld_vlr", _box_inputs, options={"temperature": 10.0}, uses_boxes=False),
    LossCase("ld_cls", _cls_inputs, options={"temperature": 2.0}, uses_boxes=False),
]
