import torch

from . import LossCase, feature_pair

TEACHERS, CHANNELS = 3, 4


def _weights(generator, device, dtype, batch):
    return torch.rand(batch, TEACHERS, generator=generator).to(device, dtype)


def _logit_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(batch, width, generator=generator)
    teacher = 0.5 * student[:, None] + torch.randn(batch, TEACHERS, width, generator=generator)
    return (student.to(device, dtype), teacher.to(device, dtype), _weights(generator, device, dtype, batch)), {}


def _feature_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, TEACHERS * CHANNELS, height, width)
    student = student.reshape(batch, TEACHERS, CHANNELS, height, width)
    teacher = teacher.reshape(batch, TEACHERS, CHANNELS, height, width)
    return (student, teacher, _weights(generator, device, dtype, batch)), {}


CASES = [
    LossCase("mtkd_rl_logit", _logit_inputs, uses_boxes=False),
    LossCase("mtkd_rl_feature", _feature_inputs, uses_boxes=False),
]
