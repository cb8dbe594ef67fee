import torch

from . import LossCase

DIM = 6  # not 2: the permutation test flips any leading dim of size 2


def _unit(x):
    return torch.nn.functional.normalize(x, dim=-1)  # CLIP's embeddings come normalised


def _regions(generator, device, dtype, *, batch, height, width, num_boxes):
    count = 3 * batch  # regions (objects or blocks) of all images of the batch
    student = torch.randn(count, DIM, generator=generator)
    teacher = _unit(0.5 * student + torch.randn(count, DIM, generator=generator))
    return (student.to(device, dtype), teacher.to(device, dtype)), {}


def _images(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(batch, DIM, generator=generator)
    teacher = _unit(0.5 * student + torch.randn(batch, DIM, generator=generator))
    return (student.to(device, dtype), teacher.to(device, dtype)), {}


CASES = [
    LossCase("oadp_embedding", _regions, uses_boxes=False),
    LossCase("oadp_relation", _regions, uses_boxes=False),
    LossCase("oadp_global", _images, uses_boxes=False),
]
