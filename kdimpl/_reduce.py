"""Reductions shared by every loss."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_reduction
from .distributed import reduce_normaliser


def reduce_loss(loss: Tensor, reduction: str, avg_factor: Tensor | float | None = None) -> Tensor:
    """Reduce an element-wise loss.

    ``"mean"`` divides the sum by ``avg_factor`` when given (mmdet's convention for normalising
    by the number of positives), otherwise by ``loss.numel()``. An empty ``loss`` gives a zero
    that stays in the autograd graph, never NaN. Inside :func:`kdimpl.distributed.global_normalisers`
    ``avg_factor`` is averaged over the processes.
    """
    check_reduction(reduction)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if avg_factor is None:
        return total / max(loss.numel(), 1)
    eps = torch.finfo(loss.dtype).eps
    avg_factor = reduce_normaliser(avg_factor)
    return total / (torch.as_tensor(avg_factor, dtype=loss.dtype, device=loss.device) + eps)
