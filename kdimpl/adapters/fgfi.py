"""FGFI's feature adaptation layer (Wang et al., CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FGFIAdapter"]


class FGFIAdapter(nn.Module):
    """3x3 convolution followed by ReLU mapping student features to the teacher's channels.

    FGFI (Sec. 3.2) adapts the student even when the channel counts match. The weight is
    initialised as in the official ``trainval_net_sup.py`` (a standard normal folded into
    ``(-2, 2)`` by ``fmod`` and scaled by ``1e-4``); the bias keeps PyTorch's default.

    Reference:
        Tao Wang et al. "Distilling Object Detectors with Fine-grained Feature Imitation". CVPR 2019.
        Official code: twangnh/Distilling-Object-Detectors@c6583f3 (``stu_feature_adap``).

    Example:
        >>> import torch
        >>> FGFIAdapter(128, 512)(torch.randn(1, 128, 6, 9)).shape
        torch.Size([1, 512, 6, 9])
    """

    def __init__(self, student_channels: int, teacher_channels: int, init_std: float = 1e-4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=3, padding=1)
        with torch.no_grad():
            self.conv.weight.normal_().fmod_(2).mul_(init_std)

    def forward(self, student: Tensor) -> Tensor:
        return torch.relu(self.conv(student))
