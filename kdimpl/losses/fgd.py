"""Focal and global distillation (FGD), Yang et al., CVPR 2022."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._base import LossModule
from .._checks import check_boxes, check_feature_pair, check_image_size, check_modules, check_options
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..adapters.fgd import FGDGlobalContext
from ..attention import channel_attention, spatial_attention
from ..masks import max_cover, pad_boxes, scale_boxes_to_feature

__all__ = ["fgd_cell_bounds", "fgd_masks"]


def fgd_cell_bounds(boxes: Tensor, image_size: Sequence[int] | Tensor, feature_size: Sequence[int]) -> Tensor:
    """Unclamped inclusive cell bounds ``(x0, y0, x1, y1)`` of ``(N, M, 4)`` pixel boxes, as FGD computes them.

    Coordinates are scaled as ``x / image_width * W`` (this order of operations, so that a box
    edge on the image border lands exactly on ``W``), then ``x0 = floor``, ``x1 = ceil``. Unlike
    :func:`kdimpl.masks.box_cell_bounds` the bounds are not clamped: the official code slices
    (which clips) but counts the area ``(y1 - y0 + 1)(x1 - x0 + 1)`` from the unclipped bounds,
    so a box touching the right/bottom border counts one cell more than it covers.
    """
    scaled = scale_boxes_to_feature(boxes, image_size, feature_size)
    return torch.cat([scaled[..., :2].floor(), scaled[..., 2:].ceil()], dim=-1)


def fgd_masks(
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    feature_size: Sequence[int],
    gt_mask: Tensor | None = None,
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
        image_size: ``(height, width)`` of the input tensor the boxes refer to, or an ``(N, 2)`` tensor.
        feature_size: ``(H, W)`` of the feature map.
        gt_mask: optional ``(N, M)`` bool mask of the real boxes of a padded tensor.

    Example:
        >>> import torch
        >>> fg, bg = fgd_masks([torch.tensor([[10.0, 20.0, 60.0, 50.0]]), torch.zeros(0, 4)], (80, 112), (10, 14))
        >>> fg.shape, round(float(bg[1].sum()), 6)
        (torch.Size([2, 10, 14]), 1.0)

    Notes:
        Boxes are rasterised with :func:`fgd_cell_bounds` (see there for the area quirk) by
        :func:`kdimpl.masks.max_cover`. One deliberate departure from the official per-box
        slicing, only for boxes reaching outside the image: a negative start index is clipped
        to 0 (the official slice wraps around to the far end of the map).
    """
    boxes, valid = pad_boxes(gt_boxes, gt_mask)
    boxes = upcast(boxes) if boxes.is_floating_point() else boxes.float()
    bounds = fgd_cell_bounds(boxes, image_size, feature_size)
    x0, y0, x1, y1 = bounds.unbind(dim=-1)
    # 1 / rows / cols in this order (not 1 / area) reproduces the official float32 values bit for bit.
    weight = 1.0 / (y1 - y0 + 1) / (x1 - x0 + 1)
    fg = max_cover(bounds, valid, weight, feature_size)
    background = (fg == 0).to(fg.dtype)
    bg = background / background.sum(dim=(1, 2), keepdim=True).clamp(min=1)
    return fg, bg


