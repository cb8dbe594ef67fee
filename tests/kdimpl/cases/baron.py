import torch

from . import LossCase

WORD_DIM, DIM, WORDS = 5, 6, 4  # not 2: the permutation test flips any leading dim of size 2


def tiny_text_encoder(words, mask):
    """A stand-in for CLIP's text encoder: masked mean of the words, mixed by a fixed nonlinearity."""
    mean = (words * mask[..., None].to(words.dtype)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(words.dtype)
    return torch.cat([torch.tanh(mean), mean[..., :1] * mean[..., 1:2]], dim=-1)


def _bag_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    bags = 3 * batch
    words = torch.randn(bags, WORDS, WORD_DIM, generator=generator)
    teacher = torch.randn(bags, DIM, generator=generator)
    mask = torch.rand(bags, WORDS, generator=generator) > 0.3
    bag_ids = torch.randint(0, max(bags - 1, 1), (bags,), generator=generator)
    return (words.to(device, dtype), teacher.to(device, dtype), mask.to(device), bag_ids.to(device)), {
        "text_encoder_student": tiny_text_encoder
    }


def _region_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    regions = 4 * batch
    student = torch.randn(regions, DIM, generator=generator)
    teacher = 0.5 * student + torch.randn(regions, DIM, generator=generator)
    region_ids = torch.randint(0, max(regions - 2, 1), (regions,), generator=generator)
    queue = torch.randn(2 * DIM + 1, DIM, generator=generator)
    return (student.to(device, dtype), teacher.to(device, dtype), region_ids.to(device)), {
        "student_queue": queue.to(device, dtype), "teacher_queue": queue.flip(0).to(device, dtype)
    }


CASES = [
    # InfoNCE is not zero at student == teacher (the other keys keep a share of the softmax)
    LossCase("baron_bag", _bag_inputs, zero_when_equal=False, uses_boxes=False),
    LossCase("baron_region", _region_inputs, zero_when_equal=False, uses_boxes=False),
]
