"""Precision policy: half-precision inputs are computed in float32 and results cast back."""

from __future__ import annotations

import torch
from torch import Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for float16/bfloat16 (softmax, variance and large sums lose too much there), else ``x.dtype``."""
    return torch.float32 if x.dtype in HALF_DTYPES else x.dtype


def upcast(x: Tensor) -> Tensor:
    return x.to(compute_dtype(x))
