from kdimpl._dtypes import compute_dtype

from . import LossCase, feature_pair
from .labelenc import CHANNELS, seeded_adapter


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    adapter = seeded_adapter(generator, device, compute_dtype(student))
    return (student, teacher), {"adapter_student": adapter}


# Not zero at student == teacher: the adapter sits between the student's features and the comparison.
CASES = [LossCase("lgd", _inputs, uses_boxes=False, zero_when_equal=False)]
