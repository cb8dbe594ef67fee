import torch

from . import LossCase

NODES = 5  # per image, padded
CLASSES = 4  # K + 1


def _graph_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(batch, NODES, 3, 2, 2, generator=generator)
    teacher = 0.5 * student + torch.randn(batch, NODES, 3, 2, 2, generator=generator)
    fg = torch.zeros(batch, NODES, dtype=torch.bool)
    fg[:, :2] = True
    bg = torch.zeros(batch, NODES, dtype=torch.bool)
    bg[:, 2:] = True
    logits = 2 * torch.randn(batch, NODES, CLASSES, generator=generator)
    return (student.to(device, dtype), teacher.to(device, dtype), fg.to(device), bg.to(device),
            logits.to(device, dtype)), {}


def _logit_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student = 2 * torch.randn(batch, 81, generator=generator)
    teacher = 0.5 * student + 2 * torch.randn(batch, 81, generator=generator)
    return (student.to(device, dtype), teacher.to(device, dtype)), {}


CASES = [
    LossCase("dsig_graph", _graph_inputs, uses_boxes=False),
    LossCase("dsig_logit", _logit_inputs, options={"temperature": 2.0}, uses_boxes=False),
]
