from . import LossCase, feature_pair


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return feature_pair(generator, device, dtype, batch, 8, height, width), {}


CASES = [LossCase("declip_context", _inputs, uses_boxes=False)]
