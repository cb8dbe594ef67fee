from . import LossCase, box_counts, feature_pair, random_boxes

STRIDE = 8


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    grads_s, grads_t = feature_pair(generator, device, dtype, batch, 4, height, width)
    return (student, teacher, grads_s + 0.2, grads_t + 0.2), {}


def _bmfi_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    image_size = (height * STRIDE, width * STRIDE)
    boxes = [random_boxes(generator, m, image_size, device, dtype) for m in box_counts(num_boxes, batch)]
    features = feature_pair(generator, device, dtype, batch, 4, height, width)
    return features, {"gt_boxes": boxes, "image_size": image_size}


# the student's map has its own gradients, so the loss is not 0 at student == teacher
CASES = [
    LossCase("gkd", _inputs, uses_boxes=False, zero_when_equal=False),
    LossCase("gkd_bmfi", _bmfi_inputs, options={"global_weight": 1e-3}),
]
