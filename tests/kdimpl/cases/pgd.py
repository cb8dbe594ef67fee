import torch

from kdimpl.masks import foreground_mask

from . import LossCase, box_counts, feature_pair, random_boxes

_IMAGE = (96, 160)


def _maps(generator, device, dtype, batch, height, width, num_boxes):
    """Key-region and background maps of one level from random boxes (zeros for an empty batch)."""
    if batch == 0:
        empty = torch.zeros(0, height, width, device=device, dtype=dtype)
        return empty, empty
    boxes = [random_boxes(generator, m, _IMAGE, device) for m in box_counts(num_boxes, batch)]
    inside = foreground_mask(boxes, _IMAGE, (height, width))
    fg = inside * torch.rand(batch, height, width, generator=generator).to(device)
    return fg.to(dtype), (1 - inside).to(dtype)


def _cls_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 6, height, width)
    fg, bg = _maps(generator, device, dtype, batch, height, width, num_boxes)
    return (student, teacher, fg, bg), {}


def _reg_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 6, height, width)
    fg, _ = _maps(generator, device, dtype, batch, height, width, max(num_boxes, 1))
    if num_boxes == 0:  # the no-box contract check: an empty key-region map
        fg = torch.zeros_like(fg)
    return (student, teacher, fg), {}


CASES = [
    LossCase("pgd_cls", _cls_inputs),
    LossCase("pgd_reg", _reg_inputs),
]
