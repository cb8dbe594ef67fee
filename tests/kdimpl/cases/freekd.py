import torch

from kdimpl import FreeKDPrompts
from kdimpl._dtypes import compute_dtype

from . import LossCase, feature_pair

CHANNELS = 4


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    prompts = FreeKDPrompts(CHANNELS, num_tokens=3)
    with torch.no_grad():  # seeded, identical for every dtype of the same seed; larger than the official init
        prompts.mask_token.copy_(0.5 * torch.randn(prompts.mask_token.shape, generator=generator))
    prompts = prompts.to(device=device, dtype=compute_dtype(student))
    return (student, teacher), {"prompts_teacher": prompts}


CASES = [LossCase("freekd", _inputs, uses_boxes=False)]
