"""Spatial and channel attention maps (FKD, FGD, GLAMD), shared by several losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._dtypes import upcast

__all__ = ["spatial_attention", "channel_attention"]


def spatial_attention(features: Tensor, temperature: float = 0.5, *, scale: bool = True) -> Tensor:
    r"""Spatial attention of a feature map (FKD, FGD Eq. 5).

    .. math::
        A^S(F) = H W \cdot \operatorname{softmax}\Big(\frac{1}{T C}\sum_c |F_c|\Big)

    with the softmax over all ``H x W`` positions of each image.

    Args:
        features: ``(N, C, H, W)`` feature map.
        temperature: softmax temperature ``T``.
        scale: multiply by ``H * W`` so the map averages to 1 (the papers' choice).

    Returns:
        ``(N, H, W)`` map, in float32 for half inputs, otherwise in the input dtype. A NaN in an
        image makes that image's map NaN; an empty batch gives an empty map.
    """
    n, _, h, w = features.shape
    energy = upcast(features).abs().mean(dim=1).reshape(n, h * w)
    attention = F.softmax(energy / temperature, dim=1).reshape(n, h, w)
    return attention * (h * w) if scale else attention


def channel_attention(features: Tensor, temperature: float = 0.5, *, scale: bool = True) -> Tensor:
    r"""Channel attention of a feature map (FKD, FGD Eq. 5).

    .. math::
        A^C(F) = C \cdot \operatorname{softmax}\Big(\frac{1}{T H W}\sum_{i,j} |F_{i,j}|\Big)

    Args:
        features: ``(N, C, H, W)`` feature map.
        temperature: softmax temperature ``T``.
        scale: multiply by ``C`` so the weights average to 1 (the papers' choice).

    Returns:
        ``(N, C)`` weights, in float32 for half inputs, otherwise in the input dtype; NaN and
        empty batches as in :func:`spatial_attention`.
    """
    c = features.shape[1]
    energy = upcast(features).abs().mean(dim=(2, 3))
    attention = F.softmax(energy / temperature, dim=1)
    return attention * c if scale else attention
