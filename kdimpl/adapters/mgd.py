"""MGD's generation block: two 3x3 convolutions that rebuild teacher features from masked student ones."""

from __future__ import annotations

from torch import nn

__all__ = ["MGDGenerator"]


class MGDGenerator(nn.Sequential):
    r"""Generation block :math:`\mathcal{G}` of Masked Generative Distillation (Yang et al., ECCV 2022).

    ``Conv3x3(C -> C) -> ReLU -> Conv3x3(C -> C)``, padding 1, with PyTorch's default initialisation.
    Its ``state_dict`` keys (``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``) are those of the
    official ``generation`` submodule (yzd-v/MGD@2c9da0b ``FeatureLoss.generation``; mmrazor
    ``MGDConnector.generation``), so official checkpoints load with the ``generation.`` prefix
    stripped. When student and teacher widths differ, align the student first with
    :class:`kdimpl.ChannelAdapter` (the official ``align`` 1x1 conv, same parameter shapes).

    Args:
        channels: teacher channels :math:`C`.

    Example:
        >>> import torch
        >>> generator = MGDGenerator(16)
        >>> generator(torch.randn(2, 16, 6, 10)).shape
        torch.Size([2, 16, 6, 10])
    """

    def __init__(self, channels: int) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )
        self.channels = channels
