"""Benchmark workloads for ``python -m kdimpl.bench``: one module per paper, each defining ``BENCH``."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

#: ``make(device, dtype, levels, gt_boxes, image_size)`` builds inputs once (student tensors require grad)
#: and returns a closure computing the total loss over all levels; the harness runs backward on it
#: (unless the case sets ``backward=False``: then the closure builds something, e.g. box masks, and is timed alone).
MakeFn = Callable[[torch.device, torch.dtype, Sequence[tuple[int, int]], list[Tensor], tuple[int, int]], Callable[[], Tensor]]


@dataclass(frozen=True)
class BenchCase:
    name: str
    make: MakeFn
    channels: int = 256
    backward: bool = True


def feature_levels(
    device, dtype, levels: Sequence[tuple[int, int]], batch: int, channels: int = 256, seed: int = 0
) -> tuple[list[Tensor], list[Tensor]]:
    """Seeded per-level ``(student, teacher)`` feature maps; students require grad."""
    generator = torch.Generator().manual_seed(seed)
    students, teachers = [], []
    for height, width in levels:
        student = torch.randn(batch, channels, height, width, generator=generator)
        teacher = 0.5 * student + torch.randn(batch, channels, height, width, generator=generator)
        students.append(student.to(device, dtype).requires_grad_(True))
        teachers.append(teacher.to(device, dtype))
    return students, teachers


def all_bench_cases() -> list[BenchCase]:
    cases: list[BenchCase] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        cases.extend(importlib.import_module(f"{__name__}.{info.name}").BENCH)
    return cases
