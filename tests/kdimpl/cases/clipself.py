import torch

from . import LossCase


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    regions = max(num_boxes, 1) + 1
    student = torch.randn(batch, regions, 16, generator=generator)
    teacher = 0.5 * student + torch.randn(batch, regions, 16, generator=generator)
    valid = torch.rand(batch, regions, generator=generator) < 0.7
    valid[:, 0] = True
    if batch > 1:  # unequal box counts per image, so that a process's count differs from the batch's mean
        valid[0] = True
        valid[-1, 1:] = False
    return (student.to(device, dtype), teacher.to(device, dtype)), {"valid_mask": valid.to(device)}


CASES = [LossCase("clipself", _inputs, uses_boxes=False)]
