"""Dual relation knowledge distillation (DRKD), Ni et al., IJCAI 2023."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from .._checks import check_boxes, check_feature_pair, check_reduction
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..masks import _image_hw, pad_boxes

__all__ = ["roi_align_padded", "drkd_pixel_loss", "DRKDPixelLoss", "drkd_instance_loss", "DRKDInstanceLoss"]

Module = Callable[..., Tensor] | nn.Module | None

_REFERENCE = """
    Reference:
        Zhen-Liang Ni, Fukui Yang, Shengzhao Wen, Gang Zhang. "Dual Relation Knowledge Distillation for
        Object Detection". IJCAI 2023, pp. 1276-1284. arXiv:2302.05637.
        Official code (partial): nizhenliang/Dual-Relation-Knowledge-Distillation@78ea05b,
        ``mmdet/models/detectors/two_stage.py`` (``TwoStageDetector.forward_train``, the KD block).
"""


def roi_align_padded(
    features: Tensor,
    boxes: Tensor,
    image_size: Sequence[int] | Tensor,
    output_size: int = 3,
    *,
    sampling_ratio: int = -1,
    max_sampling_ratio: int = 8,
) -> Tensor:
    r"""RoIAlign (He et al., Mask R-CNN) of padded per-image boxes, vectorised over images and boxes.

    Follows ``torchvision.ops.roi_align(..., aligned=False)``: a box is scaled to the map, its size is
    clamped to at least one cell, split into ``output_size x output_size`` bins and each bin averages
    ``s_h x s_w`` bilinear samples (samples beyond one cell outside the map count as zero).

    Args:
        features: ``(N, C, H, W)`` feature map.
        boxes: ``(N, M, 4)`` xyxy boxes in input-image pixels (padding rows are computed and ignored
            by the caller).
        image_size: ``(height, width)`` or ``(N, 2)``; the box scale is ``W / width`` along x and
            ``H / height`` along y.
        output_size: bins per side.
        sampling_ratio: samples per bin and axis; ``<= 0`` picks ``ceil(box size / output_size)`` per
            box like torchvision, capped at ``max_sampling_ratio``.
        max_sampling_ratio: the cap of the adaptive count (fixed so the shape does not depend on data).

    Returns:
        ``(N, M, C, output_size, output_size)`` pooled features in ``features``' dtype.

    Notes:
        Adaptive sampling equals torchvision's exactly while ``ceil(box size in cells / output_size)``
        stays within ``max_sampling_ratio`` (boxes up to 24 cells with the defaults); larger boxes
        average an evenly spread ``8 x 8`` grid per bin instead of a denser one.
    """
    n, c, height, width = features.shape
    m = boxes.shape[1]
    k = output_size
    img_h, img_w = _image_hw(image_size, n, boxes)
    scale = torch.cat([width / img_w, height / img_h], dim=1)[:, None, :]  # (N, 1, 2) as (x, y)
    start = boxes[..., :2] * scale  # (N, M, 2)
    size = (boxes[..., 2:] * scale - start).clamp(min=1.0)
    bin_size = size / k
    if sampling_ratio > 0:
        samples = sampling_ratio
        count = torch.full_like(size, float(sampling_ratio))
    else:
        samples = max_sampling_ratio
        count = torch.ceil(bin_size).clamp(1.0, float(max_sampling_ratio))
    steps = torch.arange(samples, device=boxes.device, dtype=boxes.dtype)
    bins = torch.arange(k, device=boxes.device, dtype=boxes.dtype)
    # Sample coordinates (N, M, k, S, 2): bin start + (i + 0.5) * bin / count, for i < count.
    offset = (steps[:, None] + 0.5) / count[:, :, None, None, :]  # (N, M, 1, S, 2)
    coords = start[:, :, None, None, :] + (bins[:, None, None] + offset) * bin_size[:, :, None, None, :]
    used = (steps[:, None] < count[:, :, None, None, :]).to(features.dtype)  # (N, M, 1, S, 2)
    limit = torch.tensor([width, height], device=boxes.device, dtype=boxes.dtype)
    inside = ((coords >= -1) & (coords <= limit)).to(features.dtype)
    weight = used * inside / count[:, :, None, None, :]  # (N, M, k, S, 2)

    # grid_sample(align_corners=False, padding_mode="border") clamps to [0, size - 1] like RoIAlign.
    norm = (2 * coords + 1) / limit - 1
    gx = norm[..., 0].reshape(n, m, 1, k * samples, 1).expand(n, m, k * samples, k * samples, 1)
    gy = norm[..., 1].reshape(n, m, k * samples, 1, 1).expand(n, m, k * samples, k * samples, 1)
    grid = torch.cat([gx, gy], dim=-1).reshape(n, m * k * samples, k * samples, 2)
    grid = grid.to(features.dtype)
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.reshape(n, c, m, k, samples, k, samples)
    wx = weight[..., 0].reshape(n, 1, m, 1, 1, k, samples)
    wy = weight[..., 1].reshape(n, 1, m, k, samples, 1, 1)
    pooled = (sampled * wy * wx).sum(dim=(4, 6))  # (N, C, M, k, k)
    return pooled.permute(0, 2, 1, 3, 4)


def _apply(module: Module, x: Tensor) -> Tensor:
    return x if module is None else module(x)


def _norms(diff: Tensor, per_image: bool) -> Tensor:
    """Frobenius norms of ``diff``: ``(N,)`` per image or ``(1,)`` over everything."""
    if per_image:
        return torch.linalg.vector_norm(diff.flatten(1), dim=1)
    return torch.linalg.vector_norm(diff).reshape(1)


class _DifferenceNorms(torch.autograd.Function):
    """Norms of ``s - t`` (see :func:`_norms`) with an analytic gradient, for eager mode.

    The gradient of ``||d||`` is ``d / ||d||`` (0 at a zero norm), computed in autograd's order so the
    numbers are the same and scaled in place; ``t``'s gradient is its negation. Autograd's chain makes one
    full-size pass (masking the division) and one allocation more.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, per_image: bool) -> Tensor:
        diff = s - t
        norms = _norms(diff, per_image)
        ctx.save_for_backward(diff, norms)
        ctx.per_image = per_image
        return norms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_norms: Tensor):
        diff, norms = ctx.saved_tensors
        shape = (-1,) + (1,) * (diff.dim() - 1) if ctx.per_image else ()
        zero = norms == 0
        divisor = torch.where(zero, torch.ones_like(norms), norms).reshape(shape)
        factor = torch.where(zero, torch.zeros_like(grad_norms), grad_norms).reshape(shape)
        grad = torch.div(diff, divisor).mul_(factor)
        grad_s = grad if ctx.needs_input_grad[0] else None
        grad_t = torch.neg(grad) if ctx.needs_input_grad[1] else None
        return grad_s, grad_t, None


