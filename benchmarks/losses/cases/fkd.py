"""FKD on every FPN level, with mmrazor's pooling schedule (16, 8, 4, 4, 4 on P2-P6-sized maps)."""

from __future__ import annotations

from kdimpl import FKDLoss, MultiLevelLoss
from . import BenchCase, feature_levels

CHANNELS = 256
POOLS = (16, 8, 4, 4, 4)  # mmrazor sub_sample=True with maxpool_stride 8, 4, 2, 2 (doubled by mmcv's own pool)


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    criterion = MultiLevelLoss([
        FKDLoss(
            channels=CHANNELS,
            non_local_reduction=4 if index < 2 else 2,
            non_local_pool=min(POOLS[min(index, len(POOLS) - 1)], height, width),
        )
        for index, (height, width) in enumerate(levels)
    ]).to(device)
    return lambda: criterion(students, teachers)


BENCH = [BenchCase("fkd", _make, channels=CHANNELS)]
