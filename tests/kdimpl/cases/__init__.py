"""Input recipes for the registry-wide contract tests: one module per paper, each defining ``CASES``.

``tests/kdimpl/test_contract.py`` runs every check on every registered loss and fails
when a registered loss has no case, so a new loss cannot skip the contract.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class LossCase:
    """How to call one registered loss.

    ``make_inputs(generator, device, dtype, *, batch, height, width, num_boxes)`` returns
    ``(args, kwargs)``: ``args[0]`` is the student tensor, ``args[teacher_index]`` the teacher
    tensor, ``kwargs`` the detection inputs (boxes, image size, adapter modules...). ``options``
    are hyper-parameters accepted by both the function and the module's constructor.
    """

    name: str
    make_inputs: Callable[..., tuple[tuple, dict]]
    options: dict[str, Any] = field(default_factory=dict)
    teacher_index: int = 1
    zero_when_equal: bool = True  # the loss is exactly 0 when student == teacher
    uses_boxes: bool = True
    half: bool = True  # finite in float16/bfloat16
    gradcheck: bool = True
    # ``part(args, kwargs, rank, world_size) -> (args, kwargs)``: one process's share of the inputs for the
    # DDP test, when the batch is not the first dimension of every input (the default splits those)
    part: Callable[..., tuple[list, dict]] | None = None


def random_boxes(generator: torch.Generator, num_boxes: int, image_size: tuple[int, int], device, dtype=torch.float32):
    """``num_boxes`` random xyxy boxes in pixels inside an image of ``(height, width)``, wider than tall."""
    img_h, img_w = image_size
    u = torch.rand(num_boxes, 4, generator=generator)
    x1 = u[:, 0] * img_w * 0.6
    y1 = u[:, 1] * img_h * 0.6
    x2 = (x1 + 8 + u[:, 2] * img_w * 0.4).clamp(max=img_w)
    y2 = (y1 + 4 + u[:, 3] * img_h * 0.2).clamp(max=img_h)
    return torch.stack([x1, y1, x2, y2], dim=1).to(device=device, dtype=dtype)


def box_counts(num_boxes: int, batch: int) -> list[int]:
    """Per-image box counts: the second half of the batch has one box fewer than ``num_boxes``.

    The DDP test gives each half to one process; a loss that divides by a count of boxes then
    divides by different counts in the two processes, which tells ``'count'`` from ``'exact'``.
    """
    return [num_boxes if i < (batch + 1) // 2 else max(num_boxes - 1, 0) for i in range(batch)]


def feature_pair(generator, device, dtype, batch, channels, height, width):
    """A seeded (student, teacher) pair of feature maps, teacher correlated with the student."""
    student = torch.randn(batch, channels, height, width, generator=generator)
    teacher = 0.5 * student + torch.randn(batch, channels, height, width, generator=generator)
    return student.to(device, dtype), teacher.to(device, dtype)


def all_cases() -> dict[str, LossCase]:
    cases: dict[str, LossCase] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for case in module.CASES:
            if case.name in cases:
                raise ValueError(f"two contract cases for loss {case.name!r}")
            cases[case.name] = case
    return cases
