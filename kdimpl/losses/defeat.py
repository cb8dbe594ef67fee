"""Decoupled features (DeFeat), Guo et al., CVPR 2021."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import _tracing, check_boxes, check_feature_pair, check_positive, check_reduction, check_tensor
from .._dtypes import upcast
from .._registry import register_loss
from ..masks import cover_counts, pad_boxes

__all__ = [
    "defeat_box_levels",
    "defeat_gt_masks",
    "defeat_loss",
    "defeat_multilevel_loss",
    "defeat_roi_kd_loss",
    "DeFeatLoss",
    "DeFeatRoIKDLoss",
]

DEFAULT_STRIDES = (4, 8, 16, 32, 64)


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


def _level_cell_bounds(boxes: Tensor, stride: float | Tensor, feature_size: Sequence[int | Tensor]) -> Tensor:
    """Inclusive cell bounds of the official rasterisation on one level (or per box, given tensors).

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


def _gt_mask_level(boxes: Tensor, valid: Tensor, levels: Tensor, level: int, stride: float, feature_size) -> Tensor:
    bounds = _level_cell_bounds(boxes, stride, feature_size)
    on_level = valid & (levels == level)
    return cover_counts(bounds, on_level, feature_size) > 0


def defeat_gt_masks(
    gt_boxes: Sequence[Tensor] | Tensor,
    feature_sizes: Sequence[Sequence[int]],
    strides: Sequence[float] = DEFAULT_STRIDES,
    *,
    finest_scale: float = 56.0,
    valid: Tensor | None = None,
) -> list[Tensor]:
    """DeFeat's binary GT masks, one ``(N, H_l, W_l)`` mask per FPN level (official ``get_gt_mask``).

    Each box goes to one level (:func:`defeat_box_levels`) and covers, on that level only, the
    cells ``[int(y1/s):int(y2/s), int(x1/s):int(x2/s)]`` (end-exclusive, clipped), or the single
    cell ``(int(y1/s), int(x1/s))`` when that slice is empty. Vectorised over images and boxes.

    Args:
        gt_boxes: ``N`` tensors ``(M_i, 4)`` of xyxy pixels in the padded input image, or ``(N, M, 4)``.
        feature_sizes: ``(H_l, W_l)`` per level.
        strides: stride per level (default P2-P6: 4, 8, 16, 32, 64).
        finest_scale: the level rule's :math:`s_0` (56).
        valid: for padded boxes, ``(N, M)`` bool mask of real boxes.

    Returns:
        list of float masks (0/1) in the boxes' floating dtype (at least float32).

    Example:
        >>> import torch
        >>> masks = defeat_gt_masks([torch.tensor([[8.0, 8.0, 60.0, 40.0]])], [(16, 20), (8, 10)], (4, 8))
        >>> [int(m.sum()) for m in masks]
        [104, 0]
    """
    if not _tracing() and len(feature_sizes) != len(strides):
        raise ValueError(f"feature_sizes has {len(feature_sizes)} levels but strides has {len(strides)}")
    boxes, valid = pad_boxes(gt_boxes, valid)
    check_boxes(boxes, boxes.shape[0])
    boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    levels = defeat_box_levels(boxes, len(strides), finest_scale)
    # Each box lives on one level, so all levels come from one matmul: stack the levels' rows
    # (and columns) end to end, shift every box into its level's block, and cut the diagonal
    # blocks out of the (N, sum H, sum W) union. Off-diagonal blocks stay empty.
    heights = [int(size[0]) for size in feature_sizes]
    widths = [int(size[1]) for size in feature_sizes]
    row_starts = [sum(heights[:i]) for i in range(len(heights))]
    col_starts = [sum(widths[:i]) for i in range(len(widths))]
    per_box = lambda values: boxes.new_tensor(values)[levels]  # noqa: E731
    x0, y0, x1, y1 = _level_cell_bounds(
        boxes, per_box(strides)[..., None], (per_box(heights), per_box(widths))
    ).unbind(dim=-1)
    row, col = per_box(row_starts), per_box(col_starts)
    shifted = torch.stack([x0 + col, y0 + row, x1 + col, y1 + row], dim=-1)
    union = cover_counts(shifted, valid, (sum(heights), sum(widths))).clamp_(max=1).to(boxes.dtype)
    return [union[:, r : r + h, c : c + w] for r, c, h, w in zip(row_starts, col_starts, heights, widths)]


