import torch

from kdimpl.losses.fgfi import fgfi_grid_anchors

from . import LossCase, box_counts, feature_pair, random_boxes

STRIDE = 8
BASE_ANCHORS = torch.tensor([[-4.0, -4.0, 11.0, 11.0], [-12.0, -4.0, 19.0, 11.0], [-4.0, -12.0, 11.0, 19.0]])


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    image_size = (height * STRIDE, width * STRIDE)
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    boxes = [random_boxes(generator, m, image_size, device) for m in box_counts(num_boxes, batch)]
    anchors = fgfi_grid_anchors(BASE_ANCHORS.to(device), (height, width), STRIDE)
    return (student, teacher), {"gt_boxes": boxes, "anchors": anchors}


CASES = [LossCase("fgfi", _inputs, options={"psi": 0.5})]
