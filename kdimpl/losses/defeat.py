"""Decoupled features (DeFeat), Guo et al., CVPR 2021."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import (
    _tracing,
    check_background_index,
    check_boxes,
    check_feature_pair,
    check_image_size,
    check_labels,
    check_options,
    check_same_shape,
    check_shape,
)
from .._dtypes import upcast
from .._registry import register_loss
from ..adapters.defeat import DeFeatAdapter
from ..distributed import reduce_normaliser
from ..masks import cover_counts
from ..ops import padded_boxes

__all__ = ["defeat_box_levels", "defeat_gt_mask"]


def defeat_box_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    r"""FPN level of each box by the RoI rule used for DeFeat's GT masks.

    .. math::
        l = \operatorname{clamp}\Big(\big\lfloor \log_2\big(\sqrt{(x_2 - x_1 + 1)(y_2 - y_1 + 1)} / s_0
            + 10^{-6}\big) \big\rfloor, 0, L - 1\Big), \qquad s_0 = 56

    Args:
        boxes: ``(..., 4)`` xyxy pixels.
        num_levels: :math:`L`.
        finest_scale: :math:`s_0`.

    Returns:
        ``(...)`` int64 level indices.
    """
    scale = torch.sqrt((boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1))
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def _feature_stride(image_size: Sequence[int] | Tensor, feature_size: Sequence[int], like: Tensor) -> Tensor:
    """Per-image stride ``(N, 1, 1)`` of a ``(H, W)`` map computed from a padded input of ``image_size``.

    A padded input of ``S`` pixels gives ``ceil(S / s)`` cells for a stride ``s``, so ``S / cells`` lies
    in ``(s / 2, s]`` once a map has two cells along an axis: with power-of-two strides (every FPN),
    the stride is the smallest power of two at least the larger ratio of the two axes.
    """
    size = torch.as_tensor(image_size, dtype=like.dtype, device=like.device).reshape(-1, 2)
    ratio = torch.maximum(size[:, 0] / feature_size[0], size[:, 1] / feature_size[1])
    # log2 of an exact power of two may round up by an ulp: the tolerance keeps 64 at 64
    return torch.exp2(torch.ceil(torch.log2(ratio) - 1e-3)).reshape(-1, 1, 1)


def _level_cell_bounds(boxes: Tensor, stride: Tensor, feature_size: Sequence[int]) -> Tensor:
    """Inclusive cell bounds of the official rasterisation on one level.

    Box corners are divided by the stride and truncated to int; the region is the end-exclusive
    slice ``[y1:y2, x1:x2]`` clipped to the map, or the single cell ``(y1, x1)`` when the slice
    is empty along either axis (a box thinner than a cell).
    """
    height, width = feature_size
    q = torch.trunc(boxes / stride)
    x0, y0 = q[..., 0].clamp(min=0), q[..., 1].clamp(min=0)
    x1, y1 = q[..., 2].clamp(max=width), q[..., 3].clamp(max=height)
    single = (x0 == x1) | (y0 == y1)
    # the official code would index out of range for a single cell beyond the map: clip it
    x0, y0 = x0.clamp(max=width - 1), y0.clamp(max=height - 1)
    x1 = torch.where(single, x0, x1 - 1)
    y1 = torch.where(single, y0, y1 - 1)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def defeat_gt_mask(
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    feature_size: Sequence[int],
    *,
    gt_mask: Tensor | None = None,
    level: int = 0,
    num_levels: int = 1,
    finest_scale: float = 56.0,
) -> Tensor:
    """DeFeat's binary GT mask ``(N, H, W)`` of one FPN level (official ``get_gt_mask``).

    Each box goes to one of ``num_levels`` levels (:func:`defeat_box_levels`); a box of this
    ``level`` covers the cells ``[int(y1/s):int(y2/s), int(x1/s):int(x2/s)]`` (end-exclusive,
    clipped), or the single cell ``(int(y1/s), int(x1/s))`` when that slice is empty, with ``s``
    the level's stride derived from ``image_size`` and ``feature_size``.

    Args:
        gt_boxes: ``N`` tensors ``(M_i, 4)`` of xyxy pixels of the padded input, or ``(N, M, 4)``.
        image_size: ``(height, width)`` of the padded input tensor, or ``(N, 2)``.
        feature_size: ``(H, W)`` of this level's map.
        gt_mask: ``(N, M)`` bool, the real rows of a padded ``gt_boxes`` tensor (default: all).
        level: this level's index among the ``num_levels`` levels (0 = finest).
        num_levels: number of levels the boxes are spread over (1: every box on this level).
        finest_scale: the level rule's :math:`s_0` (56).

    Returns:
        ``(N, H, W)`` float mask of 0/1 in the boxes' floating dtype (at least float32).

    Example:
        >>> import torch
        >>> mask = defeat_gt_mask([torch.tensor([[8.0, 8.0, 60.0, 40.0]])], (64, 80), (16, 20))
        >>> int(mask.sum())
        104
    """
    if not _tracing() and not 0 <= level < num_levels:
        raise ValueError(f"level must be in [0, num_levels={num_levels}), got {level}")
    batch = len(gt_boxes)
    check_image_size(image_size, batch)
    boxes, valid = padded_boxes(gt_boxes, batch, gt_mask=gt_mask)
    stride = _feature_stride(image_size, feature_size, boxes)
    on_level = valid & (defeat_box_levels(boxes, num_levels, finest_scale) == level)
    bounds = _level_cell_bounds(boxes, stride, feature_size)
    return (cover_counts(bounds, on_level, feature_size) > 0).to(boxes.dtype)


def defeat_loss(
    student: Tensor,
    teacher: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    level: int = 0,
    num_levels: int = 1,
    *,
    gt_mask: Tensor | None = None,
    adapter_student: nn.Module | None = None,
    fg_weight: float = 3.0,
    bg_weight: float = 12.0,
    finest_scale: float = 56.0,
    reduction: str = "mean",
) -> Tensor:
    r"""DeFeat feature imitation on one FPN level, foreground and background decoupled.

    .. math::
        L = \frac{\alpha_{obj}}{2 N_{obj}} \sum_{n,c,h,w} M_{nhw} \big(\phi(S) - T\big)^2_{nchw}
          + \frac{\alpha_{bg}}{2 N_{bg}} \sum_{n,c,h,w} (1 - M_{nhw}) \big(\phi(S) - T\big)^2_{nchw}

    with :math:`M` the level's GT mask (:func:`defeat_gt_mask`). As in the official code,
    :math:`N_{obj} = C \sum_{n,h,w} M` and :math:`N_{bg} = C \sum_{n,h,w} (1 - M)` count elements
    (positions times channels) over the batch, and each normaliser :math:`2N` is clamped to >= 1.
    The official total is the mean over the levels:
    ``multilevel_loss(defeat_loss, students, teachers, gt_boxes=..., image_size=...,
    level_weights=[1 / L] * L)``, which also passes each call its ``level`` and ``num_levels``.

    Args:
        student: student features of this level; adapted by ``adapter_student`` when given.
        teacher: teacher features of the adapted student's shape (detached inside).
        gt_boxes: ``N`` tensors ``(M_i, 4)`` of xyxy pixels of the input tensor (or padded ``(N, M, 4)``).
        image_size: ``(height, width)`` of the (padded) input tensor, or ``(N, 2)``; the level's
            stride is derived from it and the feature size.
        gt_mask: ``(N, M)`` bool, the real rows of a padded ``gt_boxes`` tensor (default: all).
            Boxes padded to a fixed capacity (:func:`kdimpl.masks.pad_boxes`) keep
            ``torch.compile`` to one graph as box counts change.
        level: index of this feature map among ``num_levels`` (0 = finest); boxes are assigned to
            levels first, so only those assigned to ``level`` enter its mask.
        num_levels: number of FPN levels (default 1: every box enters this level's mask).
        adapter_student: :math:`\phi`, the level's adaptation (official: a 3x3 convolution, one
            level of :class:`kdimpl.DeFeatAdapter`), or ``None`` when ``student`` is already adapted.
        fg_weight: :math:`\alpha_{obj}` (official config ``hint_neck_w = 3``).
        bg_weight: :math:`\alpha_{bg}` (official config ``hint_neck_back_w = 12``).
        finest_scale: level-assignment scale :math:`s_0` (56).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: each term divided by
            twice its element count :math:`2 N_{obj}`, :math:`2 N_{bg}` as above (use
            ``reduction='none'`` and ``.mean()`` for the element mean of the weighted errors);
            ``'sum'``: :math:`\alpha_{obj}\sum M e + \alpha_{bg}\sum (1-M) e` with :math:`e` the squared
            error; ``'none'``: the ``(N, C, H, W)`` weighted squared errors whose sum is ``'sum'``.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Jianyuan Guo, Kai Han, Yunhe Wang, Han Wu, Xinghao Chen, Chunjing Xu, Chang Xu.
        "Distilling Object Detectors via Decoupled Features". CVPR 2021. arXiv:2103.14475.
        Official code: ggjy/DeFeat.pytorch@c46a793 (``mmdet/apis/train.py::batch_processor_kd``,
        ``mmdet/models/dense_heads/anchor_head.py::get_gt_mask``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 16, 20), torch.randn(2, 8, 16, 20)
        >>> boxes = [torch.tensor([[8.0, 8.0, 60.0, 40.0]]), torch.zeros(0, 4)]
        >>> defeat_loss(s, t, boxes, (64, 80)).shape
        torch.Size([])

    Notes:
        The official code reads the strides from the anchor generator (4 to 64 on P2-P6); here a
        level's stride is the smallest power of two at least ``image_size / feature size`` (the
        larger of the two axes), which equals the detector's stride for a padded input and
        power-of-two FPN strides (P3-P7 of RetinaNet included). The official mask is float64,
        which promotes the official loss to float64; here the loss is computed in the features'
        dtype (float32 for half inputs). The paper writes :math:`N` as a number of positions; the
        official code (followed here) includes :math:`C`.

        Under ``DistributedDataParallel`` each process divides by its own foreground and background element
        counts; inside :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes
        and the gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_shape(student, "student", "N C H W")
    student = student if adapter_student is None else adapter_student(student)
    check_feature_pair(student, teacher)
    check_options(fg_weight=fg_weight, bg_weight=bg_weight, reduction=reduction)
    check_boxes(gt_boxes, student.shape[0], mask=gt_mask)
    check_image_size(image_size, student.shape[0], student)
    mask = defeat_gt_mask(
        gt_boxes, image_size, student.shape[2:], gt_mask=gt_mask, level=level, num_levels=num_levels,
        finest_scale=finest_scale,
    )
    s = upcast(student)
    t = upcast(teacher.detach())
    fg = mask.to(device=s.device, dtype=s.dtype)[:, None]
    bg = 1 - fg
    err = (s - t).pow(2)
    if reduction == "none":
        return (err * (fg_weight * fg + bg_weight * bg)).to(student.dtype)
    fg_sum = (err * fg).sum()
    bg_sum = (err * bg).sum()
    if reduction == "mean":
        channels = s.shape[1]
        fg_sum = fg_sum / (2 * channels * reduce_normaliser(fg.sum())).clamp(min=1)
        bg_sum = bg_sum / (2 * channels * reduce_normaliser(bg.sum())).clamp(min=1)
    return (fg_weight * fg_sum + bg_weight * bg_sum).to(student.dtype)


