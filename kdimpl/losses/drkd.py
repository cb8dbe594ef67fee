"""Dual relation knowledge distillation (DRKD), Ni et al., IJCAI 2023."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .._base import LossModule
from .._checks import _tracing, check_feature_pair, check_image_size, check_options
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..adapters.drkd import GloReUnit, InstanceRelation
from ..ops import padded_boxes, roi_align_padded

Module = Callable[..., Tensor] | nn.Module | None


def _apply(module: Module, x: Tensor) -> Tensor:
    return x if module is None else module(x)


def _norms(diff: Tensor, per_image: bool) -> Tensor:
    """Frobenius norms of ``diff``: ``(N,)`` per image or ``(1,)`` over everything."""
    if per_image:
        return torch.linalg.vector_norm(diff.flatten(1), dim=1)
    return torch.linalg.vector_norm(diff).reshape(1)


def _official_sum(reduction: str) -> str:
    # the official losses are sums of norms: 'mean' is that sum
    return "sum" if reduction == "mean" else reduction


def drkd_pixel_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    glore_student: Module = None,
    glore_teacher: Module = None,
    adapter_student: Module = None,
    per_image: bool = False,
    detach_teacher: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""DRKD pixel-wise relation distillation: match graph-reasoned (GloRe) features of one level.

    Both feature maps go through their own GloRe unit (:class:`kdimpl.adapters.GloReUnit`), the
    student's through a 1x1 adaptation :math:`\varphi`, and the loss is the Frobenius norm (not
    squared) of the difference over the batch:

    .. math::
        \mathcal{L}_{pixel} = \big\| \varphi\big(\mathcal{G}_S(F^S)\big) - \mathcal{G}_T(F^T) \big\|_F

    The official code sums this over the five FPN levels and weights the sum by ``1e-3``
    (written ``4e-3 * 0.25``): ``MultiLevelLoss([DRKDPixelLoss(channels=256, num_nodes=m) for m in
    (64, 64, 256, 256, 256)], loss_weight=1e-3)``.

    Args:
        student: student feature map.
        teacher: teacher feature map (detached inside; gradients still reach ``glore_teacher``'s
            parameters, which the official code trains).
        glore_student: the student's GloRe unit :math:`\mathcal{G}_S`, or ``None`` for identity.
        glore_teacher: the teacher's GloRe unit :math:`\mathcal{G}_T`, or ``None`` for identity.
        adapter_student: :math:`\varphi`, applied to the student's GloRe output (official:
            ``Conv2d(C, C, 1)``), or ``None`` for identity.
        per_image: one norm per image instead of one over the whole batch (the official choice, which
            makes the loss grow with the batch size).
        detach_teacher: detach ``teacher`` before ``glore_teacher`` (default). Pass ``False`` when
            ``student`` and ``teacher`` are relation features computed outside the loss (both units
            ``None``, ``teacher`` being e.g. ``unit(teacher_features.detach())``), so that the
            gradient reaches that unit's parameters.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: none, the norm over the
            batch (with ``per_image``, the sum of the per-image norms), which is the official value
            (use ``per_image=True``, ``reduction='none'`` and ``.mean()`` for the mean over images);
            ``'sum'``: the same sum; ``'none'``: the norms, shape ``(1,)`` (``(N,)`` with ``per_image``).

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(1,)` / :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zhen-Liang Ni, Fukui Yang, Shengzhao Wen, Gang Zhang. "Dual Relation Knowledge Distillation for
        Object Detection". IJCAI 2023, pp. 1276-1284. arXiv:2302.05637.
        Official code (partial): nizhenliang/Dual-Relation-Knowledge-Distillation@78ea05b,
        ``mmdet/models/detectors/two_stage.py`` (``TwoStageDetector.forward_train``, the KD block).

    Example:
        >>> import torch
        >>> from kdimpl.adapters.drkd import GloReUnit
        >>> s, t = torch.randn(2, 16, 6, 10), torch.randn(2, 16, 6, 10)
        >>> loss = drkd_pixel_loss(s, t, glore_student=GloReUnit(16, 4), glore_teacher=GloReUnit(16, 4),
        ...                        adapter_student=torch.nn.Conv2d(16, 16, 1))
        >>> loss.shape
        torch.Size([])

    Notes:
        Every call of the official code also writes heat-map images of level 0 to disk; not replicated.

        Under ``DistributedDataParallel`` the Frobenius norm is taken over the features of the process's own
        images only, so no normaliser makes the gradients equal those of one process on the union batch
        (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    check_feature_pair(student, teacher)
    check_options(reduction=reduction)
    s = _apply(adapter_student, _apply(glore_student, upcast(student)))
    t = _apply(glore_teacher, upcast(teacher.detach() if detach_teacher else teacher))
    return reduce_loss(_norms(s - t, per_image), _official_sum(reduction)).to(student.dtype)



@register_loss("drkd_pixel", function=drkd_pixel_loss, distributed="batch")
class DRKDPixelLoss(LossModule):
    """Module twin of :func:`drkd_pixel_loss`; ``loss_weight`` multiplies the result (official: 1e-3).

    Args:
        channels: when given, the twin owns the learnable pieces of one level: ``glore_student`` and
            ``glore_teacher`` (:class:`kdimpl.adapters.GloReUnit` with ``num_nodes`` nodes) and
            ``adapter_student`` (``Conv2d(channels, channels, 1)``); ``None``: pass them to ``forward``
            (or leave them out for the bare norm).
        num_nodes: GloRe graph nodes (official: 64 on P2-P3, 256 on P4-P6).
    """

    def __init__(
        self,
        *,
        channels: int | None = None,
        num_nodes: int = 64,
        per_image: bool = False,
        detach_teacher: bool = True,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        owned = {}
        if channels is not None:
            owned = dict(
                glore_student=GloReUnit(channels, num_nodes),
                glore_teacher=GloReUnit(channels, num_nodes),
                adapter_student=nn.Conv2d(channels, channels, 1),
            )
        super().__init__(
            per_image=per_image, detach_teacher=detach_teacher, reduction=reduction, loss_weight=loss_weight, **owned
        )


def _masked_norms(diff: Tensor, valid: Tensor) -> Tensor:
    """Per-image Frobenius norm over the real instances of an ``(N, M, ...)`` difference."""
    mask = valid.reshape(*valid.shape, *([1] * (diff.dim() - 2))).to(diff.dtype)
    return torch.linalg.vector_norm((diff * mask).flatten(1), dim=1)


def drkd_instance_loss(
    student: Tensor,
    teacher: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    gt_mask: Tensor | None = None,
    relation_student: Module = None,
    relation_teacher: Module = None,
    relation_adapter_student: Module = None,
    feature_adapter_student: Module = None,
    feature_weight: float = 0.6,
    output_size: int = 3,
    samples_per_bin: int = -1,
    max_samples_per_bin: int = 8,
    reduction: str = "mean",
) -> Tensor:
    r"""DRKD instance-wise relation distillation on one level, with the instance-feature term.

    The ground-truth boxes of each image are RoI-aligned on both maps (:func:`kdimpl.ops.roi_align_padded`,
    ``3 x 3``), flattened to instance features :math:`X \in \mathbb{R}^{G \times C k^2}` and passed
    through each side's relation module (:class:`kdimpl.adapters.InstanceRelation`). Per image:

    .. math::
        \mathcal{L}_{ins} = \big\| \varphi\big(\mathcal{R}_S(X^S)\big) - \mathcal{R}_T(X^T) \big\|_F
            + \lambda_f \big\| \psi(X^S) - X^T \big\|_F

    with :math:`\varphi, \psi` 1x1 convolutions on the ``(C, k, k)`` RoI features. The official code
    sums over images and the levels P2, P3 and weights the first norm by ``0.004`` and the second by
    ``0.0024`` (``0.008 * 0.3``), i.e. ``loss_weight=0.004, feature_weight=0.6``.

    Args:
        student: student feature map.
        teacher: teacher feature map (detached inside; ``relation_teacher``'s parameters still get
            gradients, as in the official code).
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in pixels of the input tensor, or padded ``(N, M, 4)``.
        image_size: ``(height, width)`` of the (padded) input tensor, or ``(N, 2)``. The official code
            uses the scale ``W_l / (4 W_{P2})`` on both axes, which equals ``W / width`` for a padded
            input of ``4 H_{P2} x 4 W_{P2}``.
        gt_mask: ``(N, M)`` bool, the real rows of a padded ``gt_boxes`` tensor (default: all).
            Boxes padded to a fixed capacity (:func:`kdimpl.masks.pad_boxes`) keep
            ``torch.compile`` to one graph as box counts change.
        relation_student: :math:`\mathcal{R}_S`, mapping ``(N, M, D)`` instance features and the
            ``(N, M)`` validity mask to ``(N, M, D)`` (:class:`kdimpl.adapters.InstanceRelation`), or
            ``None`` for identity.
        relation_teacher: :math:`\mathcal{R}_T`, the same for the teacher, or ``None``.
        relation_adapter_student: :math:`\varphi`, adapts the student's relation output, applied to
            ``(B, C, k, k)`` (official: ``Conv2d(C, C, 1)``), or ``None`` for identity.
        feature_adapter_student: :math:`\psi`, adapts the student's RoI features for the
            instance-feature term, applied to ``(B, C, k, k)`` (official: ``Conv2d(C, C, 1)``), or
            ``None`` for identity.
        feature_weight: :math:`\lambda_f`, weight of the instance-feature term (default 0.6: official ratio).
        output_size: RoIAlign bins per side :math:`k` (official: 3).
        samples_per_bin: RoIAlign samples per bin and axis (``<= 0``: adaptive, official).
        max_samples_per_bin: cap of the adaptive count (see :func:`kdimpl.ops.roi_align_padded`).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: none, the sum over
            images of the per-image losses, which is the official value (use ``reduction='none'`` and
            ``.mean()`` for the mean over images); ``'sum'``: the same sum; ``'none'``: per-image
            losses ``(N,)``.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Ni et al., "Dual Relation Knowledge Distillation for Object Detection", IJCAI 2023,
        arXiv:2302.05637; official code nizhenliang/Dual-Relation-Knowledge-Distillation@78ea05b
        (the KD block of ``TwoStageDetector.forward_train``, as for :func:`drkd_pixel_loss`).

    Example:
        >>> import torch
        >>> from kdimpl.adapters.drkd import InstanceRelation
        >>> s, t = torch.randn(2, 4, 12, 20), torch.randn(2, 4, 12, 20)
        >>> boxes = [torch.tensor([[8.0, 4.0, 60.0, 40.0], [30.0, 10.0, 90.0, 30.0]]), torch.zeros(0, 4)]
        >>> drkd_instance_loss(s, t, boxes, (48, 80), relation_student=InstanceRelation(36),
        ...                    relation_teacher=InstanceRelation(36), reduction="none").shape
        torch.Size([2])

    Notes:
        Instead of the official per-image loop over ``torchvision.ops.roi_align`` the boxes are pooled
        for all images at once from padded tensors; padding never enters a softmax or a norm. The
        official ``InstanceRelation`` draws its relation filter at random on every call; the default
        here is a learnable filter (``relation_filter="random"`` reproduces the official behaviour).
        The official loop passes the whole batch to ``roi_align`` with a one-image box list, so every
        image's boxes are pooled from the *first* image's maps; here each image uses its own maps
        (the parity test reproduces the official numbers by feeding image 0 in every batch slot).

        Under ``DistributedDataParallel`` this sum over the batch gets ``1 / world_size`` of the union
        batch's gradients (DDP averages); multiply ``loss_weight`` by the world size to train as one process
        would (:mod:`kdimpl.distributed`, behaviour ``'sum'``).
    """
    check_feature_pair(student, teacher)
    check_options(feature_weight=feature_weight, reduction=reduction)
    if not _tracing() and (output_size < 1 or max_samples_per_bin < 1):
        raise ValueError(f"output_size and max_samples_per_bin must be >= 1, got {output_size}, {max_samples_per_bin}")
    n, c = student.shape[:2]
    s = upcast(student)
    # checked before RoIAlign: a non-finite box or a zero image size would sample out of the map
    boxes, valid = padded_boxes(gt_boxes, n, gt_mask=gt_mask, dtype=s.dtype, device=s.device)
    check_image_size(image_size, n, student)
    m, k = boxes.shape[1], output_size
    pool = dict(samples_per_bin=samples_per_bin, max_samples_per_bin=max_samples_per_bin)
    x_s = roi_align_padded(s, boxes, image_size, k, **pool)  # (N, M, C, k, k)
    x_t = roi_align_padded(upcast(teacher.detach()), boxes, image_size, k, **pool)

    def relate(module: Module, x: Tensor) -> Tensor:
        return x if module is None else module(x.reshape(n, m, c * k * k), valid).reshape(n, m, c, k, k)

    def adapt(module: Module, x: Tensor) -> Tensor:
        return x if module is None else module(x.reshape(n * m, c, k, k)).reshape(n, m, c, k, k)

    z_s = adapt(relation_adapter_student, relate(relation_student, x_s))
    z_t = relate(relation_teacher, x_t)
    relation = _masked_norms(z_s - z_t, valid)
    feature = _masked_norms(adapt(feature_adapter_student, x_s) - x_t, valid)
    return reduce_loss(relation + feature_weight * feature, _official_sum(reduction)).to(student.dtype)


@register_loss("drkd_instance", function=drkd_instance_loss, distributed="sum")
class DRKDInstanceLoss(LossModule):
    """Module twin of :func:`drkd_instance_loss`; ``loss_weight`` multiplies the result (official: 0.004).

    Args:
        channels: when given, the twin owns the learnable pieces of one level: ``relation_student``
            and ``relation_teacher`` (:class:`kdimpl.adapters.InstanceRelation` on
            ``channels * output_size**2`` features, built with ``relation_filter`` and
            ``max_instances``), ``relation_adapter_student`` and ``feature_adapter_student``
            (``Conv2d(channels, channels, 1)`` each); ``None``: pass them to ``forward``.
        relation_filter: see :class:`kdimpl.adapters.InstanceRelation`.
        max_instances: see :class:`kdimpl.adapters.InstanceRelation`.
    """

    def __init__(
        self,
        *,
        channels: int | None = None,
        relation_filter: str = "learnable",
        max_instances: int = 100,
        feature_weight: float = 0.6,
        output_size: int = 3,
        samples_per_bin: int = -1,
        max_samples_per_bin: int = 8,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        owned = {}
        if channels is not None:
            features = channels * output_size**2
            relation = dict(relation_filter=relation_filter, max_instances=max_instances)
            owned = dict(
                relation_student=InstanceRelation(features, **relation),
                relation_teacher=InstanceRelation(features, **relation),
                relation_adapter_student=nn.Conv2d(channels, channels, 1),
                feature_adapter_student=nn.Conv2d(channels, channels, 1),
            )
        super().__init__(
            feature_weight=feature_weight, output_size=output_size, samples_per_bin=samples_per_bin,
            max_samples_per_bin=max_samples_per_bin, reduction=reduction, loss_weight=loss_weight, **owned,
        )