def defeat_loss(
    student: Tensor,
    teacher: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    *,
    level: int = 0,
    strides: Sequence[float] = DEFAULT_STRIDES,
    fg_weight: float = 3.0,
    bg_weight: float = 12.0,
    finest_scale: float = 56.0,
    reduction: str = "mean",
) -> Tensor:
    r"""DeFeat feature imitation on one FPN level, foreground and background decoupled.

    .. math::
        L = \frac{\alpha_{obj}}{2 N_{obj}} \sum_{c,h,w} M_{hw} \big(\phi(S) - T\big)^2_{chw}
          + \frac{\alpha_{bg}}{2 N_{bg}} \sum_{c,h,w} (1 - M_{hw}) \big(\phi(S) - T\big)^2_{chw}

    with :math:`M` the level's GT mask (:func:`defeat_gt_masks`). As in the official code,
    :math:`N_{obj} = C \sum_{n,h,w} M` and :math:`N_{bg} = C \sum_{n,h,w} (1 - M)` count elements
    (positions times channels) over the batch, and each normaliser :math:`2N` is clamped to >= 1.

    Args:
        student: adapted student features :math:`\phi(S)` of level ``level``
            (see :class:`kdimpl.DeFeatAdapter`).
        teacher: teacher features of the same shape (detached inside).
        gt_boxes: ``N`` tensors ``(M_i, 4)`` of xyxy pixels (or padded ``(N, M, 4)``).
        level: index of this feature map in ``strides``; boxes are assigned to levels first,
            so only those assigned to ``level`` enter its mask.
        strides: strides of all levels (default P2-P6).
        fg_weight: :math:`\alpha_{obj}` (official config ``hint_neck_w = 3``).
        bg_weight: :math:`\alpha_{bg}` (official config ``hint_neck_back_w = 12``).
        finest_scale: level-assignment scale (56).
        reduction: ``'mean'``: the official normalisation above; averaging it over the levels
            gives the official total (:func:`defeat_multilevel_loss`); ``'sum'``:
            :math:`\alpha_{obj}\sum M e + \alpha_{bg}\sum (1-M) e` with :math:`e` the squared error;
            ``'none'``: the ``(N, C, H, W)`` weighted squared errors whose sum is ``'sum'``.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'``

    Reference:
        Jianyuan Guo, Kai Han, Yunhe Wang, Han Wu, Xinghao Chen, Chunjing Xu, Chang Xu.
        "Distilling Object Detectors via Decoupled Features". CVPR 2021. arXiv:2103.14475.
        Official code: ggjy/DeFeat.pytorch@c46a793 (``mmdet/apis/train.py::batch_processor_kd``,
        ``mmdet/models/dense_heads/anchor_head.py::get_gt_mask``).

    Notes:
        The official mask is float64, which promotes the official loss to float64; here the
        loss is computed in the features' dtype (float32 for half inputs). The paper writes
        :math:`N` as a number of positions; the official code (followed here) includes :math:`C`.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 16, 20), torch.randn(2, 8, 16, 20)
        >>> boxes = [torch.tensor([[8.0, 8.0, 60.0, 40.0]]), torch.zeros(0, 4)]
        >>> defeat_loss(s, t, boxes, level=0, strides=(4, 8)).shape
        torch.Size([])
    """
    check_feature_pair(student, teacher)
    check_reduction(reduction)
    if not _tracing() and not 0 <= level < len(strides):
        raise ValueError(f"level must index strides {tuple(strides)}, got {level}")
    boxes, valid = pad_boxes(gt_boxes)
    check_boxes(boxes, student.shape[0])
    boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    levels = defeat_box_levels(boxes, len(strides), finest_scale)
    fg = _gt_mask_level(boxes, valid, levels, level, strides[level], tuple(student.shape[2:]))
    return _decoupled_loss(student, teacher, fg, fg_weight, bg_weight, reduction)


def _decoupled_loss(student: Tensor, teacher: Tensor, fg: Tensor, fg_weight, bg_weight, reduction: str) -> Tensor:
    s = upcast(student)
    t = upcast(teacher.detach())
    fg = fg.to(s.dtype)[:, None]
    err = (s - t).pow(2)
    if reduction == "none":
        return (err * (fg_weight * fg + bg_weight * (1 - fg))).to(student.dtype)
    fg_sum = (err * fg).sum()
    bg_sum = (err * (1 - fg)).sum()
    if reduction == "mean":
        channels = s.shape[1]
        fg_sum = fg_sum / (2 * channels * fg.sum()).clamp(min=1)
        bg_sum = bg_sum / (2 * channels * (1 - fg).sum()).clamp(min=1)
    return (fg_weight * fg_sum + bg_weight * bg_sum).to(student.dtype)


def defeat_multilevel_loss(
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    gt_boxes: Sequence[Tensor] | Tensor,
    *,
    strides: Sequence[float] = DEFAULT_STRIDES,
    fg_weight: float = 3.0,
    bg_weight: float = 12.0,
    finest_scale: float = 56.0,
) -> Tensor:
    """The official DeFeat feature loss over all levels: the mean of :func:`defeat_loss` over levels.

    Equals ``losskd_neck + losskd_neck_back`` of the official ``batch_processor_kd``.

    Example:
        >>> import torch
        >>> s = [torch.randn(1, 4, 16, 20), torch.randn(1, 4, 8, 10)]
        >>> t = [torch.randn(1, 4, 16, 20), torch.randn(1, 4, 8, 10)]
        >>> defeat_multilevel_loss(s, t, [torch.tensor([[8.0, 8.0, 60.0, 40.0]])], strides=(4, 8)).shape
        torch.Size([])
    """
    if not _tracing() and not len(students) == len(teachers) == len(strides):
        raise ValueError(
            f"got {len(students)} student levels, {len(teachers)} teacher levels and {len(strides)} strides"
        )
    for s, t in zip(students, teachers):
        check_feature_pair(s, t)
    masks = defeat_gt_masks(gt_boxes, [s.shape[2:] for s in students], strides, finest_scale=finest_scale)
    total = sum(
        _decoupled_loss(s, t, m, fg_weight, bg_weight, "mean") for s, t, m in zip(students, teachers, masks)
    )
    return total / len(students)


