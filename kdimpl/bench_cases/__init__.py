"""Benchmark workloads for ``python -m kdimpl.bench``: one module per paper, each defining ``BENCH``."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

#: ``make(device, dtype, levels, gt_boxes, image_size)`` builds inputs once (student tensors require grad)
#: and returns a closure computing the total loss over all levels; the harness runs backward on it.
MakeFn = Callable[[torch.device, torch.dtype, Sequence[tuple[int, int]], list[Tensor], tuple[int, int]], Callable[[], Tensor]]


@dataclass(frozen=True)
class BenchCase:
    name: str
    make: MakeFn
    channels: int = 256


def all_bench_cases() -> list[BenchCase]:
    cases: list[BenchCase] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        cases.extend(importlib.import_module(f"{__name__}.{info.name}").BENCH)
    return cases
