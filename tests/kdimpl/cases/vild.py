import torch

from . import LossCase

DIM = 6  # embedding size (not 2: the permutation test flips any leading dim of size 2)
CLASSES = 3  # text embeddings of the categories


def _regions(generator, batch, count):
    student = torch.randn(batch, count, DIM, generator=generator)
    return student, 0.5 * student + torch.randn(batch, count, DIM, generator=generator)


def _text_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    regions, _ = _regions(generator, batch, height)
    text = torch.randn(CLASSES, DIM, generator=generator)
    labels = torch.randint(0, CLASSES + 1, (batch, height), generator=generator)
    background = torch.randn(DIM, generator=generator)
    return (regions.to(device, dtype), text.to(device, dtype), labels.to(device)), {
        "background_embedding": background.to(device, dtype)
    }


def _image_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = _regions(generator, batch, height)
    valid = torch.rand(batch, height, generator=generator) > 0.2
    return (student.to(device, dtype), teacher.to(device, dtype), valid.to(device)), {}


CASES = [
    # cross-entropy against text embeddings: not zero, and the student is not shaped like the teacher
    LossCase("vild_text", _text_inputs, zero_when_equal=False, uses_boxes=False),
    LossCase("vild_image", _image_inputs, uses_boxes=False),
]
