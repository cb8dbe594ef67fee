import torch

from . import LossCase, box_counts, feature_pair

CHANNELS = 8
CLASSES = 3
ANCHORS = 2


def _logits(generator, device, dtype, batch, channels, height, width):
    return feature_pair(generator, device, dtype, batch, channels, height, width)


def _rm_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    num_anchors = height * width * ANCHORS
    student, teacher = (x.permute(0, 2, 3, 1).reshape(batch, num_anchors, CLASSES)
                        for x in _logits(generator, device, dtype, batch, ANCHORS * CLASSES, height, width))
    # every object gets a few random candidates (at least two), the other anchors none
    assigned = torch.full((batch, num_anchors), -1, dtype=torch.long)
    counts = box_counts(num_boxes, batch)
    for i in range(batch):
        order = torch.randperm(num_anchors, generator=generator)
        for j in range(counts[i]):
            assigned[i, order[4 * j: 4 * j + 2 + j % 3]] = j
    labels = [torch.randint(0, CLASSES, (m,), generator=generator).to(device) for m in counts]
    return (student, teacher), {"assigned_gt": assigned.to(device), "gt_labels": labels}


def _pfi_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    student_logits, teacher_logits = _logits(generator, device, dtype, batch, ANCHORS * CLASSES, height, width)
    return (student, teacher, student_logits, teacher_logits), {}


CASES = [
    LossCase("rm", _rm_inputs),
    LossCase("pfi", _pfi_inputs, uses_boxes=False),
]
