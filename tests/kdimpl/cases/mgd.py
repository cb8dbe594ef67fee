import torch

from kdimpl import MGDGenerator
from kdimpl._dtypes import compute_dtype
from kdimpl.losses.mgd import mgd_random_mask

from . import LossCase, feature_pair


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    block = MGDGenerator(4)
    with torch.no_grad():  # seeded weights, identical for every dtype of the same seed
        for p in block.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    block = block.to(device=device, dtype=compute_dtype(student))
    mask = mgd_random_mask(student, 0.5, rng=generator)
    return (student, teacher), {"generator_student": block, "mask": mask}


# Not zero at student == teacher: the generation block is not the identity, and the masked
# student is what it rebuilds the teacher from.
CASES = [LossCase("mgd", _inputs, options={"mask_ratio": 0.5}, uses_boxes=False, zero_when_equal=False)]