@register_loss("defeat", function=defeat_loss)
class DeFeatLoss(nn.Module):
    """Module twin of :func:`defeat_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        level: int = 0,
        strides: Sequence[float] = DEFAULT_STRIDES,
        fg_weight: float = 3.0,
        bg_weight: float = 12.0,
        finest_scale: float = 56.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.level = level
        self.strides = tuple(strides)
        self.fg_weight = fg_weight
        self.bg_weight = bg_weight
        self.finest_scale = finest_scale
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student: Tensor, teacher: Tensor, gt_boxes: Sequence[Tensor] | Tensor) -> Tensor:
        return self.loss_weight * defeat_loss(
            student,
            teacher,
            gt_boxes,
            level=self.level,
            strides=self.strides,
            fg_weight=self.fg_weight,
            bg_weight=self.bg_weight,
            finest_scale=self.finest_scale,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"level={self.level}, strides={self.strides}, fg_weight={self.fg_weight}, bg_weight={self.bg_weight}, "
            f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
        )


def defeat_roi_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    background_index: int = -1,
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
        labels: ``(R,)`` int RoI labels; negative labels are ignored.
        background_index: the background class column (``-1``: the last, mmdet's convention).
        temperature: :math:`T` (official config 1).
        fg_weight: :math:`\alpha_{obj}` (config ``head_cls_w = 2``).
        bg_weight: :math:`\alpha_{bg}` (config ``head_cls_back_w = 2``).
        reduction: ``'mean'``: the per-set averages above; ``'sum'``: weighted sums of the per-RoI
            :math:`T^2\,\mathrm{KL}`; ``'none'``: the ``(R,)`` weighted per-RoI terms.

    Shape:
        - student_logits, teacher_logits: :math:`(R, K + 1)`; labels: :math:`(R,)`
        - output: scalar, or :math:`(R,)` with ``reduction='none'``

    Reference:
        Guo et al., CVPR 2021, arXiv:2103.14475; ggjy/DeFeat.pytorch@c46a793
        (``mmdet/apis/train.py``: ``KLDivergenceLoss`` and the ``KL-decouple`` branch).

    Notes:
        The released DeFeat config does not enable this term (the author reports in
        ggjy/DeFeat.pytorch#13 that the paper's results do not use it). The official code
        takes ``labels.max()`` of the batch as background, which is wrong when a batch holds no
        background RoI; here the background column is explicit. The official code uses a single
        temperature for both sets; so does this function.

    Example:
        >>> import torch
        >>> s, t = torch.randn(6, 4), torch.randn(6, 4)
        >>> defeat_roi_kd_loss(s, t, torch.tensor([0, 3, 3, 1, 3, 2])).shape
        torch.Size([])
    """
    check_tensor(student_logits, "student_logits", 2, "R K")
    check_tensor(teacher_logits, "teacher_logits", 2, "R K")
    check_reduction(reduction)
    check_positive(temperature, "temperature")
    if not _tracing():
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                f"{tuple(teacher_logits.shape)} must have the same shape"
            )
        if labels.shape != student_logits.shape[:1]:
            raise ValueError(f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    num_classes = student_logits.shape[1]
    background = background_index % num_classes
    s = upcast(student_logits)
    t = upcast(teacher_logits.detach())
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * temperature**2
    is_bg = labels == background
    is_fg = (labels >= 0) & ~is_bg
    fg_w = is_fg.to(s.dtype) * fg_weight
    bg_w = is_bg.to(s.dtype) * bg_weight
    if reduction == "mean":
        fg_w = fg_w / is_fg.sum().clamp(min=1).to(s.dtype)
        bg_w = bg_w / is_bg.sum().clamp(min=1).to(s.dtype)
    per_roi = kl * (fg_w + bg_w)
    if reduction == "none":
        return per_roi.to(student_logits.dtype)
    return per_roi.sum().to(student_logits.dtype)


@register_loss("defeat_roi_kd", function=defeat_roi_kd_loss)
class DeFeatRoIKDLoss(nn.Module):
    """Module twin of :func:`defeat_roi_kd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        background_index: int = -1,
        temperature: float = 1.0,
        fg_weight: float = 2.0,
        bg_weight: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        check_reduction(reduction)
        self.background_index = background_index
        self.temperature = temperature
        self.fg_weight = fg_weight
        self.bg_weight = bg_weight
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return self.loss_weight * defeat_roi_kd_loss(
            student_logits,
            teacher_logits,
            labels,
            background_index=self.background_index,
            temperature=self.temperature,
            fg_weight=self.fg_weight,
            bg_weight=self.bg_weight,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"background_index={self.background_index}, temperature={self.temperature}, "
            f"fg_weight={self.fg_weight}, bg_weight={self.bg_weight}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}"
        )
