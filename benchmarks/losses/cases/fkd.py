"""FKD on every FPN level, with mmrazor's pooling schedule (16, 8, 4, 4, 4 on P2-P6-sized maps)."""

from __future__ import annotations

import torch

from kdimpl.adapters.fkd import FKDStudentAdapter, NonLocalBlock2d
from kdimpl.losses.fkd import fkd_loss
from . import BenchCase

CHANNELS = 256
POOLS = (16, 8, 4, 4, 4)  # mmrazor sub_sample=True with maxpool_stride 8, 4, 2, 2 (doubled by mmcv's own pool)


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    pairs = []
    for index, (height, width) in enumerate(levels):
        pool = min(POOLS[min(index, len(POOLS) - 1)], height, width)
        student = (
            torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype).requires_grad_(True)
        )
        teacher = torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype)
        reduction = 4 if index < 2 else 2
        modules = (
            FKDStudentAdapter(CHANNELS, reduction, pool).to(device),
            NonLocalBlock2d(CHANNELS, reduction, pool).to(device),
        )
        pairs.append((student, teacher, modules))

    def run():
        return sum(fkd_loss(s, t, student_adapter=a, teacher_non_local=b) for s, t, (a, b) in pairs)

    return run


BENCH = [BenchCase("fkd", _make, channels=CHANNELS)]
