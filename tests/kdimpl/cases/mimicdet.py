import torch

from . import LossCase

BOXES = 5  # sampled boxes per image
DIM = 12


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(batch * BOXES, DIM, generator=generator)
    teacher = 0.5 * student + torch.randn(batch * BOXES, DIM, generator=generator)
    mask = torch.rand(batch * BOXES, generator=generator) > 0.3
    return (student.to(device, dtype), teacher.to(device, dtype)), {"sample_mask": mask.to(device)}


CASES = [LossCase("mimicdet", _inputs, uses_boxes=False)]
