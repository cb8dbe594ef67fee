import torch

from . import LossCase, box_counts, feature_pair, random_boxes

QUERIES = 6
CLASSES = 4


def _decoder_pair(generator, device, dtype, batch, queries=QUERIES):
    """Seeded student/teacher decoder outputs: logits and normalised cxcywh boxes."""
    s_logits, t_logits = feature_pair(generator, device, dtype, batch, queries, CLASSES, 1)
    s_logits, t_logits = s_logits[..., 0], t_logits[..., 0]
    raw = torch.randn(2, batch, queries, 4, generator=generator)
    boxes = torch.cat([0.2 + 0.6 * raw[..., :2].sigmoid(), 0.05 + 0.3 * raw[..., 2:].sigmoid()], dim=-1)
    return s_logits, t_logits, boxes[0].to(device, dtype), boxes[1].to(device, dtype)


def _gt(generator, device, dtype, batch, num_boxes, image_size):
    counts = box_counts(num_boxes, batch)
    boxes = [random_boxes(generator, m, image_size, device, dtype) for m in counts]
    labels = [torch.randint(0, CLASSES, (m,), generator=generator).to(device) for m in counts]
    return boxes, labels


def _pred_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return _decoder_pair(generator, device, dtype, batch), {}


def _feature_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 8, height, width)
    _, t_logits, _, t_boxes = _decoder_pair(generator, device, dtype, batch)
    queries = torch.randn(batch, QUERIES, 8, generator=generator).to(device, dtype)
    image_size = (height * 8, width * 8)
    boxes, _ = _gt(generator, device, dtype, batch, num_boxes, image_size)
    return (student, teacher, queries, t_logits, t_boxes), {"gt_boxes": boxes, "image_size": image_size}


def _group_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    s_logits, t_logits, s_boxes, t_boxes = _decoder_pair(generator, device, dtype, batch)
    image_size = (height * 8, width * 8)
    boxes, labels = _gt(generator, device, dtype, batch, num_boxes, image_size)
    return (s_logits, t_logits, s_boxes, t_boxes), {"gt_boxes": boxes, "gt_labels": labels, "image_size": image_size}


CASES = [
    LossCase("detrdistill_pred", _pred_inputs, uses_boxes=False, zero_when_equal=False),
    LossCase("detrdistill_feature", _feature_inputs, options={"top_k": 5}),
    LossCase("detrdistill_group", _group_inputs, zero_when_equal=False),
]
