"""Spatial and channel attention maps and per-channel standardisation, shared by several losses."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dtypes import upcast

__all__ = ["spatial_attention", "channel_attention", "standardize"]


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
    # an L1 norm is one fused reduction; abs().mean() would first write |F| out in full
    energy = torch.linalg.vector_norm(upcast(features), ord=1, dim=1).reshape(n, h * w) / features.shape[1]
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
    energy = torch.linalg.vector_norm(upcast(features), ord=1, dim=(2, 3)) / (features.shape[2] * features.shape[3])
    attention = F.softmax(energy / temperature, dim=1)
    return attention * c if scale else attention


def standardize(x: Tensor, dims: Sequence[int], *, unbiased: bool = True, eps: float | None = None) -> Tensor:
    """Subtract the mean and divide by the standard deviation over ``dims``.

    Half inputs are standardised in float32. ``eps`` (default: the compute dtype's
    ``finfo.eps`` ** 0.5) keeps constant slices finite: they map to zeros.
    """
    x = upcast(x)
    if eps is None:
        eps = torch.finfo(x.dtype).eps ** 0.5
    mean = x.mean(dim=tuple(dims), keepdim=True)
    std = x.std(dim=tuple(dims), keepdim=True, correction=1 if unbiased else 0)
    return (x - mean) / (std + eps)
