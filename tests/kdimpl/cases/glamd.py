from . import LossCase, feature_pair


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return feature_pair(generator, device, dtype, batch, 4, height, width), {}


# A 2x3 grid on the 12x20 (and 3x5 gradcheck) maps: uneven patch sizes on purpose.
CASES = [LossCase("glamd", _inputs, options={"grid": (2, 3), "global_weight": 1.0, "local_weight": 1.0}, uses_boxes=False)]