def fgd_loss(
    student: Tensor,
    teacher: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    gt_mask: Tensor | None = None,
    global_student: nn.Module | None = None,
    global_teacher: nn.Module | None = None,
    temperature: float = 0.5,
    fg_weight: float = 1e-3,
    bg_weight: float = 5e-4,
    attention_weight: float = 1e-3,
    global_weight: float = 5e-6,
    reduction: str = "mean",
) -> Tensor:
    r"""Focal and global distillation loss for one feature level (Eq. 6, 7, 9, 10).

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
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in pixels of the input tensor (or a padded
            ``(N, M, 4)`` tensor, every row a box); mapped to this level by ``image_size`` and the
            feature map's size.
        image_size: ``(height, width)`` of the input tensor, or an ``(N, 2)`` tensor. The official
            code passes mmdet's unpadded ``img_shape`` while the feature map covers the padded
            batch: pass ``img_shape`` for parity with it, the padded size for exact geometry.
        gt_mask: ``(N, M)`` bool, the real rows of a padded ``gt_boxes`` tensor (default: all).
            Boxes padded to a fixed capacity (:func:`kdimpl.masks.pad_boxes`) keep
            ``torch.compile`` to one graph as box counts change.
        global_student: the student's global-context block :math:`\mathcal{R}_S`; ``None`` with
            ``global_teacher=None`` drops the global term.
        global_teacher: the teacher's block :math:`\mathcal{R}_T` (applied to the detached
            teacher, so its parameters still train, as in the official code).
        temperature: ``T`` of the attentions (0.5 in most configs, 0.8 for FCOS). Default 0.5.
        fg_weight: :math:`\alpha` in Eq. 6, the foreground feature term. Default 1e-3.
        bg_weight: :math:`\beta` in Eq. 6, the background feature term. Default 5e-4.
        attention_weight: :math:`\gamma` in Eq. 7, the attention term. Default 1e-3; the shipped
            RetinaNet configs use 5e-4.
        global_weight: :math:`\lambda` in Eq. 9, the global term. Default 5e-6. (The defaults are
            the official class defaults; the Faster R-CNN configs use 5e-5, 2.5e-5, 5e-5, 5e-7.)
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the per-image
            losses (sums over channels and cells) divided by the batch size ``N``, as the official
            code does (the paper's equations are per image); ``'sum'`` sums them; ``'none'``
            returns the ``(N,)`` per-image losses, whose ``.mean()`` is ``'mean'``. The terms are
            weighted sums of different sizes, so there is no plain element mean.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zhendong Yang, Zhe Li, Xiaohu Jiang, Yuan Gong, Zehuan Yuan, Danpei Zhao, Chun Yuan.
        "Focal and Global Knowledge Distillation for Detectors". CVPR 2022. arXiv:2111.11837.
        Official code: yzd-v/FGD, ``mmdet/distillation/losses/fgd.py::FeatureLoss``, matched at
        commit c03a6cf (identical loss code since the mask-axis fix c22b81d).

    Example:
        >>> import torch
        >>> from kdimpl import FGDGlobalContext, MultiLevelLoss
        >>> s, t = torch.randn(2, 8, 10, 14), torch.randn(2, 8, 10, 14)
        >>> boxes = [torch.tensor([[10.0, 20.0, 60.0, 50.0]]), torch.zeros(0, 4)]
        >>> loss = fgd_loss(s, t, boxes, (80, 112), global_student=FGDGlobalContext(8),
        ...                 global_teacher=FGDGlobalContext(8))
        >>> loss.shape
        torch.Size([])
        >>> # three FPN levels, each with its own global-context blocks; boxes given once
        >>> criterion = MultiLevelLoss([FGDLoss(channels=8) for _ in range(3)])
        >>> students = [torch.randn(2, 8, 10 // 2**l, 14 // 2**l) for l in range(3)]
        >>> criterion(students, [x + 0.1 for x in students], gt_boxes=boxes, image_size=(80, 112)).shape
        torch.Size([])

    Notes:
        Sums grow with ``C H W``; the authors suggest dividing a level's loss by ``H W`` when
        levels of very different size are mixed (yzd-v/FGD#72). Versions of the official code
        before commit c22b81d transposed the mask (``[x-range, y-range]``); this follows the fix.
    """
    check_feature_pair(student, teacher)
    check_options(
        temperature=temperature,
        fg_weight=fg_weight,
        bg_weight=bg_weight,
        attention_weight=attention_weight,
        global_weight=global_weight,
        reduction=reduction,
    )
    check_modules(all_or_none=True, global_student=global_student, global_teacher=global_teacher)
    n, _, h, w = student.shape
    check_boxes(gt_boxes, n, mask=gt_mask)
    check_image_size(image_size, n, student)
    s = upcast(student)
    t = upcast(teacher.detach())
    fg, bg = (mask.to(s) for mask in fgd_masks(gt_boxes, image_size, (h, w), gt_mask))

    spatial_t, channel_t = spatial_attention(t, temperature), channel_attention(t, temperature)
    spatial_s, channel_s = spatial_attention(s, temperature), channel_attention(s, temperature)
    # sum_k A^C_k (F^T - F^S)^2 per cell, then the teacher's spatial attention
    error = torch.einsum("nchw,nc->nhw", (s - t).square(), channel_t) * spatial_t
    feature = fg_weight * (error * fg).sum(dim=(1, 2)) + bg_weight * (error * bg).sum(dim=(1, 2))
    attention = (spatial_s - spatial_t).abs().sum(dim=(1, 2)) + (channel_s - channel_t).abs().sum(dim=1)
    per_image = feature + attention_weight * attention
    if global_student is not None and global_teacher is not None:
        relation = (global_student(s) - global_teacher(t)).square().sum(dim=(1, 2, 3))
        per_image = per_image + global_weight * relation
    return reduce_loss(per_image, reduction).to(student.dtype)


@register_loss("fgd", function=fgd_loss)
class FGDLoss(LossModule):
    """Module twin of :func:`fgd_loss`; ``loss_weight`` multiplies the result.

    Args:
        channels: the teacher's channel count ``C``. Given, the loss owns its two global-context
            blocks (``global_student``, ``global_teacher``: :class:`kdimpl.FGDGlobalContext`), so the
            optimiser and ``DistributedDataParallel`` see them through the loss; ``None`` (default)
            drops the global term unless blocks are passed to ``forward``.
    """

    def __init__(
        self,
        *,
        channels: int | None = None,
        temperature: float = 0.5,
        fg_weight: float = 1e-3,
        bg_weight: float = 5e-4,
        attention_weight: float = 1e-3,
        global_weight: float = 5e-6,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        blocks = {}
        if channels is not None:
            blocks = {"global_student": FGDGlobalContext(channels), "global_teacher": FGDGlobalContext(channels)}
        super().__init__(
            **blocks,
            temperature=temperature,
            fg_weight=fg_weight,
            bg_weight=bg_weight,
            attention_weight=attention_weight,
            global_weight=global_weight,
            reduction=reduction,
            loss_weight=loss_weight,
        )
