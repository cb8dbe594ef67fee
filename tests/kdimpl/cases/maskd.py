import torch

from kdimpl import MasKDTokens
from kdimpl._dtypes import compute_dtype

from . import LossCase, feature_pair

CHANNELS = 4


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    tokens = MasKDTokens(CHANNELS, num_tokens=3)
    with torch.no_grad():  # seeded weights, identical for every dtype of the same seed; larger than the
        for p in tokens.parameters():  # official init so that the masks are not all ~0.5
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    tokens = tokens.to(device=device, dtype=compute_dtype(student))
    return (student, teacher), {"tokens_teacher": tokens}


# student_masks=False: the student masks are taken without gradient, which gradcheck would flag.
CASES = [LossCase("maskd", _inputs, uses_boxes=False)]
