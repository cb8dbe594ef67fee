from . import LossCase, feature_pair


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return feature_pair(generator, device, dtype, batch, 4, height, width), {}


# window 11 on the 3x5 gradcheck maps also exercises the window shrinking.
CASES = [LossCase("structural_kd", _inputs, options={"window_size": 11}, uses_boxes=False)]
