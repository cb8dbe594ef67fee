"""LabelEnc's student-side adapter: three 3x3 convolutions shared by every FPN level (also LGD's)."""

from __future__ import annotations

from torch import nn

__all__ = ["LabelEncAdapter"]


class LabelEncAdapter(nn.Sequential):
    """``conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv3x3`` mapping detector features before the comparison.

    LabelEnc (Hao et al., ECCV 2020) passes every FPN level of the detector through one such stack
    (``feature_adapt`` in megvii-model/LabelEnc@16a4038) before comparing it with the label
    encodings; LGD (Zhang et al., AAAI 2022) uses the same stack (``SequentialConvs`` in
    megvii-research/LGD@e03357d). The layers are numbered as in both official modules
    (``0``, ``2``, ``4`` are the convolutions), so their state dicts load unchanged.

    Args:
        channels: feature channels (256 for the FPN necks of both papers).

    Example:
        >>> import torch
        >>> LabelEncAdapter(8)(torch.randn(2, 8, 5, 7)).shape
        torch.Size([2, 8, 5, 7])
    """

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
