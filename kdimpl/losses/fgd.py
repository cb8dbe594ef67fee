"""Focal and global distillation (FGD), Yang et al., CVPR 2022."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._checks import _tracing, check_boxes, check_feature_pair, check_positive, check_reduction
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..attention import channel_attention, spatial_attention
from ..masks import max_cover_levels, pad_boxes, scale_boxes_to_feature, scale_boxes_to_levels

__all__ = ["FGDLoss", "fgd_cell_bounds", "fgd_loss", "fgd_masks", "fgd_multilevel_masks"]


def fgd_cell_bounds(boxes: Tensor, image_size: Sequence[int] | Tensor, feature_size: Sequence[int]) -> Tensor:
    """Unclamped inclusive cell bounds ``(x0, y0, x1, y1)`` of ``(N, M, 4)`` pixel boxes, as FGD computes them.

    Coordinates are scaled as ``x / image_width * W`` (this order of operations, so that a box
    edge on the image border lands exactly on ``W``), then ``x0 = floor``, ``x1 = ceil``. Unlike
    :func:`kdimpl.masks.box_cell_bounds` the bounds are not clamped: the official code slices
    (which clips) but counts the area ``(y1 - y0 + 1)(x1 - x0 + 1)`` from the unclipped bounds,
    so a box touching the right/bottom border counts one cell more than it covers.
    """
    return _cell_bounds(scale_boxes_to_feature(boxes, image_size, feature_size))


def _cell_bounds(scaled: Tensor) -> Tensor:
    return torch.cat([scaled[..., :2].floor(), scaled[..., 2:].ceil()], dim=-1)


def fgd_multilevel_masks(
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    feature_sizes: Sequence[Sequence[int]],
    valid: Tensor | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """:func:`fgd_masks` for every level at once: ``[(fg, bg)]``, one ``(N, H_l, W_l)`` pair per level.

    All levels are built by one set of tensor operations (:func:`kdimpl.masks.max_cover_levels`)
    instead of one per level, which is what makes mask building cheap next to the official
    per-box loops. Pass each pair to :func:`fgd_loss` as ``masks``.

    Example:
        >>> import torch
        >>> boxes = [torch.tensor([[10.0, 20.0, 60.0, 50.0]]), torch.zeros(0, 4)]
        >>> [fg.shape for fg, bg in fgd_multilevel_masks(boxes, (80, 112), [(10, 14), (5, 7)])]
        [torch.Size([2, 10, 14]), torch.Size([2, 5, 7])]
    """
    boxes, valid = pad_boxes(gt_boxes, valid)
    check_boxes(boxes, boxes.shape[0])
    boxes = upcast(boxes) if boxes.is_floating_point() else boxes.float()
    bounds = _cell_bounds(scale_boxes_to_levels(boxes, image_size, feature_sizes))  # fgd_cell_bounds, (L, N, M, 4)
    x0, y0, x1, y1 = bounds.unbind(dim=-1)
    # 1 / rows / cols in this order (not 1 / area) reproduces the official float32 values bit for bit.
    weight = (y1 - y0 + 1).clamp(min=1).reciprocal() / (x1 - x0 + 1).clamp(min=1)
    fg = max_cover_levels(bounds, valid, weight, feature_sizes)
    bg = []
    for level in fg:
        background = torch.eq(level, 0, out=torch.empty_like(level))  # 1.0 / 0.0 without a bool copy
        bg.append(background.div_(background.sum(dim=(1, 2), keepdim=True).clamp_(min=1)))
    return list(zip(fg, bg))


def fgd_masks(
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    feature_size: Sequence[int],
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""FGD's foreground scale mask and normalised background mask (Eq. 2-4).

    .. math::
        M_{i,j} = \begin{cases}1 & (i,j) \in r\\ 0 & \text{else}\end{cases}, \qquad
        S_{i,j} = \begin{cases}\frac{1}{H_r W_r} & (i,j) \in r\\
            \frac{1}{N_{bg}} & \text{else}\end{cases}

    where ``H_r W_r`` is the box's area in cells; a cell covered by several boxes keeps the
    largest ``1 / (H_r W_r)`` (the smallest box). Returns ``(fg, bg)``, both ``(N, H, W)``:
    ``fg = M * S`` and ``bg = (1 - M) / N_bg`` (``bg`` is all zeros where every cell is foreground).

    Args:
        gt_boxes: per-image ``(M_i, 4)`` xyxy pixel boxes, or a padded ``(N, M, 4)`` tensor.
        image_size: ``(height, width)`` of the image the boxes refer to, or an ``(N, 2)`` tensor.
            The official code passes mmdet's unpadded ``img_shape`` while the feature map covers
            the padded batch; pass ``img_shape`` for parity, ``pad_shape`` for exact geometry.
        feature_size: ``(H, W)`` of the feature map.
        valid: optional ``(N, M)`` mask of real boxes for a padded tensor.

    Notes:
        Boxes are rasterised with :func:`fgd_cell_bounds` (see there for the area quirk) by
        :func:`kdimpl.masks.max_cover_levels`, never materialising ``(N, M, H, W)``. Two
        deliberate departures from the official per-box slicing, both only for boxes reaching
        outside the image: a negative start index is clipped to 0 (the official slice wraps
        around to the far end of the map), and inverted boxes cover nothing. For several
        levels, :func:`fgd_multilevel_masks` builds them all at once.
    """
    return fgd_multilevel_masks(gt_boxes, image_size, [feature_size], valid)[0]


