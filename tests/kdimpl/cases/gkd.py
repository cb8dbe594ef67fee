from . import LossCase, feature_pair


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    grads_s, grads_t = feature_pair(generator, device, dtype, batch, 4, height, width)
    return (student, teacher, grads_s + 0.2, grads_t + 0.2), {}


# the student's map has its own gradients, so the loss is not 0 at student == teacher
CASES = [LossCase("gkd", _inputs, uses_boxes=False, zero_when_equal=False)]
