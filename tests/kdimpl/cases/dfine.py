import torch

from . import LossCase, box_counts, random_boxes

_BINS = 5  # reg_max + 1
_CLASSES = 4
_IMAGE = (64, 96)


def _ddf_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    queries = 2 * height
    student = 2 * torch.randn(batch, queries, 4 * _BINS, generator=generator)
    teacher = 0.5 * student + 2 * torch.randn(batch, queries, 4 * _BINS, generator=generator)
    logits = torch.randn(batch, queries, _CLASSES, generator=generator)
    boxes = torch.stack([random_boxes(generator, queries, _IMAGE, "cpu") for _ in range(batch)]) if batch else torch.zeros(0, queries, 4)
    gt = [random_boxes(generator, m, _IMAGE, device, dtype) for m in box_counts(num_boxes, batch)]
    matched = torch.full((batch, queries), -1, dtype=torch.long)
    for i in range(batch):  # fewer matches in later images, so that halves of a batch have different counts
        count = max(min(num_boxes - i, queries), 0)
        matched[i, :count] = torch.arange(count)
    args = (student, teacher, boxes, logits)
    return (*(a.to(device, dtype) for a in args), matched.to(device)), {"gt_boxes": gt}


CASES = [LossCase("dfine_ddf", _ddf_inputs, options={"temperature": 5.0})]