@register_loss("defeat", function=defeat_loss, distributed="count")
class DeFeatLoss(LossModule):
    """Module twin of :func:`defeat_loss`; ``loss_weight`` multiplies the result.

    ``level`` and ``num_levels`` are inputs of ``forward`` (:class:`kdimpl.MultiLevelLoss` passes
    them). The official total with its per-level adaptations is
    ``MultiLevelLoss([DeFeatLoss(student_channels=256) for _ in range(L)], level_weights=[1 / L] * L)``.

    Args:
        student_channels: when given, the twin owns the level's ``adapter_student``, a 3x3
            convolution to ``teacher_channels`` initialised as in the official code (one level of
            :class:`kdimpl.DeFeatAdapter`); ``None``: pass adapted features (or ``adapter_student``).
        teacher_channels: output channels of that adaptation (default: ``student_channels``).
    """

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        fg_weight: float = 3.0,
        bg_weight: float = 12.0,
        finest_scale: float = 56.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        owned = {}
        if student_channels is not None:
            adapter = DeFeatAdapter(student_channels, teacher_channels or student_channels, num_levels=1)
            owned["adapter_student"] = adapter.convs[0]
        super().__init__(
            fg_weight=fg_weight, bg_weight=bg_weight, finest_scale=finest_scale, reduction=reduction,
            loss_weight=loss_weight, **owned,
        )


