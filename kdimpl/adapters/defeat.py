"""DeFeat's per-level adaptation convolutions (Guo et al., CVPR 2021)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["DeFeatAdapter"]


class DeFeatAdapter(nn.Module):
    """One 3x3 convolution per FPN level (no activation) applied to the student's features.

    Matches ``neck_adapt`` of the official ``two_stage_kd.py``: ``Conv2d(k=3, pad=1)`` per level,
    the ReLU commented out, weight ``normal().fmod(2) * 1e-4``, bias at PyTorch's default.

    Args:
        student_channels: input channels per level (an int repeats for every level).
        teacher_channels: output channels per level (an int repeats for every level).
        num_levels: number of levels when both counts are ints (default 5: P2-P6).

    Reference:
        Jianyuan Guo et al. "Distilling Object Detectors via Decoupled Features". CVPR 2021.
        Official code: ggjy/DeFeat.pytorch@c46a793.

    Example:
        >>> import torch
        >>> adapter = DeFeatAdapter(8, 8, num_levels=2)
        >>> [f.shape for f in adapter([torch.randn(1, 8, 6, 10), torch.randn(1, 8, 3, 5)])]
        [torch.Size([1, 8, 6, 10]), torch.Size([1, 8, 3, 5])]
    """

    def __init__(
        self,
        student_channels: int | Sequence[int] = 256,
        teacher_channels: int | Sequence[int] = 256,
        num_levels: int = 5,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__()
        ins = [student_channels] * num_levels if isinstance(student_channels, int) else list(student_channels)
        outs = [teacher_channels] * len(ins) if isinstance(teacher_channels, int) else list(teacher_channels)
        if len(ins) != len(outs):
            raise ValueError(f"student_channels has {len(ins)} levels but teacher_channels has {len(outs)}")
        self.convs = nn.ModuleList(nn.Conv2d(i, o, kernel_size=3, padding=1) for i, o in zip(ins, outs))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.normal_().fmod_(2).mul_(init_std)

    def forward(self, students: Sequence[Tensor]) -> list[Tensor]:
        if len(students) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature levels, got {len(students)}")
        return [conv(x) for conv, x in zip(self.convs, students)]
