"""LabelEnc's learnable pieces: the student-side adapter (also LGD's) and the label encoder's convolutional body."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LabelEncAdapter", "LabelEncEncoder"]


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


class _Bottleneck(nn.Module):
    """A ResNet bottleneck without normalisation layers (stride in the 3x3 convolution), as LabelEnc's encoder uses."""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
        self.con1 = nn.Conv2d(in_channels, bottleneck_channels, 1)
        self.con2 = nn.Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride, padding=1)
        self.con3 = nn.Conv2d(bottleneck_channels, out_channels, 1)
        for conv in (self.con1, self.con2, self.con3, *(self.downsample or ())):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.con3(F.relu(self.con2(F.relu(self.con1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class LabelEncEncoder(nn.Module):
    """LabelEnc's label-encoding function before its FPN: label map -> ``C2..C5`` feature maps.

    A ``7x7`` stride-2 convolution (``K -> 128``) and six bottlenecks without normalisation layers
    (``256``; ``512 x 2``; ``1024 x 2``; ``2048`` channels, each stage halving the size), giving maps at
    strides 4, 8, 16 and 32 of the label map. The official model (megvii-model/LabelEnc@16a4038,
    ``LabelEncodingFunction``) feeds them to an FPN of the detector's own type (built from the
    detector's config, ``build_custom_basemodel_backbone``), whose outputs are the label encodings
    compared by :func:`kdimpl.losses.labelenc.labelenc_loss`; append the detector's FPN to this module.
    Parameter names are the official ones, so the encoder part of an official
    ``label_encoding_function.pth`` loads (keys under ``body.``).

    Args:
        num_classes: label-map channels ``K`` (foreground classes, 80 on COCO).

    Example:
        >>> import torch
        >>> [tuple(f.shape) for f in LabelEncEncoder(3)(torch.rand(1, 3, 64, 96))]
        [(1, 256, 16, 24), (1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stage1 = nn.Conv2d(num_classes, 128, 7, stride=2, padding=3)
        self.stage2 = _Bottleneck(128, 64, 256, 2)
        self.stage3 = nn.Sequential(_Bottleneck(256, 128, 512, 2), _Bottleneck(512, 128, 512, 1))
        self.stage4 = nn.Sequential(_Bottleneck(512, 256, 1024, 2), _Bottleneck(1024, 256, 1024, 1))
        self.stage5 = _Bottleneck(1024, 512, 2048, 2)

    def forward(self, label_map: Tensor) -> list[Tensor]:
        x = self.stage1(label_map)
        outputs = []
        for stage in (self.stage2, self.stage3, self.stage4, self.stage5):
            x = stage(x)
            outputs.append(x)
        return outputs
