import torch

from . import LossCase, feature_pair

CHANNELS = 6
ROIS = 5  # per image; the last has no anchor (a ground-truth RoI)


def _mimic_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(batch * ROIS, CHANNELS, generator=generator)
    teacher = 0.5 * student + torch.randn(batch * ROIS, CHANNELS, generator=generator)
    return (student.to(device, dtype), teacher.to(device, dtype)), {}


def _cross_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, _ = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    teacher = torch.randn(batch, ROIS, CHANNELS, generator=generator).to(device, dtype)
    level = torch.zeros(batch, ROIS, dtype=torch.long)  # one map (the contract passes one student tensor)
    y = (torch.rand(batch, ROIS, generator=generator) * height).long()
    x = (torch.rand(batch, ROIS, generator=generator) * width).long()
    positions = torch.stack([level, y, x], dim=-1)
    positions[:, -1] = -1
    return (student, teacher, positions.to(device)), {}


CASES = [
    LossCase("head_mimic", _mimic_inputs, uses_boxes=False),
    # the student (a feature map) and the teacher (RoI features) have different shapes
    LossCase("head_cross", _cross_inputs, uses_boxes=False, zero_when_equal=False),
]
