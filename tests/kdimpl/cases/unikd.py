import torch

from . import LossCase


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    # knowledge of `height` queries with `width` channels; the first third of the queries are positives
    student = torch.randn(batch, height, width, generator=generator)
    teacher = 0.5 * student + torch.randn(batch, height, width, generator=generator)
    positive = torch.zeros(batch, height, dtype=torch.bool)
    positive[:, : height // 3] = True
    return (student.to(device, dtype), teacher.to(device, dtype)), {"positive_mask": positive.to(device)}


CASES = [LossCase("unikd", _inputs, uses_boxes=False)]
