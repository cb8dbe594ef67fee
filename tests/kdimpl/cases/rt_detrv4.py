from . import LossCase, feature_pair


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 8, height, width)
    return (student, teacher), {}


CASES = [LossCase("rt_detrv4", _inputs, uses_boxes=False)]
