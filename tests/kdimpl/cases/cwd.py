from . import LossCase, feature_pair


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return feature_pair(generator, device, dtype, batch, 4, height, width), {}


CASES = [LossCase("cwd", _inputs, options={"temperature": 4.0}, uses_boxes=False)]
