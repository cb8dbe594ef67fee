import torch

from . import LossCase


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    queries, classes = 12, 5
    student = torch.randn(batch, queries, 16, generator=generator)
    teacher = torch.randn(classes, 16, generator=generator)
    labels = torch.randint(0, classes + 1, (batch, queries), generator=generator)
    labels[:, 0] = 1  # a matched query in every image
    return (student.to(device, dtype), teacher.to(device, dtype), labels.to(device)), {}


CASES = [LossCase("cckt_det", _inputs, zero_when_equal=False, uses_boxes=False)]
