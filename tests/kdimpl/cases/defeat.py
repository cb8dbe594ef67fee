import torch

from . import LossCase, box_counts, feature_pair, random_boxes

STRIDE = 8


def _features(generator, device, dtype, *, batch, height, width, num_boxes):
    image_size = (height * STRIDE, width * STRIDE)
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    boxes = [random_boxes(generator, m, image_size, device) for m in box_counts(num_boxes, batch)]
    return (student, teacher), {"gt_boxes": boxes, "image_size": image_size}


def _roi_logits(generator, device, dtype, *, batch, height, width, num_boxes):
    num_rois, num_classes = 8 * batch, 5
    student = torch.randn(num_rois, num_classes, generator=generator)
    teacher = 0.5 * student + torch.randn(num_rois, num_classes, generator=generator)
    labels = torch.randint(0, num_classes, (num_rois,), generator=generator)
    if num_rois >= 2:
        labels[0], labels[1] = 0, num_classes - 1  # both background (0) and foreground RoIs
    return (student.to(device, dtype), teacher.to(device, dtype), labels.to(device)), {}


CASES = [
    LossCase("defeat", _features, options={"fg_weight": 3.0, "bg_weight": 12.0}),
    LossCase("defeat_roi_kd", _roi_logits, options={"temperature": 2.0}, uses_boxes=False),
]