def defeat_roi_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    background_index: int = 0,
    temperature: float = 1.0,
    fg_weight: float = 2.0,
    bg_weight: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""DeFeat's decoupled RoI classification distillation (official option ``KL-decouple``).

    .. math::
        L = \alpha_{obj} \frac{T^2}{|P|} \sum_{r \in P} \mathrm{KL}\big(p^T_r \,\|\, p^S_r\big)
          + \alpha_{bg} \frac{T^2}{|B|} \sum_{r \in B} \mathrm{KL}\big(p^T_r \,\|\, p^S_r\big),
        \qquad p_r = \operatorname{softmax}(z_r / T)

    with :math:`P` the RoIs labelled with an object class and :math:`B` those labelled background;
    an empty set contributes 0.

    Args:
        student_logits: student class logits on the sampled RoIs, ``(R, K + 1)``.
        teacher_logits: teacher logits on the **same** RoIs (detached inside).
        labels: ``(R,)`` integer RoI labels in ``[0, K + 1)``.
        background_index: the background class column (default 0, torchvision's convention; the
            official mmdetection code puts it last: pass ``-1``).
        temperature: :math:`T` (official config 1).
        fg_weight: :math:`\alpha_{obj}` (config ``head_cls_w = 2``).
        bg_weight: :math:`\alpha_{bg}` (config ``head_cls_back_w = 2``).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: each set's
            :math:`T^2\,\mathrm{KL}` sum divided by its number of RoIs :math:`|P|`, :math:`|B|`
            (use ``reduction='none'`` and ``.mean()`` for the plain mean over RoIs of the weighted
            terms); ``'sum'``: the weighted sum of the per-RoI :math:`T^2\,\mathrm{KL}`;
            ``'none'``: the ``(R,)`` weighted per-RoI terms.

    Shape:
        - student_logits, teacher_logits: :math:`(R, K + 1)`; labels: :math:`(R,)`
        - output: scalar, or :math:`(R,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Jianyuan Guo, Kai Han, Yunhe Wang, Han Wu, Xinghao Chen, Chunjing Xu, Chang Xu.
        "Distilling Object Detectors via Decoupled Features". CVPR 2021. arXiv:2103.14475.
        Official code: ggjy/DeFeat.pytorch@c46a793 (``mmdet/apis/train.py``: ``KLDivergenceLoss``
        and the ``KL-decouple`` branch).

    Example:
        >>> import torch
        >>> s, t = torch.randn(6, 4), torch.randn(6, 4)
        >>> defeat_roi_kd_loss(s, t, torch.tensor([0, 3, 0, 1, 0, 2])).shape
        torch.Size([])

    Notes:
        The released DeFeat config does not enable this term (the author reports in
        ggjy/DeFeat.pytorch#13 that the paper's results do not use it). The official code
        takes ``labels.max()`` of the batch as background, which is wrong when a batch holds no
        background RoI; here the background column is explicit. The official code uses a single
        temperature for both sets; so does this function.

        Under ``DistributedDataParallel`` each process divides by its own foreground and background RoI
        counts; inside :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes
        and the gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_shape(student_logits, "student_logits", "R K")
    check_shape(teacher_logits, "teacher_logits", "R K")
    check_same_shape(student_logits, teacher_logits, ("student_logits", "teacher_logits"))
    num_rois, num_classes = student_logits.shape
    check_labels(labels, num_classes)
    check_shape(labels, "labels", str(num_rois), floating=False)
    check_options(temperature=temperature, fg_weight=fg_weight, bg_weight=bg_weight, reduction=reduction)
    background = check_background_index(background_index, num_classes)
    s = upcast(student_logits)
    t = upcast(teacher_logits.detach())
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * temperature**2
    is_bg = (labels == background).to(s.dtype)
    is_fg = 1 - is_bg
    fg_w = is_fg * fg_weight
    bg_w = is_bg * bg_weight
    if reduction == "mean":
        fg_w = fg_w / reduce_normaliser(is_fg.sum()).clamp(min=1)
        bg_w = bg_w / reduce_normaliser(is_bg.sum()).clamp(min=1)
    per_roi = kl * (fg_w + bg_w)
    if reduction == "none":
        return per_roi.to(student_logits.dtype)
    return per_roi.sum().to(student_logits.dtype)


@register_loss("defeat_roi_kd", function=defeat_roi_kd_loss, distributed="count")
class DeFeatRoIKDLoss(LossModule):
    """Module twin of :func:`defeat_roi_kd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        background_index: int = 0,
        temperature: float = 1.0,
        fg_weight: float = 2.0,
        bg_weight: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            background_index=background_index, temperature=temperature, fg_weight=fg_weight, bg_weight=bg_weight,
            reduction=reduction, loss_weight=loss_weight,
        )
