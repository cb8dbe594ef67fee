import torch

from . import LossCase, feature_pair


def _feature_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    logits = (2 * torch.randn(batch, 6, height, width, generator=generator) - 2).to(device, dtype)
    return (student, teacher, logits), {}


def _cls_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 6, height, width)
    return (2 * student - 2, 2 * teacher - 2), {}


CASES = [
    LossCase("frs_feature", _feature_inputs, uses_boxes=False),
    # Binary cross-entropy against the teacher's probabilities: at student == teacher it equals
    # the teacher's entropy (only its gradient vanishes), so it is not zero there.
    LossCase("frs_cls", _cls_inputs, uses_boxes=False, zero_when_equal=False),
]
