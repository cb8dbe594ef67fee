import torch

from . import LossCase, random_boxes

QUERIES = 6
CLASSES = 4


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    """Image ``i`` has ``num_boxes - i`` teacher boxes (at least 0): the batch's halves hold different counts."""
    logits = torch.randn(batch, QUERIES, CLASSES, generator=generator)
    raw = torch.randn(batch, QUERIES, 4, generator=generator)
    boxes = torch.cat([0.2 + 0.6 * raw[..., :2].sigmoid(), 0.05 + 0.3 * raw[..., 2:].sigmoid()], dim=-1)
    image_size = (height * 8, width * 8)
    counts = [max(num_boxes - i, 0) for i in range(batch)]
    t_boxes = [random_boxes(generator, m, image_size, device, dtype) for m in counts]
    t_labels = [torch.randint(0, CLASSES, (m,), generator=generator).to(device) for m in counts]
    scores = torch.rand(batch, num_boxes, generator=generator)
    args = (logits.to(device, dtype), scores.to(device, dtype), boxes.to(device, dtype))
    return args, {"teacher_boxes": t_boxes, "teacher_labels": t_labels, "image_size": image_size}


CASES = [LossCase("teach_detr", _inputs, zero_when_equal=False)]
