r"""HEAD (HEtero-Assists Distillation) and TF-HEAD, Wang et al., ECCV 2022.

HEAD attaches an *assistant*, a two-stage RoI head of the teacher's architecture, to the student's
FPN: the student's dense head proposes boxes (each remembers the anchor position it came from), the
assistant pools them from the student's features and is trained with the usual RoI-head detection
losses, and its gradients reach the student's backbone. TF-HEAD (teacher-free) is that assistant
alone. HEAD adds a teacher (a Faster R-CNN whose RoI head initialises the assistant's) run on the
same sampled RoIs, and two distillation losses, each weighted by a linear warm-up
(:func:`head_warmup`, 0 to 2.0 over the first 2000 iterations):

* :func:`head_mimic_loss` (``loss_mimic_rcnn``, ``loss_mimic_rcnn_aux``): the assistant's shared-FC
  outputs, through a linear adapter, regress the teacher's on the same RoIs;
* :func:`head_cross_loss` (``loss_cross``): the student's classification-tower feature at the anchor
  position each RoI was proposed from, through a linear adapter, regresses the teacher's last
  shared-FC output for that RoI (RoIs added from ground-truth boxes have no anchor and are skipped).

Not here: the assistant RoI head, the proposal bookkeeping and the RoI sampling, which belong to the
detector (any mmdetection/torchvision RoI head serves; :func:`head_anchor_positions` turns a flat
anchor index into the positions :func:`head_cross_loss` takes). :func:`head_cross_loss` takes every
FPN level at once (a list, finest first), because each RoI reads one position of one level and the
official mean runs over all RoIs; :func:`head_mimic_loss` works on RoI features and has no levels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import _tracing, check_options, check_same_shape, check_shape, check_shapes, value_checks_enabled
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["head_anchor_positions", "head_gather_positions", "head_warmup"]

Module = Callable[[Tensor], Tensor] | nn.Module | None


def head_warmup(iteration: int, *, loss_weight: float = 2.0, warmup_iters: int = 2000) -> float:
    r"""The weight of HEAD's distillation losses at a training iteration: a linear warm-up.

    .. math::
        w(k) = \lambda \, \min\big(\max(k, 0) / K, 1\big)

    with :math:`k` the 0-based iteration, :math:`\lambda` = ``loss_weight`` (official: 2.0 for every
    HEAD loss) and :math:`K` = ``warmup_iters`` (official: 2000). The first iteration (``k = 0``) has
    weight 0, as in the official code, whose counter starts at the runner's iteration and advances
    after each step.

    Example:
        >>> [head_warmup(k) for k in (0, 1000, 2000, 5000)]
        [0.0, 1.0, 2.0, 2.0]
    """
    check_options(loss_weight=loss_weight)
    if warmup_iters <= 0:
        raise ValueError(f"warmup_iters must be > 0, got {warmup_iters!r}")
    return loss_weight * min(max(iteration, 0) / warmup_iters, 1.0)


def head_anchor_positions(
    anchor_index: Tensor, feature_sizes: Sequence[tuple[int, int]], anchors_per_cell: int | Sequence[int]
) -> Tensor:
    """``(level, y, x)`` of flat anchor indices over all levels (mmdetection's order: level, y, x, anchor).

    Args:
        anchor_index: integer tensor of indices into the concatenation of every level's
            ``H_l * W_l * A_l`` anchors; a negative index (a RoI added from a ground-truth box,
            padding) gives ``(-1, -1, -1)``.
        feature_sizes: ``(H_l, W_l)`` of each level, finest first.
        anchors_per_cell: anchors per position :math:`A` (RetinaNet: 9), or one per level.

    Returns:
        ``anchor_index.shape + (3,)`` long tensor, the ``anchor_positions`` of :func:`head_cross_loss`.

    Example:
        >>> head_anchor_positions(torch.tensor([0, 5, 6, 25, -1]), [(2, 3), (1, 2)], 1)
        tensor([[ 0,  0,  0],
                [ 0,  1,  2],
                [ 1,  0,  0],
                [-1, -1, -1],
                [-1, -1, -1]])
    """
    per_cell = [anchors_per_cell] * len(feature_sizes) if isinstance(anchors_per_cell, int) else list(anchors_per_cell)
    index = anchor_index.long()
    positions = torch.full((*index.shape, 3), -1, dtype=torch.long, device=index.device)
    start = 0
    for level, ((h, w), a) in enumerate(zip(feature_sizes, per_cell)):
        local = index - start
        inside = (local >= 0) & (local < h * w * a)
        cell = local.div(a, rounding_mode="floor")
        found = torch.stack([torch.full_like(cell, level), cell.div(w, rounding_mode="floor"), cell % w], dim=-1)
        positions = torch.where(inside[..., None], found, positions)
        start += h * w * a
    return positions


def head_mimic_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    adapter_student: Module = None,
    reduction: str = "mean",
) -> Tensor:
    r"""HEAD assistant-to-teacher mimic: the assistant's RoI-head FC features regress the teacher's.

    For the :math:`R` sampled RoIs, with :math:`f^a_r` the assistant's output of a shared FC layer
    (official: ``shared_fcs[-1]`` for ``loss_mimic_rcnn``, ``shared_fcs[0]`` for
    ``loss_mimic_rcnn_aux``; the linear layer's output, before its ReLU) and :math:`f^t_r` the
    teacher's same layer on the same RoIs:

    .. math::
        \mathcal{L}_{mimic} = \frac{1}{R D} \sum_{r=1}^{R} \big\| \phi(f^a_r) - f^t_r \big\|_2^2

    with :math:`\phi` a linear adapter (official: ``nn.Linear(1024, 1024)``) and :math:`D` the
    teacher's feature size. Multiply by :func:`head_warmup` for the official schedule.

    Args:
        student: the assistant's FC features of the RoIs, ``(..., D_s)``.
        teacher: the teacher's FC features of the same RoIs, ``(..., D)`` (detached inside).
        adapter_student: :math:`\phi`, applied to ``student`` (last dimension), or ``None`` when the
            two sizes agree (the official configuration always has the linear adapter).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the element mean over
            RoIs and feature dimensions (:math:`R D`, todd's ``MSELoss``), which is also the element
            mean of ``'none'``; ``'sum'`` sums; ``'none'`` returns the ``(..., D)`` squared errors.

    Shape:
        - student: :math:`(*, D_s)`; teacher: :math:`(*, D)`
        - output: scalar, or :math:`(*, D)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Luting Wang, Xiaojie Li, Yue Liao, Zeren Jiang, Jianlong Wu, Fei Wang, Chen Qian, Si Liu.
        "HEAD: HEtero-Assists Distillation for Heterogeneous Object Detectors". ECCV 2022.
        arXiv:2207.05345. Official code: LutingWang/HEAD@345fc77
        (``configs/_base_/models/head_dag_retina_faster.py``: ``Linear`` adapts and todd's
        ``MSELoss`` with ``WarmupScheduler(value=2.0, iter_=2000)``; todd = LutingWang/todd@5161c5b,
        tag v0.2.3a4). Matched to float32 rounding by the parity test.

    Example:
        >>> import torch
        >>> s, t = torch.randn(6, 16), torch.randn(6, 16)
        >>> head_mimic_loss(s, t, adapter_student=torch.nn.Linear(16, 16)).shape
        torch.Size([])
        >>> float(head_mimic_loss(t, t))
        0.0
    """
    check_options(reduction=reduction)
    check_shape(student, "student", "* D")
    check_shape(teacher, "teacher", "* D")
    s = upcast(student) if adapter_student is None else adapter_student(upcast(student))
    check_same_shape(s, teacher, ("student (after adapter_student)", "teacher"),
                     hint="Pass adapter_student (e.g. nn.Linear(D_s, D)) when the sizes differ.")
    error = F.mse_loss(s, upcast(teacher.detach()).to(s.dtype), reduction="none")
    return reduce_loss(error, reduction).to(student.dtype)


def _levels(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


def _check_positions(anchor_positions: Tensor, levels: list[Tensor]) -> None:
    if not value_checks_enabled() or anchor_positions.numel() == 0:
        return
    level, y, x = anchor_positions.unbind(-1)
    used = level >= 0
    sizes = torch.tensor([f.shape[-2:] for f in levels], device=level.device).reshape(-1, 2)
    size = sizes[level.clamp(0, len(levels) - 1)]
    bad = used & ((level >= len(levels)) | (y < 0) | (x < 0) | (y >= size[..., 0]) | (x >= size[..., 1]))
    if bool(bad.any()):
        raise ValueError(
            f"anchor_positions holds (level, y, x) outside the {len(levels)} feature maps given "
            f"({[tuple(f.shape[-2:]) for f in levels]}), e.g. {anchor_positions[bad][0].tolist()}"
        )


def head_gather_positions(features: Tensor | Sequence[Tensor], anchor_positions: Tensor) -> Tensor:
    """The ``(N, R, C)`` feature vectors at ``(level, y, x)`` of each image's RoIs (zeros where level < 0)."""
    levels = _levels(features)
    level, y, x = anchor_positions.long().unbind(-1)  # (N, R) each
    gathered = None
    for index, feature in enumerate(levels):
        n, c, h, w = feature.shape
        flat = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1))[:, None, :].expand(n, c, -1)
        here = feature.flatten(2).gather(2, flat).transpose(1, 2)  # (N, R, C)
        here = torch.where((level == index)[..., None], here, torch.zeros((), dtype=here.dtype, device=here.device))
        gathered = here if gathered is None else gathered + here
    return gathered


def head_cross_loss(
    student: Tensor | Sequence[Tensor],
    teacher: Tensor,
    anchor_positions: Tensor,
    *,
    adapter_student: Module = None,
    reduction: str = "mean",
) -> Tensor:
    r"""HEAD cross loss: the student's dense-head feature at each RoI's anchor regresses the teacher's RoI feature.

    Each sampled RoI :math:`r` that the student's dense head proposed remembers the anchor position
    :math:`(l_r, y_r, x_r)` it came from; :math:`g_r` is the student's classification-tower feature
    there (official: the output of RetinaNet's ``cls_convs[-1]``, after its ReLU), and :math:`f^t_r`
    the teacher's last shared-FC output for the RoI. Over the :math:`R'` RoIs with an anchor (those
    added from ground-truth boxes are skipped):

    .. math::
        \mathcal{L}_{cross} = \frac{1}{R' D} \sum_{r : l_r \ge 0} \big\| \psi(g_r) - f^t_r \big\|_2^2

    with :math:`\psi` a linear adapter (official: ``nn.Linear(256, 1024)``). Multiply by
    :func:`head_warmup` for the official schedule.

    Args:
        student: the student's classification-tower maps, a list of ``(N, C, H_l, W_l)`` (every FPN
            level of the dense head, finest first; ``level`` in ``anchor_positions`` indexes it) or
            one map.
        teacher: the teacher's last shared-FC features of each image's RoIs, ``(N, R, D)``
            (detached inside; rows of RoIs without an anchor are ignored).
        anchor_positions: ``(N, R, 3)`` integer ``(level, y, x)`` of the anchor each RoI was proposed
            from (:func:`head_anchor_positions`); a negative level marks a RoI without one (a
            ground-truth box added as a proposal, padding).
        adapter_student: :math:`\psi`, applied to the gathered ``(N, R, C)`` features (last
            dimension), or ``None`` when ``C == D``.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the squared errors
            summed over the RoIs with an anchor and the feature dimensions, divided by
            :math:`R' D` (todd's ``MSELoss`` on the kept rows; at least 1); ``'sum'`` sums;
            ``'none'`` returns the ``(N, R, D)`` squared errors, zero in rows without an anchor (so
            ``.mean()`` equals ``'mean'`` only when every RoI has one).

    Shape:
        - student: :math:`(N, C, H_l, W_l)` per level; teacher: :math:`(N, R, D)`;
          anchor_positions: :math:`(N, R, 3)`
        - output: scalar, or :math:`(N, R, D)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of the student features.

    Reference:
        Wang et al., "HEAD: HEtero-Assists Distillation for Heterogeneous Object Detectors", ECCV 2022,
        arXiv:2207.05345. Official code: LutingWang/HEAD@345fc77
        (``configs/_base_/models/head_retina_faster.py``: ``Rearrange``, ``CustomAdapt``
        (head/adapts.py), ``Index``, ``Linear`` and todd's ``MSELoss``). Matched to float32 rounding
        by the parity test.

    Example:
        >>> import torch
        >>> maps = [torch.randn(2, 8, 6, 10), torch.randn(2, 8, 3, 5)]
        >>> teacher = torch.randn(2, 4, 16)
        >>> positions = torch.tensor([[[0, 1, 2], [1, 0, 4], [-1, -1, -1], [0, 5, 9]]] * 2)
        >>> head_cross_loss(maps, teacher, positions, adapter_student=torch.nn.Linear(8, 16)).shape
        torch.Size([])

    Notes:
        The official code keeps RoIs with flat tensors and an image column; here they are padded per
        image (``(N, R, ...)``; mmdetection's sampler gives every image the same ``R``, so a
        ``reshape(N, R, -1)`` of the flat tensors suffices). Positions outside the maps raise a
        ``ValueError`` (the official ``Index`` asserts).
    """
    check_options(reduction=reduction)
    levels = _levels(student)
    if not _tracing() and not levels:
        raise ValueError("student is empty: pass one classification-tower map per FPN level")
    for feature in levels:
        check_shape(feature, "student", "N C H W")
    check_shapes(teacher=(teacher, "N R D"), anchor_positions=(anchor_positions, "N R 3 int"))
    if not _tracing() and levels[0].shape[0] != teacher.shape[0]:
        raise ValueError(f"student has batch size {levels[0].shape[0]} but teacher has {teacher.shape[0]}")
    _check_positions(anchor_positions, levels)
    gathered = head_gather_positions([upcast(f) for f in levels], anchor_positions)
    s = gathered if adapter_student is None else adapter_student(gathered)
    check_same_shape(s, teacher, ("student (gathered, after adapter_student)", "teacher"),
                     hint="Pass adapter_student (e.g. nn.Linear(C, D)) when the sizes differ.")
    kept = anchor_positions[..., 0] >= 0  # (N, R)
    error = F.mse_loss(s, upcast(teacher.detach()).to(s.dtype), reduction="none")
    error = torch.where(kept[..., None], error, torch.zeros((), dtype=error.dtype, device=error.device))
    dtype = levels[0].dtype
    if reduction == "none":
        return error.to(dtype)
    total = error.sum()
    if reduction == "mean":
        total = total / (kept.sum() * error.shape[-1]).clamp(min=1)
    return total.to(dtype)


class _LinearAdapterLoss(LossModule):
    """A HEAD loss that may own its ``nn.Linear`` adapter (``student_channels`` to ``channels``)."""

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        channels: int | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        if (student_channels is None) != (channels is None):
            raise ValueError("pass both student_channels and channels to build adapter_student, or neither")
        adapter = {} if channels is None else {"adapter_student": nn.Linear(student_channels, channels)}
        super().__init__(**adapter, reduction=reduction, loss_weight=loss_weight)


@register_loss("head_mimic", function=head_mimic_loss)
class HEADMimicLoss(_LinearAdapterLoss):
    """Module twin of :func:`head_mimic_loss`; ``loss_weight`` multiplies the result.

    Args:
        student_channels: with ``channels``, the loss owns ``adapter_student``, an
            ``nn.Linear(student_channels, channels)`` (official: 1024 to 1024; one loss, and one
            adapter, per mimicked FC layer).
        channels: the teacher's feature size.
    """


@register_loss("head_cross", function=head_cross_loss)
class HEADCrossLoss(_LinearAdapterLoss):
    """Module twin of :func:`head_cross_loss`; ``loss_weight`` multiplies the result.

    Args:
        student_channels: with ``channels``, the loss owns ``adapter_student``, an
            ``nn.Linear(student_channels, channels)`` (official: 256 to 1024).
        channels: the teacher's feature size.
    """
