"""Input validation with messages that say what was expected, what arrived, and how to fix it.

Checks raise ``ValueError``/``TypeError`` (never ``assert``) and are skipped while
``torch.compile`` traces, so they cost nothing in compiled graphs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_scripting()


def check_reduction(reduction: str, allowed: Sequence[str] = REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {tuple(allowed)}, got {reduction!r}")


def check_tensor(x: object, name: str, ndim: int | None = None, dims: str = "") -> None:
    """Check that ``x`` is a floating tensor of rank ``ndim``; ``dims`` names the dimensions ("N C H W")."""
    if _tracing():
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        layout = f" ({dims})" if dims else ""
        raise ValueError(f"{name} must have {ndim} dimensions{layout}, got shape {tuple(x.shape)}")


def check_feature_pair(
    student: Tensor, teacher: Tensor, ndim: int = 4, dims: str = "N C H W", *, same_spatial: bool = True
) -> None:
    """Check student/teacher feature maps: same rank, shape, device and floating dtype.

    With ``same_spatial=False`` only batch and channels must agree (for losses that resize one side).
    """
    if _tracing():
        return
    check_tensor(student, "student", ndim, dims)
    check_tensor(teacher, "teacher", ndim, dims)
    compared = slice(None) if same_spatial else slice(0, 2)
    if student.shape[compared] != teacher.shape[compared]:
        hint = ""
        if student.dim() >= 2 and student.shape[1] != teacher.shape[1]:
            hint = " Channels differ: project the student with an adapter (e.g. kdimpl.ChannelAdapter) first."
        elif student.shape[2:] != teacher.shape[2:]:
            hint = " Spatial sizes differ: resize one side (F.interpolate) before the loss."
        expected = "shape" if same_spatial else "batch size and channels"
        raise ValueError(
            f"student and teacher must have the same {expected}, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}.{hint}"
        )
    if student.device != teacher.device:
        raise ValueError(f"student is on {student.device} but teacher is on {teacher.device}")
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise TypeError(f"student and teacher must be floating point, got {student.dtype} and {teacher.dtype}")


def check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_unit_interval(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_boxes(gt_boxes: Sequence[Tensor] | Tensor, batch_size: int, name: str = "gt_boxes") -> None:
    """Check per-image boxes: a sequence of ``(M_i, 4)`` tensors, or a padded ``(N, M, 4)`` tensor."""
    if _tracing():
        return
    if gt_boxes is None or isinstance(gt_boxes, (str, bytes)) or not hasattr(gt_boxes, "__len__"):
        raise TypeError(
            f"{name} must be a list of (M_i, 4) tensors, one per image, or an (N, M, 4) tensor; "
            f"got {type(gt_boxes).__name__}"
        )
    if isinstance(gt_boxes, Tensor):
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4:
            raise ValueError(f"{name} as one tensor must have shape (N, M, 4), got {tuple(gt_boxes.shape)}")
        count = gt_boxes.shape[0]
    else:
        for i, boxes in enumerate(gt_boxes):
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
                raise ValueError(f"{name}[{i}] must be a tensor of shape (M, 4) in x1, y1, x2, y2 pixels, got {shape}")
        count = len(gt_boxes)
    if count != batch_size:
        raise ValueError(f"{name} has {count} images but the features have batch size {batch_size}")
