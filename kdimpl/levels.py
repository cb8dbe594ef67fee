r"""Any feature loss over a list of FPN levels, in one line.

.. math::
    \mathcal{L} = \sum_{l=1}^{L} w_l \, \mathcal{L}_l\big(F^S_l, F^T_l, \ldots\big)

Boxes and the image size are given once, in pixels of the (resized, padded) input tensor that the
features were computed from; every box-taking loss maps them to the level it is called on from
the feature map's own size. Per-level inputs (anchors, teacher logits, prediction maps) are
passed as positional sequences with one entry per level, or by keyword wrapped in
:class:`PerLevel` (for an input after one the loss module already holds, such as MGD's ``mask``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

from torch import Tensor, nn

from ._checks import _tracing, check_options

__all__ = ["multilevel_loss", "MultiLevelLoss", "PerLevel"]


class PerLevel(tuple):
    """A keyword input with one entry per level: ``criterion(students, teachers, mask=PerLevel(masks))``.

    Every other keyword is shared by all levels (a list of per-image boxes is one input); wrapping
    a sequence in ``PerLevel`` gives level ``l`` its ``l``-th entry instead.
    """

    __slots__ = ()


def _takes(loss: Callable[..., Tensor], name: str) -> bool:
    target = loss.forward if isinstance(loss, nn.Module) else loss
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _check_levels(
    students: Sequence[Tensor], teachers: Sequence[Tensor], per_level: tuple, level_weights, shared: dict[str, Any]
) -> int:
    if _tracing():
        return len(students)
    if isinstance(students, Tensor) or isinstance(teachers, Tensor):
        raise TypeError("students and teachers must be sequences of per-level feature maps (one tensor per FPN level)")
    num_levels = len(students)
    if num_levels == 0:
        raise ValueError("students is empty: pass one feature map per FPN level")
    if len(teachers) != num_levels:
        raise ValueError(f"students has {num_levels} levels but teachers has {len(teachers)}")
    for i, inputs in enumerate(per_level):
        if isinstance(inputs, Tensor) or len(inputs) != num_levels:
            count = "a tensor" if isinstance(inputs, Tensor) else f"{len(inputs)} entries"
            raise ValueError(f"per-level input {i + 2} must be a sequence with one entry per level "
                             f"({num_levels}), got {count}; pass inputs shared by all levels as keywords")
    for name, inputs in shared.items():
        if isinstance(inputs, PerLevel) and len(inputs) != num_levels:
            raise ValueError(f"{name} has {len(inputs)} per-level entries for {num_levels} levels")
    if level_weights is not None and len(level_weights) != num_levels:
        raise ValueError(f"level_weights has {len(level_weights)} entries for {num_levels} levels")
    return num_levels


def multilevel_loss(
    loss: Callable[..., Tensor] | Sequence[Callable[..., Tensor]],
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    *per_level: Sequence[Any],
    level_weights: Sequence[float] | None = None,
    **shared: Any,
) -> Tensor:
    r"""Apply a loss to every FPN level and return :math:`\sum_l w_l \mathcal{L}_l`.

    Args:
        loss: a loss function or module called on each level, or one per level.
        students: student feature maps, one per level (finest first).
        teachers: teacher feature maps, one per level.
        *per_level: further per-level inputs, each a sequence with one entry per level.
        level_weights: :math:`w_l` (default: 1 for every level, the sum the official FPN
            configurations use).
        **shared: keyword inputs passed unchanged to every level (``gt_boxes``, ``image_size``,
            options), except a :class:`PerLevel` one, whose ``l``-th entry goes to level ``l``.
            A loss whose signature takes ``level`` and ``num_levels`` also receives the level's
            index and the number of levels (DeFeat assigns boxes to levels).

    Returns:
        A scalar: the losses must reduce to scalars (``reduction='mean'`` or ``'sum'``).

    Example:
        >>> import torch
        >>> from kdimpl import cwd_loss, multilevel_loss
        >>> students = [torch.randn(2, 8, 32 // 2**l, 32 // 2**l) for l in range(5)]
        >>> teachers = [torch.randn(2, 8, 32 // 2**l, 32 // 2**l) for l in range(5)]
        >>> multilevel_loss(cwd_loss, students, teachers, temperature=4.0).shape
        torch.Size([])
    """
    num_levels = _check_levels(students, teachers, per_level, level_weights, shared)
    losses = list(loss) if isinstance(loss, (list, tuple, nn.ModuleList)) else [loss] * num_levels
    if len(losses) != num_levels:
        raise ValueError(f"{len(losses)} per-level losses for {num_levels} levels")
    total = None
    for level, (fn, student, teacher) in enumerate(zip(losses, students, teachers)):
        extra = {"level": level, "num_levels": num_levels} if _takes(fn, "level") and _takes(fn, "num_levels") else {}
        keywords = {k: v[level] if isinstance(v, PerLevel) else v for k, v in shared.items()}
        value = fn(student, teacher, *(inputs[level] for inputs in per_level), **keywords, **extra)
        if value.dim() != 0:
            raise ValueError(f"level {level} gave a loss of shape {tuple(value.shape)}: use reduction 'mean' or 'sum'")
        if level_weights is not None:
            value = value * level_weights[level]
        total = value if total is None else total + value
    return total


class MultiLevelLoss(nn.Module):
    r"""A loss over FPN levels: :math:`\text{loss\_weight} \sum_l w_l \mathcal{L}_l`.

    Holds one loss module shared by every level, or one per level when each level has its own
    learnable pieces (FGD's global-context blocks, a per-level adapter), so a single module
    carries them all for the optimiser and ``DistributedDataParallel``.

    Args:
        losses: a loss module, or a sequence with one module per level.
        level_weights: :math:`w_l`, one per level (default: 1 each).
        loss_weight: multiplies the sum.

    Example:
        >>> import torch
        >>> from kdimpl import CWDLoss, MultiLevelLoss
        >>> criterion = MultiLevelLoss(CWDLoss(temperature=4.0), loss_weight=5.0)
        >>> feats = [torch.randn(2, 8, 32 // 2**l, 32 // 2**l) for l in range(5)]
        >>> criterion(feats, [f + 0.1 * torch.randn_like(f) for f in feats]).shape
        torch.Size([])
    """

    def __init__(
        self,
        losses: nn.Module | Sequence[nn.Module],
        *,
        level_weights: Sequence[float] | None = None,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_options(loss_weight=loss_weight)
        if level_weights is not None and not all(math.isfinite(w) and w >= 0 for w in level_weights):
            raise ValueError(f"level_weights must be finite numbers >= 0, got {list(level_weights)}")
        self.per_level = isinstance(losses, (list, tuple, nn.ModuleList))
        self.losses = nn.ModuleList(losses) if self.per_level else nn.ModuleList([losses])
        self.level_weights = None if level_weights is None else tuple(float(w) for w in level_weights)
        self.loss_weight = loss_weight

    def forward(self, students: Sequence[Tensor], teachers: Sequence[Tensor], *per_level: Sequence[Any], **shared: Any):
        if self.per_level and not _tracing() and len(self.losses) != len(students):
            raise ValueError(f"this MultiLevelLoss holds {len(self.losses)} per-level losses, got {len(students)} levels")
        losses = list(self.losses) if self.per_level else self.losses[0]
        total = multilevel_loss(losses, students, teachers, *per_level, level_weights=self.level_weights, **shared)
        return self.loss_weight * total

    def extra_repr(self) -> str:
        return f"level_weights={self.level_weights}, loss_weight={self.loss_weight}"

