import torch

from . import LossCase, feature_pair


def _features(generator, device, dtype, *, batch, height, width, num_boxes):
    return feature_pair(generator, device, dtype, batch, 4, height, width), {}


def _logits(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(8 * batch, 5, generator=generator)
    teacher = 0.5 * student + torch.randn(8 * batch, 5, generator=generator)
    return (student.to(device, dtype), teacher.to(device, dtype)), {}


def _regression(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(8 * batch, 4, generator=generator)
    teacher = 0.5 * student + torch.randn(8 * batch, 4, generator=generator)
    target = torch.randn(8 * batch, 4, generator=generator)
    return (student.to(device, dtype), teacher.to(device, dtype), target.to(device, dtype)), {}


CASES = [
    LossCase("chen2017_hint", _features, uses_boxes=False),
    # soft-target cross-entropy equals the (weighted) teacher entropy at student == teacher, not 0
    LossCase("chen2017_soft_ce", _logits, options={"temperature": 2.0}, uses_boxes=False, zero_when_equal=False),
    LossCase("chen2017_bounded_regression", _regression, uses_boxes=False),
]
