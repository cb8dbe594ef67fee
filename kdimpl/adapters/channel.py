"""A 1x1 convolution that maps student channels to teacher channels."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ChannelAdapter"]


class ChannelAdapter(nn.Module):
    """Project ``(N, C_s, H, W)`` student features to ``(N, C_t, H, W)``; identity when the counts match.

    Most feature-distillation papers (FitNets hints, FGD, MGD, PKD) align channels with a
    1x1 convolution when student and teacher widths differ.

    Example:
        >>> import torch
        >>> adapter = ChannelAdapter(128, 256)
        >>> adapter(torch.randn(2, 128, 8, 10)).shape
        torch.Size([2, 256, 8, 10])
    """

    def __init__(self, student_channels: int, teacher_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.proj: nn.Module
        if student_channels == teacher_channels:
            self.proj = nn.Identity()
        else:
            self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=bias)

    def forward(self, student: Tensor) -> Tensor:
        return self.proj(student)
