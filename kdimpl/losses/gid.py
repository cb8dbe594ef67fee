"""General instance distillation (GID), Dai et al., CVPR 2021.

GID picks *general instances* (GIs) where student and teacher disagree
(:func:`gid_select_instances`), then distils three things on them: RoIAligned features
(:func:`gid_feature_loss`), the distances between instances (:func:`gid_relation_loss`) and the
head outputs of the anchors that match an instance (:func:`gid_response_loss`).

The three losses take every FPN level at once (a list of per-level tensors, finest first; a single
tensor is one level), not through :class:`kdimpl.MultiLevelLoss`: each instance is pooled from the
one level its size maps to, the relation pairs instances of all levels, and the feature and response
normalisers count instances and anchors over all levels. A training step reads::

    gi = gid_select_instances(s_cls, t_cls, s_boxes, t_boxes, image_size)  # flattened head outputs
    loss = (gid_feature_loss(s_feats, t_feats, gi.boxes, image_size, gi.mask)
            + gid_relation_loss(s_feats, t_feats, gi.boxes, image_size, gi.mask)
            + gid_response_loss(s_logits, t_logits, s_deltas, t_deltas, anchors, gi.boxes, gi.mask))
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import (
    _tracing,
    check_boxes,
    check_feature_pair,
    check_image_size,
    check_options,
    check_same_shape,
    check_shape,
)
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..masks import image_hw, pad_boxes
from ..ops import box_iou, nms_top_k, roi_align_padded

__all__ = ["GeneralInstances", "gid_select_instances", "gid_instance_features"]

Levels = Tensor | Sequence[Tensor]
Module = Callable[[Tensor], Tensor] | nn.Module | None


class GeneralInstances(NamedTuple):
    """Selected general instances, padded to ``top_k`` per image."""

    boxes: Tensor  #: ``(N, K, 4)`` xyxy boxes in input pixels (zeros in empty slots)
    scores: Tensor  #: ``(N, K)`` GI scores (0 in empty slots)
    mask: Tensor  #: ``(N, K)`` bool, ``True`` for a selected instance


def _levels(x: Levels) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


@torch.no_grad()
def gid_select_instances(
    student_logits: Levels,
    teacher_logits: Levels,
    student_boxes: Levels,
    teacher_boxes: Levels,
    image_size: Sequence[int] | Tensor,
    *,
    iou_threshold: float = 0.3,
    top_k: int = 10,
    pre_nms_top_k: int = 3000,
    min_box_size: float = 10.0,
    score_rule: str = "official",
) -> GeneralInstances:
    r"""General Instance Selection Module (GISM): the positions where student and teacher disagree most.

    For every dense prediction :math:`r` (an anchor or a point) with class probabilities
    :math:`P^{r,c} = \sigma(\text{logit})` and decoded boxes :math:`B^r`:

    .. math::
        P_{GI}^r = \Big|\max_c P_t^{r,c} - \max_c P_s^{r,c}\Big| \quad (\text{official}), \qquad
        P_{GI}^r = \max_c \big|P_t^{r,c} - P_s^{r,c}\big| \quad (\text{paper}), \\
        B_{GI}^r = \begin{cases} B_t^r & \max_c P_t^{r,c} > \max_c P_s^{r,c} \\ B_s^r & \text{else} \end{cases}

    Per image, over the positions of all levels together (as the official code): the
    ``pre_nms_top_k`` highest scores, boxes clipped to the image and those with a side of at most
    ``min_box_size`` pixels dropped, then NMS at ``iou_threshold`` and the ``top_k`` highest survivors.

    Args:
        student_logits: student classification logits per level, ``(N, P_l, C)`` (sigmoid heads), or
            one tensor for one level.
        teacher_logits: the teacher's, same shapes.
        student_boxes: the student's decoded boxes per level, ``(N, P_l, 4)`` xyxy in input pixels.
        teacher_boxes: the teacher's decoded boxes, same shapes.
        image_size: ``(height, width)`` of the images (boxes are clipped to it), or ``(N, 2)``.
        iou_threshold: NMS IoU threshold (0.3, the paper's and the official value).
        top_k: instances kept per image, :math:`K` (10, the paper's and the official value).
        pre_nms_top_k: candidates kept per image before NMS, over all levels (3000, official).
        min_box_size: boxes whose clipped width or height is at most this many pixels are dropped
            (10, official).
        score_rule: ``'official'`` (default): the difference of the two models' highest class
            probabilities, as the authors' code computes it; ``'paper'``: the largest per-class
            difference, Eq. 1 of the paper as third-party summaries and LD's port of GISM give it.

    Returns:
        :class:`GeneralInstances` ``(boxes, scores, mask)``, ``top_k`` slots per image in descending
        score; ``mask`` marks the filled slots. Nothing here takes a gradient.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 50, 3), torch.randn(2, 50, 3)
        >>> xy = torch.rand(2, 50, 2) * 60
        >>> boxes = torch.cat([xy, xy + 20], dim=-1)
        >>> gi = gid_select_instances(s, t, boxes, boxes + 1, (80, 80), top_k=4)
        >>> gi.boxes.shape, gi.mask.shape
        (torch.Size([2, 4, 4]), torch.Size([2, 4]))

    Notes:
        The official code raises on non-finite scores or boxes; here they are not filtered and show
        as non-finite selected boxes, which the losses refuse. NMS is :func:`kdimpl.ops.nms_top_k`
        (equal scores are taken in index order).
    """
    if score_rule not in ("official", "paper"):
        raise ValueError(f"score_rule must be 'official' or 'paper', got {score_rule!r}")
    inputs = [_levels(x) for x in (student_logits, teacher_logits, student_boxes, teacher_boxes)]
    if not _tracing() and len({len(x) for x in inputs}) != 1:
        raise ValueError("student_logits, teacher_logits, student_boxes and teacher_boxes need one entry per level each")
    scores, boxes = [], []
    for s, t, box_s, box_t in zip(*inputs):
        check_shape(s, "student_logits", "N P C")
        check_shape(t, "teacher_logits", "N P C")
        check_shape(box_s, "student_boxes", "N P 4")
        check_shape(box_t, "teacher_boxes", "N P 4")
        prob_s, prob_t = upcast(s).sigmoid(), upcast(t).sigmoid()
        top_s, top_t = prob_s.amax(dim=-1), prob_t.amax(dim=-1)
        scores.append((top_t - top_s).abs() if score_rule == "official" else (prob_t - prob_s).abs().amax(dim=-1))
        boxes.append(torch.where((top_t > top_s)[..., None], upcast(box_t), upcast(box_s)))
    scores, boxes = torch.cat(scores, dim=1), torch.cat(boxes, dim=1)
    scores, index = scores.topk(min(pre_nms_top_k, scores.shape[1]), dim=1)
    boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    n = scores.shape[0]
    check_image_size(image_size, n)
    img_h, img_w = image_hw(image_size, n, boxes)
    limit = torch.stack([img_w, img_h, img_w, img_h], dim=-1)  # (N, 1, 4)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    size = boxes[..., 2:] - boxes[..., :2]
    scores = scores.masked_fill((size <= min_box_size).any(dim=-1), float("-inf"))
    index, mask = nms_top_k(boxes, scores, top_k, iou_threshold)
    picked = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    return GeneralInstances(
        torch.where(mask[..., None], picked, torch.zeros_like(picked)),
        torch.where(mask, scores.gather(1, index), torch.zeros_like(picked[..., 0])),
        mask,
    )


def gid_instance_features(
    features: Levels,
    boxes: Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    output_size: int = 10,
    samples_per_bin: int = 2,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    r"""RoIAlign (``aligned=True``) of ``(N, M, 4)`` pixel boxes, each from the FPN level its size maps to.

    A box of area :math:`wh` goes to level
    :math:`\lfloor k_0 + \log_2(\sqrt{wh} / 224) \rfloor` (Lin et al., FPN, Eq. 1; ``k_0 = 4``), clamped
    to the levels given; a level's number is :math:`\log_2` of its stride, derived from ``image_size``
    and the map's size.

    Args:
        features: ``(N, C, H_l, W_l)`` maps of consecutive FPN levels, finest first, or one map.
        boxes: ``(N, M, 4)`` xyxy boxes in pixels of the input tensor.
        image_size: ``(height, width)`` of the input tensor, or ``(N, 2)``.
        output_size: bins per side (official: 10).
        samples_per_bin: samples per bin and axis (official: 2).
        canonical_box_size: the box size (``sqrt`` of the area) that maps to ``canonical_level`` (224).
        canonical_level: the level number (``log2`` of the stride) of a canonical box (4).

    Returns:
        ``(N, M, C, output_size, output_size)`` pooled features; every box is pooled on every level
        and masked to its own (fixed shapes for ``torch.compile``).
    """
    levels = _levels(features)
    n = levels[0].shape[0]
    img_h, img_w = image_hw(image_size, n, boxes)
    first = torch.round(torch.log2(img_w / levels[0].shape[-1]))  # (N, 1) number of the finest level
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    # detectron2's assign_boxes_to_levels, with its 1e-8 inside the logarithm
    target = torch.floor(canonical_level + torch.log2(area.clamp(min=0).sqrt() / canonical_box_size + 1e-8))
    target = (target - first).clamp(0, len(levels) - 1)  # (N, M)
    pooled = None
    for level, feature in enumerate(levels):
        h, w = feature.shape[-2:]
        # aligned=True: pixel centres sit at +0.5, so sample half a cell further up-left
        half_cell = 0.5 * torch.cat([img_w / w, img_h / h, img_w / w, img_h / h], dim=-1)[:, None, :]
        x = roi_align_padded(feature, boxes - half_cell, image_size, output_size, samples_per_bin=samples_per_bin)
        x = x * (target == level)[..., None, None, None].to(x.dtype)
        pooled = x if pooled is None else pooled + x
    return pooled


def _prepare(student: Levels, teacher: Levels, instance_boxes, image_size, instance_mask, adapter_student):
    """Checked, upcast levels (adapter applied, teacher detached) and padded boxes with their mask."""
    students, teachers = _levels(student), _levels(teacher)
    if not _tracing() and len(students) != len(teachers):
        raise ValueError(f"student has {len(students)} levels but teacher has {len(teachers)}")
    for s in students:
        check_shape(s, "student", "N C H W")
    s_levels = [upcast(s) if adapter_student is None else adapter_student(upcast(s)) for s in students]
    for s, t in zip(s_levels, teachers):
        check_feature_pair(s, t)
    n = students[0].shape[0]
    check_boxes(instance_boxes, n, name="instance_boxes")
    check_image_size(image_size, n, students[0])
    t_levels = [upcast(t.detach()) for t in teachers]
    boxes, valid = pad_boxes(instance_boxes, instance_mask, name="instance_boxes", mask_name="instance_mask")
    boxes = boxes.to(device=s_levels[0].device, dtype=s_levels[0].dtype)
    return s_levels, t_levels, boxes, valid.to(boxes.device)


def gid_feature_loss(
    student: Levels,
    teacher: Levels,
    instance_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    instance_mask: Tensor | None = None,
    *,
    adapter_student: Module = None,
    output_size: int = 10,
    samples_per_bin: int = 2,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    reduction: str = "mean",
) -> Tensor:
    r"""GID feature-based distillation: squared error of the RoIAligned features of the general instances.

    .. math::
        L_{Feature} = \frac{1}{K k^2} \sum_{i=1}^{K} \big\| t_i - f_{adapt}(s_i) \big\|_2^2

    with :math:`t_i, s_i \in \mathbb{R}^{C \times k \times k}` the instance's features pooled
    (:func:`gid_instance_features`, ``k = output_size``) from the FPN level its size maps to, and
    :math:`K` the number of instances in the batch.

    Args:
        student: student FPN features, a list of ``(N, C, H_l, W_l)`` maps (consecutive levels, finest
            first) or one map.
        teacher: teacher features, same shapes (detached inside).
        instance_boxes: the general instances (:func:`gid_select_instances`), per-image ``(M_i, 4)``
            xyxy boxes in input pixels or a padded ``(N, M, 4)`` tensor.
        image_size: ``(height, width)`` of the input tensor, or ``(N, 2)``; maps boxes to each level.
        instance_mask: ``(N, M)`` bool, which rows of a padded ``instance_boxes`` are instances
            (``GeneralInstances.mask``); default: every row.
        adapter_student: :math:`f_{adapt}`, applied to each student level before pooling (the official
            code defines a shared 3x3 convolution but never applies it), or ``None``.
        output_size: RoIAlign bins per side :math:`k` (official: 10).
        samples_per_bin: RoIAlign samples per bin and axis (official: 2).
        canonical_box_size: FPN level rule: the box size (``sqrt`` of the area) of ``canonical_level``.
        canonical_level: FPN level rule: the level number (``log2`` stride) of a canonical box.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum of squared
            errors over channels and bins divided by :math:`K k^2` (instances times bins, over the
            batch), as the official code; ``'sum'``: the sum; ``'none'``: the ``(N, M, C, k, k)``
            squared errors, zero in rows that are not instances (so ``.mean()`` is not ``'mean'``).

    Shape:
        - student, teacher: :math:`(N, C, H_l, W_l)` per level
        - output: scalar, or :math:`(N, M, C, k, k)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of the student features.

    Reference:
        Xing Dai, Zeren Jiang, Zhao Wu, Yiping Bao, Zhicheng Wang, Si Liu, Erjin Zhou. "General
        Instance Distillation for Object Detection". CVPR 2021. arXiv:2103.02340.
        Official code (the first author's detectron2 reproduction, released "for reference"):
        daixinghome/Distill_GID_detectron2@9118c54, ``GID/gid/loss.py::distill_loss_feature`` and
        ``GID/gid/distill_gid.py::DistillGID.distill_losses``.

    Example:
        >>> import torch
        >>> s = [torch.randn(2, 8, 16 // 2**l, 24 // 2**l) for l in range(3)]
        >>> t = [x + 0.1 for x in s]
        >>> boxes = [torch.tensor([[4.0, 4.0, 60.0, 50.0]]), torch.tensor([[0.0, 8.0, 100.0, 120.0]])]
        >>> gid_feature_loss(s, t, boxes, (128, 192), output_size=4).shape
        torch.Size([])

    Notes:
        Pooling follows ``torchvision.ops.roi_align(aligned=True)`` except for boxes narrower than one
        cell of their level, whose size is clamped to one cell (:func:`kdimpl.ops.roi_align_padded`).

        Under ``DistributedDataParallel`` each process divides by its own instance count; inside
        :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_options(reduction=reduction)
    s_levels, t_levels, boxes, valid = _prepare(student, teacher, instance_boxes, image_size, instance_mask, adapter_student)
    pool = dict(output_size=output_size, samples_per_bin=samples_per_bin,
                canonical_box_size=canonical_box_size, canonical_level=canonical_level)
    error = (gid_instance_features(s_levels, boxes, image_size, **pool)
             - gid_instance_features(t_levels, boxes, image_size, **pool)).square()
    error = torch.where(valid[..., None, None, None], error, torch.zeros_like(error))
    dtype = _levels(student)[0].dtype
    return reduce_loss(error, reduction, avg_factor=(valid.sum() * output_size**2).clamp(min=1)).to(dtype)


def _pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distances ``(Q, Q)`` of ``(Q, D)`` rows (the clamp keeps the zero diagonal differentiable)."""
    squared = (x[:, None, :] - x[None, :, :]).square().sum(dim=-1)
    return squared.clamp(min=torch.finfo(x.dtype).tiny).sqrt()


def _pairwise_distances_gram(x: Tensor) -> Tensor:
    """:func:`_pairwise_distances` through the Gram matrix, ``|a|^2 + |b|^2 - 2 a.b``: no ``(Q, Q, D)`` tensor."""
    norms = x.square().sum(dim=-1)
    squared = norms[:, None] + norms[None, :] - 2 * (x @ x.T)
    return squared.clamp(min=torch.finfo(x.dtype).tiny).sqrt()


# Relation on the shared workload (40 instances of 256x10x10 features): the Gram form cuts the loss's peak
# memory from 626 to 191 MiB (no (Q, Q, D) difference tensor) and the distance step from 2.5 s to 0.3 s
# (eager, CPU, loaded machine; whole loss 7.5 -> 6.2 s eager, compiled within noise).
_PAIRWISE = _pairwise_distances_gram


def gid_relation_loss(
    student: Levels,
    teacher: Levels,
    instance_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    instance_mask: Tensor | None = None,
    *,
    adapter_student: Module = None,
    output_size: int = 10,
    samples_per_bin: int = 2,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    beta: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""GID relation-based distillation: match the normalised distances between general instances.

    .. math::
        L_{Relation} = \frac{1}{K^2 - K} \sum_{i \ne j}
            \mathrm{SmoothL1}_\beta\Big(\frac{\|t_i - t_j\|_2}{\psi_t}, \frac{\|s_i - s_j\|_2}{\psi_s}\Big),
        \qquad \psi = \frac{1}{K^2 - K} \sum_{i \ne j} \|x_i - x_j\|_2

    over the :math:`K` instances of the whole batch, with the flattened pooled features
    :math:`t_i, s_i` of :func:`gid_feature_loss` (the distance term of RKD, Park et al. 2019).
    With fewer than three instances the loss is 0, as in the official code.

    Args:
        student: student FPN features, a list of ``(N, C, H_l, W_l)`` maps (finest first) or one map.
        teacher: teacher features, same shapes (detached inside).
        instance_boxes: the general instances, per-image ``(M_i, 4)`` xyxy pixel boxes or ``(N, M, 4)``.
        image_size: ``(height, width)`` of the input tensor, or ``(N, 2)``.
        instance_mask: ``(N, M)`` bool, which rows of a padded ``instance_boxes`` are instances.
        adapter_student: applied to each student level before pooling, or ``None`` (official: none).
        output_size: RoIAlign bins per side (official: 10).
        samples_per_bin: RoIAlign samples per bin and axis (official: 2).
        canonical_box_size: FPN level rule, see :func:`gid_instance_features`.
        canonical_level: FPN level rule, see :func:`gid_instance_features`.
        beta: :math:`\beta` of the smooth L1 (official: 1).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum over ordered
            pairs of distinct instances divided by :math:`K^2 - K`; ``'sum'``: the sum; ``'none'``:
            the ``(NM, NM)`` pair losses, zero on the diagonal and for non-instances.

    Shape:
        - student, teacher: :math:`(N, C, H_l, W_l)` per level
        - output: scalar, or :math:`(NM, NM)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of the student features.

    Reference:
        Dai et al., "General Instance Distillation for Object Detection", CVPR 2021, arXiv:2103.02340.
        Official code: daixinghome/Distill_GID_detectron2@9118c54, ``GID/gid/loss.py::loss_RkdDistance``.

    Example:
        >>> import torch
        >>> s = [torch.randn(2, 8, 16 // 2**l, 24 // 2**l) for l in range(3)]
        >>> boxes = [torch.tensor([[4.0, 4.0, 60.0, 50.0], [30.0, 2.0, 90.0, 40.0]]),
        ...          torch.tensor([[0.0, 8.0, 100.0, 120.0]])]
        >>> gid_relation_loss(s, [x + 0.3 * torch.randn_like(x) for x in s], boxes, (128, 192)).shape
        torch.Size([])

    Notes:
        As in the official code the relation spans the instances of every image in the batch (not one
        matrix per image). Coincident instances have distance ``sqrt(tiny)`` instead of the official
        ``1e-6``.

        Under ``DistributedDataParallel`` the relation matrix and its mean distance are computed over the
        instances of the process's own images only, so no normaliser makes the gradients equal those of one
        process on the union batch (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    check_options(reduction=reduction)
    s_levels, t_levels, boxes, valid = _prepare(student, teacher, instance_boxes, image_size, instance_mask, adapter_student)
    pool = dict(output_size=output_size, samples_per_bin=samples_per_bin,
                canonical_box_size=canonical_box_size, canonical_level=canonical_level)
    x_s = gid_instance_features(s_levels, boxes, image_size, **pool).flatten(2).flatten(0, 1)  # (NM, D)
    x_t = gid_instance_features(t_levels, boxes, image_size, **pool).flatten(2).flatten(0, 1)
    valid = valid.flatten()
    pairs = valid[:, None] & valid[None, :] & ~torch.eye(valid.numel(), dtype=torch.bool, device=valid.device)
    count = pairs.sum().clamp(min=1)

    def normalised(x: Tensor) -> Tensor:
        d = torch.where(pairs, _PAIRWISE(x), torch.zeros((), dtype=x.dtype, device=x.device))
        return d / (d.sum() / count).clamp(min=torch.finfo(x.dtype).tiny)

    error = F.smooth_l1_loss(normalised(x_s), normalised(x_t), reduction="none", beta=beta)
    enough = valid.sum() >= 3
    error = torch.where(pairs & enough, error, torch.zeros_like(error))
    dtype = _levels(student)[0].dtype
    if reduction == "none":
        return error.to(dtype)
    total = error.sum()
    return (total / count if reduction == "mean" else total).to(dtype)


def _flatten_head(x: Tensor, anchors: Tensor, name: str) -> Tensor:
    """``(N, A*K, H, W)`` head map to ``(N, H*W*A, K)`` in the anchors' order (position, then anchor)."""
    check_shape(x, name, "N C H W")
    n, c, h, w = x.shape
    per_cell = max(anchors.shape[0] // max(h * w, 1), 1)
    if not _tracing() and anchors.shape[0] != h * w * per_cell:
        raise ValueError(f"anchors has {anchors.shape[0]} rows for a {h}x{w} map in {name}: expected H*W*A rows")
    return upcast(x).permute(0, 2, 3, 1).reshape(n, h * w * per_cell, c // per_cell)


def gid_response_loss(
    student_logits: Levels,
    teacher_logits: Levels,
    student_deltas: Levels,
    teacher_deltas: Levels,
    anchors: Levels,
    instance_boxes: Sequence[Tensor] | Tensor,
    instance_mask: Tensor | None = None,
    *,
    iou_threshold: float = 0.5,
    cls_weight: float = 0.1,
    reg_weight: float = 1.0,
    beta: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    r"""GID response-based distillation: the head outputs of the anchors that match a general instance.

    An anchor is distilled when its IoU with some general instance of its image is at least
    ``iou_threshold`` (the detector's own positive rule; RetinaNet: 0.5); :math:`M` counts them over
    all levels and images:

    .. math::
        L_{Response} = \frac{1}{M} \sum_{r \in \text{mask}} \Big(
            \lambda_{cls} \sum_c \mathrm{BCE}\big(\sigma(y_t^{r,c}), y_s^{r,c}\big)
            + \lambda_{reg} \, \mathrm{SmoothL1}_\beta\big(\delta_s^r, \delta_t^r\big) \Big)

    Args:
        student_logits: student classification maps per level, ``(N, A*C, H_l, W_l)`` (sigmoid head),
            or one map.
        teacher_logits: the teacher's, same shapes (detached inside; its sigmoid is the soft target).
        student_deltas: student box-regression maps per level, ``(N, A*4, H_l, W_l)``.
        teacher_deltas: the teacher's, same shapes (detached inside).
        anchors: per level ``(H_l * W_l * A, 4)`` xyxy anchors in input pixels, position-major then
            anchor (mmdetection's and detectron2's order).
        instance_boxes: the general instances, per-image ``(M_i, 4)`` xyxy pixel boxes or ``(N, M, 4)``.
        instance_mask: ``(N, M)`` bool, which rows of a padded ``instance_boxes`` are instances.
        iou_threshold: anchor-to-instance IoU from which an anchor is distilled (official RetinaNet
            configs: 0.5).
        cls_weight: :math:`\lambda_{cls}`, the classification term (official configs: 0.1).
        reg_weight: :math:`\lambda_{reg}`, the regression term (official configs: 1.0).
        beta: :math:`\beta` of the smooth L1 (official configs: 0, i.e. L1).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sums over the
            distilled anchors (classes, box coordinates) divided by their number :math:`M` (at least
            1), as the official code; ``'sum'``: the sum; ``'none'``: the ``(N, sum_l H_l W_l A)``
            per-anchor losses, zero for anchors not distilled.

    Shape:
        - student_logits, teacher_logits: :math:`(N, A C, H_l, W_l)` per level
        - student_deltas, teacher_deltas: :math:`(N, 4 A, H_l, W_l)` per level
        - output: scalar, or :math:`(N, \sum_l H_l W_l A)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Dai et al., "General Instance Distillation for Object Detection", CVPR 2021, arXiv:2103.02340.
        Official code: daixinghome/Distill_GID_detectron2@9118c54, ``GID/gid/loss.py::distill_loss_response``
        with the mask of ``DistillGID.get_GI_instance_labels``.

    Example:
        >>> import torch
        >>> ys = torch.arange(4.0).repeat_interleave(6) * 16
        >>> xs = torch.arange(6.0).repeat(4) * 16
        >>> anchors = torch.stack([xs - 8, ys - 8, xs + 24, ys + 24], dim=1)  # one anchor per cell
        >>> s, t = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4, 6)
        >>> ds, dt = torch.randn(2, 4, 4, 6), torch.randn(2, 4, 4, 6)
        >>> boxes = [anchors[:2] + 1.0, anchors[5:6]]
        >>> gid_response_loss(s, t, ds, dt, anchors, boxes).shape
        torch.Size([])

    Notes:
        The official code labels anchors with detectron2's ``Matcher`` (thresholds ``[0.4, 0.5]``,
        ambiguous anchors set to 0), which keeps exactly the anchors with IoU of at least 0.5.

        Under ``DistributedDataParallel`` each process divides by its own number of distilled anchors; inside
        :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_options(cls_weight=cls_weight, reg_weight=reg_weight, reduction=reduction)
    inputs = [_levels(x) for x in (student_logits, teacher_logits, student_deltas, teacher_deltas, anchors)]
    if not _tracing() and len({len(x) for x in inputs}) != 1:
        raise ValueError("student_logits, teacher_logits, student_deltas, teacher_deltas and anchors need one "
                         "entry per level each")
    for s, t, ds, dt in zip(*inputs[:4]):
        check_shape(s, "student_logits", "N C H W")
        check_shape(t, "teacher_logits", "N C H W")
        check_shape(ds, "student_deltas", "N C H W")
        check_shape(dt, "teacher_deltas", "N C H W")
        check_same_shape(s, t, ("student_logits", "teacher_logits"))
        check_same_shape(ds, dt, ("student_deltas", "teacher_deltas"))
    n = inputs[0][0].shape[0]
    check_boxes(instance_boxes, n, name="instance_boxes")
    flat = [torch.cat([_flatten_head(x.detach() if i % 2 else x, a, name) for x, a in zip(level, inputs[4])], dim=1)
            for i, (level, name) in enumerate(zip(inputs[:4], ("student_logits", "teacher_logits",
                                                                 "student_deltas", "teacher_deltas")))]
    s_cls, t_cls, s_reg, t_reg = flat
    all_anchors = torch.cat([upcast(a) for a in inputs[4]]).to(s_cls)
    boxes, valid = pad_boxes(instance_boxes, instance_mask, name="instance_boxes", mask_name="instance_mask")
    boxes, valid = boxes.to(s_cls), valid.to(s_cls.device)
    iou = box_iou(all_anchors, boxes)  # (N, P, M)
    distilled = ((iou >= iou_threshold) & valid[:, None, :]).any(dim=-1)  # (N, P)
    cls = F.binary_cross_entropy_with_logits(s_cls, t_cls.sigmoid(), reduction="none").sum(dim=-1)
    reg = F.smooth_l1_loss(s_reg, t_reg, reduction="none", beta=beta).sum(dim=-1)
    per_anchor = torch.where(distilled, cls_weight * cls + reg_weight * reg, torch.zeros_like(cls))
    return reduce_loss(per_anchor, reduction, avg_factor=distilled.sum().clamp(min=1)).to(inputs[0][0].dtype)


def _adapter(student_channels: int | None, channels: int | None) -> dict:
    if student_channels is None and channels is None:
        return {}
    if student_channels is None or channels is None:
        raise ValueError("pass both student_channels and channels to build adapter_student, or neither")
    return {"adapter_student": nn.Conv2d(student_channels, channels, 3, padding=1)}


@register_loss("gid_feature", function=gid_feature_loss, distributed="count")
class GIDFeatureLoss(LossModule):
    """Module twin of :func:`gid_feature_loss`; ``loss_weight`` multiplies the result (official: 5e-4).

    Args:
        student_channels: with ``channels``, the loss owns ``adapter_student``, a 3x3 convolution from
            the student's to the teacher's channels shared by all levels (the paper's adapter).
        channels: the teacher's channel count.
    """

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        channels: int | None = None,
        output_size: int = 10,
        samples_per_bin: int = 2,
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            **_adapter(student_channels, channels), output_size=output_size, samples_per_bin=samples_per_bin,
            canonical_box_size=canonical_box_size, canonical_level=canonical_level, reduction=reduction,
            loss_weight=loss_weight,
        )


@register_loss("gid_relation", function=gid_relation_loss, distributed="batch")
class GIDRelationLoss(LossModule):
    """Module twin of :func:`gid_relation_loss`; ``loss_weight`` multiplies the result (official: 40).

    Args:
        student_channels: with ``channels``, the loss owns ``adapter_student`` (see
            :class:`GIDFeatureLoss`; pass one module to both losses to share it).
        channels: the teacher's channel count.
    """

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        channels: int | None = None,
        output_size: int = 10,
        samples_per_bin: int = 2,
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
        beta: float = 1.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            **_adapter(student_channels, channels), output_size=output_size, samples_per_bin=samples_per_bin,
            canonical_box_size=canonical_box_size, canonical_level=canonical_level, beta=beta,
            reduction=reduction, loss_weight=loss_weight,
        )


@register_loss("gid_response", function=gid_response_loss, distributed="count")
class GIDResponseLoss(LossModule):
    """Module twin of :func:`gid_response_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        iou_threshold: float = 0.5,
        cls_weight: float = 0.1,
        reg_weight: float = 1.0,
        beta: float = 0.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            iou_threshold=iou_threshold, cls_weight=cls_weight, reg_weight=reg_weight, beta=beta,
            reduction=reduction, loss_weight=loss_weight,
        )
