import torch

from . import LossCase

POSITIONS = 7
HEADS = 2
DIM = 4
QUERIES = 3


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(batch, POSITIONS, HEADS, DIM, generator=generator)
    teacher = 0.5 * student + torch.randn(batch, POSITIONS, HEADS, DIM, generator=generator)
    logits = torch.randn(batch, HEADS, QUERIES, POSITIONS, generator=generator)
    real = torch.zeros(batch, QUERIES, dtype=torch.bool)
    real[:, :2] = True
    return (student.to(device, dtype), teacher.to(device, dtype), logits.to(device, dtype), real.to(device)), {}


CASES = [LossCase("icd", _inputs, uses_boxes=False)]
