import torch

from . import LossCase, box_counts, feature_pair, random_boxes

CHANNELS = 8
CLASSES = 5
ROIS_PER_IMAGE = 6


def _feature_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    image = (height * 8, width * 8)
    boxes = [random_boxes(generator, m, image, device) for m in box_counts(num_boxes, batch)]
    return (student, teacher), {"gt_boxes": boxes, "image_size": image}


def _logit_pair(generator, device, dtype, rows, columns):
    student = torch.randn(rows, columns, generator=generator)
    teacher = 0.5 * student + torch.randn(rows, columns, generator=generator)
    return student.to(device, dtype), teacher.to(device, dtype)


def _cls_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    rois = batch * ROIS_PER_IMAGE
    student, teacher = _logit_pair(generator, device, dtype, rois, CLASSES + 1)
    labels = torch.randint(0, CLASSES + 1, (rois,), generator=generator).to(device)
    return (student, teacher, labels), {}


def _reg_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    rois = batch * ROIS_PER_IMAGE
    student, teacher = _logit_pair(generator, device, dtype, rois, 4)
    targets = random_boxes(generator, rois, (height * 8, width * 8), device)
    size = (targets[:, 2:] - targets[:, :2]).repeat(1, 2)
    proposals = targets + 0.2 * size * torch.randn(rois, 4, generator=generator).to(device)
    refined = targets + 0.2 * size * torch.randn(rois, 4, generator=generator).to(device)
    proposals, refined = (torch.cat([b[:, :2].minimum(b[:, 2:]), b[:, :2].maximum(b[:, 2:])], 1) for b in (proposals, refined))
    kwargs = {"teacher_boxes": refined.to(dtype), "proposals": proposals.to(dtype), "target_boxes": targets.to(dtype)}
    return (student, teacher), kwargs


CASES = [
    LossCase("tadf_feature", _feature_inputs),
    LossCase("tadf_cls", _cls_inputs, options={"temperature": 2.0}, uses_boxes=False),
    LossCase("tadf_reg", _reg_inputs, uses_boxes=False),
]
