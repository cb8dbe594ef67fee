"""FRS's student-side feature adaptation: one 3x3 convolution per FPN level."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["FRSAdapter"]


class FRSAdapter(nn.Module):
    """Per-level 3x3 convolutions mapping student FPN features to the teacher's (FRS, Du et al. 2021).

    The official ``ADAP`` neck (duzhixing/FRS@decd60c, ``neck/adap.py``) applies an independent
    ``Conv2d(C_s, C_t, 3, padding=1)`` to each level, without activation by default. To keep each
    level's convolution with its loss instead, build ``kdimpl.FRSFeatureLoss(student_channels=C_s,
    teacher_channels=C_t)`` per level inside :class:`kdimpl.MultiLevelLoss`.

    Args:
        student_channels: channels of the student features.
        teacher_channels: channels of the teacher features.
        num_levels: number of FPN levels (5 for RetinaNet/FCOS/GFL).
        kernel_size: 3 (official default) or 1.
        relu: apply a ReLU after each convolution (official ``with_relu``, off by default).

    Example:
        >>> import torch
        >>> adapter = FRSAdapter(8, 16, num_levels=2)
        >>> [f.shape[1] for f in adapter([torch.randn(1, 8, 6, 10), torch.randn(1, 8, 3, 5)])]
        [16, 16]
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        num_levels: int = 5,
        *,
        kernel_size: int = 3,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3 (the official choices), got {kernel_size}")
        self.convs = nn.ModuleList(
            nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=kernel_size // 2)
            for _ in range(num_levels)
        )
        self.relu = relu

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.convs):
            raise ValueError(f"FRSAdapter was built for {len(self.convs)} levels but got {len(features)} feature maps")
        out = [conv(f) for conv, f in zip(self.convs, features)]
        return [o.relu() for o in out] if self.relu else out
