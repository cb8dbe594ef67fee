from . import LossCase, box_counts, feature_pair, random_boxes

STRIDE = 8


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    image_size = (height * STRIDE, width * STRIDE)
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    proposals = [random_boxes(generator, m, image_size, device) for m in box_counts(num_boxes, batch)]
    return (student, teacher), {"proposals": proposals, "image_size": image_size}


CASES = [LossCase("mimic", _inputs)]