def drkd_pixel_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    student_glore: Module = None,
    teacher_glore: Module = None,
    adaptation: Module = None,
    per_image: bool = False,
    detach_teacher: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""DRKD pixel-wise relation distillation: match graph-reasoned (GloRe) features of one level.

    Both feature maps go through their own GloRe unit (:class:`kdimpl.adapters.GloReUnit`), the student's
    through a 1x1 adaptation, and the loss is the Frobenius norm (not squared) of the difference:

    .. math::
        \mathcal{L}_{pixel} = \big\| \varphi\big(\mathcal{G}_S(F^S)\big) - \mathcal{G}_T(F^T) \big\|_F

    The official code sums this over the five FPN levels and weights the sum by ``1e-3``
    (written ``4e-3 * 0.25``).

    Args:
        student: student feature map.
        teacher: teacher feature map (detached inside; gradients still reach ``teacher_glore``'s
            parameters, which the official code trains).
        student_glore: the student's GloRe unit, or ``None`` for identity.
        teacher_glore: the teacher's GloRe unit, or ``None`` for identity.
        adaptation: module applied to the student's GloRe output (official: ``Conv2d(C, C, 1)``), or ``None``.
        per_image: one norm per image instead of one norm over the whole batch (the official choice,
            which makes the loss grow with the batch size).
        detach_teacher: detach ``teacher`` before ``teacher_glore`` (default). Pass ``False`` when
            ``student`` and ``teacher`` are relation features computed outside the loss (both units
            ``None``, ``teacher`` being e.g. ``unit(teacher_features.detach())``), so that the
            gradient reaches that unit's parameters.
        reduction: ``'none'``: the norms, shape ``(1,)`` (or ``(N,)`` with ``per_image``); ``'sum'``: their
            sum, which is the official value; ``'mean'``: their mean (the same as ``'sum'`` without
            ``per_image``; the mean over images with it).

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(1,)` / :math:`(N,)` with ``reduction='none'``
{reference}
    Example:
        >>> import torch
        >>> from kdimpl.adapters.drkd import GloReUnit
        >>> s, t = torch.randn(2, 16, 6, 10), torch.randn(2, 16, 6, 10)
        >>> loss = drkd_pixel_loss(s, t, student_glore=GloReUnit(16, 4), teacher_glore=GloReUnit(16, 4),
        ...                        adaptation=torch.nn.Conv2d(16, 16, 1))
        >>> loss.shape
        torch.Size([])

    Notes:
        Every call of the official code also writes heat-map images of level 0 to disk; not replicated.
        In eager mode the norm has an analytic gradient (the same numbers as autograd's, with one
        full-size pass and one allocation fewer). Under ``torch.compile`` the difference is
        checkpointed, so inductor fuses the loss into one reading pass forward and one pass backward
        instead of writing a full-size tensor for backward. On CPU the compiled value can differ from
        the eager one (which equals the official one) by about 1e-3 relative on a P2-sized level:
        inductor sums the squares by cascade summation, PyTorch's eager float32 norm less accurately.
    """
    check_feature_pair(student, teacher)
    check_reduction(reduction)
    s = _apply(adaptation, _apply(student_glore, upcast(student)))
    t = _apply(teacher_glore, upcast(teacher.detach() if detach_teacher else teacher))
    if torch.compiler.is_compiling():
        # Recomputing the difference in backward (instead of saving it) leaves one fused reading pass
        # forward and one pass backward that reads both inputs and writes both gradients.
        norms = _norms(checkpoint(torch.sub, s, t, use_reentrant=False), per_image)
    else:
        norms = _DifferenceNorms.apply(s, t, per_image)
    return reduce_loss(norms, reduction).to(student.dtype)


drkd_pixel_loss.__doc__ = drkd_pixel_loss.__doc__.replace("{reference}", _REFERENCE)


@register_loss("drkd_pixel", function=drkd_pixel_loss)
class DRKDPixelLoss(nn.Module):
    """Module twin of :func:`drkd_pixel_loss`; ``loss_weight`` multiplies the result (official: 1e-3)."""

    def __init__(
        self, *, per_image: bool = False, detach_teacher: bool = True, reduction: str = "mean", loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.per_image = per_image
        self.detach_teacher = detach_teacher
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        *,
        student_glore: Module = None,
        teacher_glore: Module = None,
        adaptation: Module = None,
    ) -> Tensor:
        return self.loss_weight * drkd_pixel_loss(
            student,
            teacher,
            student_glore=student_glore,
            teacher_glore=teacher_glore,
            adaptation=adaptation,
            per_image=self.per_image,
            detach_teacher=self.detach_teacher,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"per_image={self.per_image}, detach_teacher={self.detach_teacher}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}"
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
    student_relation: Module = None,
    teacher_relation: Module = None,
    adaptation: Module = None,
    feature_adaptation: Module = None,
    feature_weight: float = 0.6,
    output_size: int = 3,
    sampling_ratio: int = -1,
    max_sampling_ratio: int = 8,
    reduction: str = "mean",
) -> Tensor:
    r"""DRKD instance-wise relation distillation on one level, with the instance-feature term.

    The ground-truth boxes of each image are RoI-aligned on both maps (:func:`roi_align_padded`,
    ``3 x 3``), flattened to instance features :math:`X \in \mathbb{R}^{G \times C k^2}` and passed
    through each side's relation module (:class:`kdimpl.adapters.InstanceRelation`). Per image:

    .. math::
        \mathcal{L}_{ins} = \big\| \varphi\big(\mathcal{R}_S(X^S)\big) - \mathcal{R}_T(X^T) \big\|_F
            + \lambda_f \big\| \psi(X^S) - X^T \big\|_F

    with :math:`\varphi, \psi` 1x1 convolutions on the ``(C, k, k)`` RoI features. The official code
    sums over images and the levels P2, P3 and weights the first norm by ``0.004`` and the second by
    ``0.0024`` (``0.008 * 0.3``), i.e. ``loss_weight=0.004, feature_weight=0.6, reduction='sum'``.

    Args:
        student: student feature map.
        teacher: teacher feature map (detached inside; ``teacher_relation``'s parameters still get
            gradients, as in the official code).
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in input-image pixels, or padded ``(N, M, 4)``.
        image_size: ``(height, width)`` of the input (padded) image, or ``(N, 2)``. The official code
            uses the scale ``W_l / (4 W_{P2})`` on both axes, which equals ``W / width`` for a padded
            input of ``4 H_{P2} x 4 W_{P2}``.
        student_relation, teacher_relation: modules mapping ``(N, M, D)`` features and the ``(N, M)``
            validity mask to ``(N, M, D)`` (:class:`kdimpl.adapters.InstanceRelation`), or ``None``.
        adaptation: module on the student's relation output as ``(B, C, k, k)`` (official: ``Conv2d(C, C, 1)``).
        feature_adaptation: module on the student's RoI features as ``(B, C, k, k)``.
        feature_weight: :math:`\lambda_f`, weight of the instance-feature term (default 0.6: official ratio).
        output_size, sampling_ratio, max_sampling_ratio: see :func:`roi_align_padded`
            (official: 3, adaptive).
        reduction: ``'none'``: per-image losses ``(N,)``; ``'sum'``: their sum (official);
            ``'mean'``: their mean over images (images without boxes count as zero).

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``
{reference}
    Example:
        >>> import torch
        >>> from kdimpl.adapters.drkd import InstanceRelation
        >>> s, t = torch.randn(2, 4, 12, 20), torch.randn(2, 4, 12, 20)
        >>> boxes = [torch.tensor([[8.0, 4.0, 60.0, 40.0], [30.0, 10.0, 90.0, 30.0]]), torch.zeros(0, 4)]
        >>> drkd_instance_loss(s, t, boxes, (48, 80), student_relation=InstanceRelation(36),
        ...                    teacher_relation=InstanceRelation(36), reduction="none").shape
        torch.Size([2])

    Notes:
        Instead of the official per-image loop over ``torchvision.ops.roi_align`` the boxes are pooled
        for all images at once from padded tensors; padding never enters a softmax or a norm. The
        official ``InstanceRelation`` draws its relation filter at random on every call; the default
        here is a learnable filter (``relation_filter="random"`` reproduces the official behaviour).
        The official loop passes the whole batch to ``roi_align`` with a one-image box list, so every
        image's boxes are pooled from the *first* image's maps; here each image uses its own maps
        (the parity test reproduces the official numbers by feeding image 0 in every batch slot).
    """
    check_feature_pair(student, teacher)
    check_reduction(reduction)
    boxes, valid = pad_boxes(gt_boxes)
    check_boxes(boxes, student.shape[0])
    n, c = student.shape[:2]
    m, k = boxes.shape[1], output_size
    s = upcast(student)
    boxes = boxes.to(s.dtype)
    pool = dict(sampling_ratio=sampling_ratio, max_sampling_ratio=max_sampling_ratio)
    x_s = roi_align_padded(s, boxes, image_size, k, **pool)  # (N, M, C, k, k)
    x_t = roi_align_padded(upcast(teacher.detach()), boxes, image_size, k, **pool)

    def relate(module: Module, x: Tensor) -> Tensor:
        return x if module is None else module(x.reshape(n, m, c * k * k), valid).reshape(n, m, c, k, k)

    def adapt(module: Module, x: Tensor) -> Tensor:
        return x if module is None else module(x.reshape(n * m, c, k, k)).reshape(n, m, c, k, k)

    z_s = adapt(adaptation, relate(student_relation, x_s))
    z_t = relate(teacher_relation, x_t)
    relation = _masked_norms(z_s - z_t, valid)
    feature = _masked_norms(adapt(feature_adaptation, x_s) - x_t, valid)
    return reduce_loss(relation + feature_weight * feature, reduction).to(student.dtype)


drkd_instance_loss.__doc__ = drkd_instance_loss.__doc__.replace("{reference}", _REFERENCE)


@register_loss("drkd_instance", function=drkd_instance_loss)
class DRKDInstanceLoss(nn.Module):
    """Module twin of :func:`drkd_instance_loss`; ``loss_weight`` multiplies the result (official: 0.004)."""

    def __init__(
        self,
        *,
        feature_weight: float = 0.6,
        output_size: int = 3,
        sampling_ratio: int = -1,
        max_sampling_ratio: int = 8,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        if max_sampling_ratio < 1:
            raise ValueError(f"max_sampling_ratio must be >= 1, got {max_sampling_ratio}")
        self.feature_weight = feature_weight
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.max_sampling_ratio = max_sampling_ratio
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        gt_boxes: Sequence[Tensor] | Tensor,
        image_size: Sequence[int] | Tensor,
        *,
        student_relation: Module = None,
        teacher_relation: Module = None,
        adaptation: Module = None,
        feature_adaptation: Module = None,
    ) -> Tensor:
        return self.loss_weight * drkd_instance_loss(
            student,
            teacher,
            gt_boxes,
            image_size,
            student_relation=student_relation,
            teacher_relation=teacher_relation,
            adaptation=adaptation,
            feature_adaptation=feature_adaptation,
            feature_weight=self.feature_weight,
            output_size=self.output_size,
            sampling_ratio=self.sampling_ratio,
            max_sampling_ratio=self.max_sampling_ratio,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"feature_weight={self.feature_weight}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
        )
