import torch

from kdimpl import LabelEncAdapter
from kdimpl._dtypes import compute_dtype

from . import LossCase, feature_pair

CHANNELS = 4


def seeded_adapter(generator, device, dtype, channels=CHANNELS):
    """A three-convolution adapter with seeded weights, identical for every dtype of the same seed."""
    adapter = LabelEncAdapter(channels)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return adapter.to(device=device, dtype=dtype)


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    adapter = seeded_adapter(generator, device, compute_dtype(student))
    return (student, teacher), {"adapter_student": adapter}


# Not zero at student == teacher: the adapter sits between the detector's features and the comparison.
CASES = [LossCase("labelenc", _inputs, uses_boxes=False, zero_when_equal=False)]
