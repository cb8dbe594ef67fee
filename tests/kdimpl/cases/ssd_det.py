import torch

from . import LossCase

BAG = 6  # proposals per object


def _bags(generator, device, dtype, batch):
    """``batch`` objects, each with a noisy box, a refined (teacher) box and a bag of proposals around it."""
    xy = torch.rand(batch, 2, generator=generator) * 50
    wh = torch.rand(batch, 2, generator=generator) * 30 + 10
    boxes = torch.cat([xy, xy + wh], dim=1)
    teacher = boxes + torch.randn(batch, 4, generator=generator)
    jitter = (torch.rand(batch, BAG, 4, generator=generator) - 0.5) * 0.3 * torch.cat([wh, wh], dim=1)[:, None]
    proposals = boxes[:, None] + jitter
    return teacher.to(device, dtype), proposals.to(device, dtype)


def _spsd_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    teacher, proposals = _bags(generator, device, dtype, batch)
    student = (0.3 * torch.randn(batch, BAG, 4, generator=generator)).to(device, dtype)
    return (student, teacher, proposals), {}


def _sisd_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    teacher, proposals = _bags(generator, device, dtype, batch)
    student = (0.5 * torch.randn(batch, BAG, generator=generator)).to(device, dtype)
    return (student, teacher, proposals), {}


# Student (predictions) and teacher (boxes) have different shapes: "student == teacher" has no meaning.
CASES = [
    LossCase("ssd_det_spsd", _spsd_inputs, zero_when_equal=False, uses_boxes=False),
    LossCase("ssd_det_sisd", _sisd_inputs, zero_when_equal=False, uses_boxes=False),
]