def fgd_loss(
    student: Tensor,
    teacher: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor | None,
    image_size: Sequence[int] | Tensor | None,
    *,
    masks: tuple[Tensor, Tensor] | None = None,
    global_student: nn.Module | None = None,
    global_teacher: nn.Module | None = None,
    temperature: float = 0.5,
    alpha: float = 1e-3,
    beta: float = 5e-4,
    gamma: float = 1e-3,
    lambda_: float = 5e-6,
    reduction: str = "mean",
) -> Tensor:
    r"""Focal and global distillation loss for one feature level (Eq. 6, 7, 8, 10).

    .. math::
        L_{fea} &= \alpha \sum_{k,i,j} M_{i,j} S_{i,j} A^S_{i,j} A^C_k (F^T_{k,i,j} - F^S_{k,i,j})^2
            + \beta \sum_{k,i,j} (1-M_{i,j}) S_{i,j} A^S_{i,j} A^C_k (F^T_{k,i,j} - F^S_{k,i,j})^2 \\
        L_{at} &= \gamma \Big(\sum_{i,j} |A^S_T - A^S_S| + \sum_k |A^C_T - A^C_S|\Big) \\
        L_{global} &= \lambda \sum (\mathcal{R}_T(F^T) - \mathcal{R}_S(F^S))^2

    with the teacher's spatial/channel attentions ``A^S``, ``A^C`` (temperature ``T``,
    :mod:`kdimpl.attention`) in the feature loss, masks from :func:`fgd_masks`, and the
    global-context blocks ``R`` (:class:`kdimpl.adapters.fgd.FGDGlobalContext`).

    Args:
        student: student features, already projected to the teacher's channels
            (:class:`kdimpl.ChannelAdapter` is the official ``align`` 1x1 convolution).
        teacher: teacher features of the same shape (detached inside).
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in input pixels (or padded ``(N, M, 4)``).
        image_size: ``(height, width)`` or an ``(N, 2)`` tensor; see :func:`fgd_masks`.
        masks: the level's ``(fg, bg)`` from :func:`fgd_multilevel_masks` (or :func:`fgd_masks`),
            built once for all levels; ``gt_boxes`` and ``image_size`` are then unused (pass ``None``).
        global_student: the student's global-context block ``R_S``; ``None`` with
            ``global_teacher=None`` drops the global term.
        global_teacher: the teacher's block ``R_T`` (applied to the detached teacher, so its
            parameters still train, as in the official code).
        temperature: ``T`` of the attentions (0.5 in most configs, 0.8 for FCOS). Default 0.5.
        alpha, beta, gamma, lambda_: weights of the foreground, background, attention and global
            terms. Defaults are the official class defaults (1e-3, 5e-4, 1e-3, 5e-6); the shipped
            RetinaNet configs use ``gamma=5e-4``, the Faster R-CNN ones (5e-5, 2.5e-5, 5e-5, 5e-7).
        reduction: ``'none'``: the ``(N,)`` weighted loss per image; ``'sum'``: its sum;
            ``'mean'``: the sum divided by the batch size ``N``, which is the official
            normalisation (the paper's equations omit it).

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Reference:
        Zhendong Yang, Zhe Li, Xiaohu Jiang, Yuan Gong, Zehuan Yuan, Danpei Zhao, Chun Yuan.
        "Focal and Global Knowledge Distillation for Detectors". CVPR 2022. arXiv:2111.11837.
        Official code: yzd-v/FGD, ``mmdet/distillation/losses/fgd.py::FeatureLoss``, matched at
        commit c03a6cf (identical loss code since the mask-axis fix c22b81d).

    Example:
        >>> import torch
        >>> from kdimpl.adapters.fgd import FGDGlobalContext
        >>> s, t = torch.randn(2, 8, 10, 14), torch.randn(2, 8, 10, 14)
        >>> boxes = [torch.tensor([[10.0, 20.0, 60.0, 50.0]]), torch.zeros(0, 4)]
        >>> loss = fgd_loss(s, t, boxes, (80, 112), global_student=FGDGlobalContext(8),
        ...                 global_teacher=FGDGlobalContext(8))
        >>> loss.shape
        torch.Size([])

    Notes:
        Sums grow with ``C H W``; the authors suggest dividing a level's loss by ``H W`` when
        levels of very different size are mixed (yzd-v/FGD#72). Versions of the official code
        before commit c22b81d transposed the mask (``[x-range, y-range]``); this follows the fix.
    """
    check_feature_pair(student, teacher)
    check_positive(temperature, "temperature")
    check_reduction(reduction)
    if not _tracing() and (global_student is None) != (global_teacher is None):
        raise ValueError("pass both global_student and global_teacher (FGDGlobalContext blocks) or neither")
    n, _, h, w = student.shape
    if masks is None:
        check_boxes(gt_boxes, n)
        masks = fgd_masks(gt_boxes, image_size, (h, w))
    elif not _tracing() and any(m.shape != (n, h, w) for m in masks):
        raise ValueError(
            f"masks must be (fg, bg) of shape {(n, h, w)} for this level, got {[tuple(m.shape) for m in masks]}"
        )
    s = upcast(student)
    t = upcast(teacher.detach())
    fg, bg = (m.to(s) for m in masks)

    spatial_t, channel_t = spatial_attention(t, temperature), channel_attention(t, temperature)
    spatial_s, channel_s = spatial_attention(s, temperature), channel_attention(s, temperature)
    # Channel-weighted squared error per position, then the teacher's spatial attention.
    error = torch.einsum("nchw,nc->nhw", (s - t).square(), channel_t) * spatial_t
    per_image = alpha * (error * fg).sum(dim=(1, 2)) + beta * (error * bg).sum(dim=(1, 2))
    attention = (spatial_s - spatial_t).abs().sum(dim=(1, 2)) + (channel_s - channel_t).abs().sum(dim=1)
    per_image = per_image + gamma * attention
    if global_student is not None and global_teacher is not None:
        relation = (global_student(s) - global_teacher(t)).square().sum(dim=(1, 2, 3))
        per_image = per_image + lambda_ * relation
    return reduce_loss(per_image, reduction).to(student.dtype)


@register_loss("fgd", function=fgd_loss)
class FGDLoss(nn.Module):
    """Module twin of :func:`fgd_loss`; ``loss_weight`` multiplies the result.

    The global-context blocks are not owned by the loss: build two
    :class:`kdimpl.FGDGlobalContext` (student, teacher) per level, add them to the optimiser and
    pass them to ``forward``.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        alpha: float = 1e-3,
        beta: float = 5e-4,
        gamma: float = 1e-3,
        lambda_: float = 5e-6,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        check_reduction(reduction)
        self.temperature = temperature
        self.alpha, self.beta, self.gamma, self.lambda_ = alpha, beta, gamma, lambda_
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        gt_boxes: Sequence[Tensor] | Tensor | None,
        image_size: Sequence[int] | Tensor | None,
        *,
        masks: tuple[Tensor, Tensor] | None = None,
        global_student: nn.Module | None = None,
        global_teacher: nn.Module | None = None,
    ) -> Tensor:
        return self.loss_weight * fgd_loss(
            student,
            teacher,
            gt_boxes,
            image_size,
            masks=masks,
            global_student=global_student,
            global_teacher=global_teacher,
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            lambda_=self.lambda_,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
            f"lambda_={self.lambda_}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
        )
