"""FreeKD on every FPN level with per-level frequency prompts (6 per band: the released RetinaNet setting).

The prompts keep ``requires_grad`` as in the official distillation stage (fixed there only by the
optimiser), so backward also computes their gradients, as the official code does.
"""

from __future__ import annotations

import torch

from kdimpl import FreeKDLoss, MultiLevelLoss

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    torch.manual_seed(5)
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    losses = [FreeKDLoss(channels=CHANNELS, num_tokens=6) for _ in levels]
    for loss in losses:  # learned prompts give sharper masks than the N(0, 0.01^2) init
        torch.nn.init.normal_(loss.prompts_teacher.mask_token, 0.0, 0.1)
    criterion = MultiLevelLoss(losses).to(device=device, dtype=compute)
    return lambda: criterion(students, teachers)


BENCH = [BenchCase("freekd", _make, channels=CHANNELS)]
