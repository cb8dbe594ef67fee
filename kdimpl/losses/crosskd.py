"""Cross-head knowledge distillation (CrossKD), Wang et al., CVPR 2024."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .._base import LossModule
from .._checks import _tracing, check_options, check_same_shape, check_shape
from .._dtypes import upcast
from .._registry import register_loss
from ..distributed import reduce_normaliser
from ..ops import aligned_box_iou
from .bckd import _reduce as bckd_reduce
from .bckd import bckd_cls_loss

__all__ = ["crosskd_align_scale", "crosskd_cross_head", "crosskd_region_weights"]


def crosskd_cross_head(head_teacher: nn.Module, *inputs: Any, **kwargs: Any) -> Any:
    """Run the frozen teacher head (or its last layers) on student head features.

    The teacher's parameters and buffers enter the computation detached, so no gradient reaches
    them, whatever their ``requires_grad``; the gradient flows through the teacher's layers into
    the student features (and from there into the student's earlier layers).

    Args:
        head_teacher: the part of the teacher's head to reuse, e.g. its last tower block(s) followed
            by its prediction convolution, per branch (classification and box towers separately).
        *inputs: its inputs, typically the student's tower features of one FPN level at the same
            depth (after :func:`crosskd_align_scale` and the activation).
        **kwargs: keyword inputs of ``head_teacher``.

    Returns:
        What ``head_teacher`` returns: the cross-head predictions.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 80, 3, padding=1))
        >>> feat = torch.randn(2, 8, 10, 12, requires_grad=True)
        >>> crosskd_cross_head(head, feat).sum().backward()
        >>> head[0].weight.grad is None, feat.grad is not None
        (True, True)

    Notes:
        Keep the teacher in ``eval()`` mode: a BatchNorm layer in training mode would update the
        teacher's running statistics with the student's features.
    """
    frozen = {name: t.detach() for name, t in itertools.chain(head_teacher.named_parameters(),
                                                              head_teacher.named_buffers())}
    return functional_call(head_teacher, frozen, inputs, kwargs)


def crosskd_align_scale(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Give the student's head features the teacher's per-channel mean and standard deviation.

    .. math::
        \tilde F^S_c = \frac{F^S_c - \mu(F^S_c)}{\sigma(F^S_c) + \epsilon}\,\sigma(F^T_c) + \mu(F^T_c)

    with mean and unbiased standard deviation over the batch and positions :math:`(N, H, W)` of
    channel :math:`c`; the teacher's statistics are taken without gradient.

    Args:
        student: student tower features ``(N, C, H, W)`` of one level, before the activation.
        teacher: teacher tower features at the same depth, same shape.
        eps: :math:`\epsilon` (official 1e-6).

    Returns:
        ``(N, C, H, W)`` aligned student features.

    Notes:
        This step is in the official code (``CrossKDSingleStageDetector.align_scale``), not in the
        paper's equations. The statistics cover the whole batch, so one image's result depends on
        the others.
    """
    check_shape(student, "student", "N C H W")
    check_shape(teacher, "teacher", "N C H W")
    check_same_shape(student, teacher, ("student", "teacher"))
    dims = (0, 2, 3)
    t = teacher.detach()
    standardised = (student - student.mean(dims, keepdim=True)) / (student.std(dims, keepdim=True) + eps)
    return standardised * t.std(dims, keepdim=True) + t.mean(dims, keepdim=True)


def crosskd_region_weights(teacher_logits: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    r"""CrossKD's box-distillation region weights :math:`\rho_i = \sigma(\max_c z^T_{ic})`, 0 where invalid.

    Args:
        teacher_logits: ``(N, K, H, W)`` teacher class logits of one level.
        valid_mask: ``(N, H, W)`` anchor weights; anchors where it is 0 get :math:`\rho = 0`.

    Returns:
        ``(N, H, W)`` weights, without gradient.
    """
    with torch.no_grad():
        rho = upcast(teacher_logits).amax(dim=1).sigmoid()
        if valid_mask is not None:
            rho = torch.where(valid_mask != 0, rho, torch.zeros_like(rho))
    return rho


def crosskd_cls_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    valid_mask: Tensor | None = None,
    num_positives: float | Tensor | None = None,
    *,
    beta: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""CrossKD's classification distillation between cross-head and teacher class logits (one FPN level).

    The student's head features run through the teacher's last head layers
    (:func:`crosskd_cross_head`) give the cross-head logits :math:`\hat z^S`; they learn the
    teacher's :math:`z^T` with the quality-focal-style binary distillation

    .. math::
        L_{cls} = \frac{1}{N_{pos}} \sum_i w_i \sum_{c=1}^{K}
            \mathrm{BCE}\big(\sigma(\hat z^S_{ic}), \sigma(z^T_{ic})\big)\,
            \big|\sigma(\hat z^S_{ic}) - \sigma(z^T_{ic})\big|^{\beta}

    Args:
        student_logits: cross-head class logits :math:`\hat z^S` (the gradient flows back through
            the teacher's layers into the student's features).
        teacher_logits: the teacher's own class logits :math:`z^T` (detached inside).
        valid_mask: :math:`w_i`, ``(N, H, W)`` anchor weights (official: the student's label
            weights); ``None``: all 1.
        num_positives: :math:`N_{pos}`, positive anchors over all levels and images (averaged over
            GPUs in the official code), clamped to at least 1; required with ``reduction='mean'``.
        beta: :math:`\beta` (official 1).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the weighted sum
            divided by :math:`N_{pos}` (plus ``finfo(float32).eps``); use ``reduction='none'`` and
            ``.mean()`` for the plain element mean; ``'sum'``: the weighted sum; ``'none'``: the
            ``(N, K, H, W)`` weighted terms.

    Shape:
        - student_logits, teacher_logits: :math:`(N, K, H, W)`; valid_mask: :math:`(N, H, W)`
        - output: scalar, or :math:`(N, K, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Jiabao Wang, Yuming Chen, Zhaohui Zheng, Xiang Li, Ming-Ming Cheng, Qibin Hou.
        "CrossKD: Cross-Head Knowledge Distillation for Object Detection". CVPR 2024. arXiv:2306.11369.
        Official code: jbwang1997/CrossKD@87e156a (``KDQualityFocalLoss``, called from
        ``CrossKDGFL.pred_mimicking_loss_single``); reference numbers only.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 80, 10, 12), torch.randn(2, 80, 10, 12)
        >>> crosskd_cls_loss(s, t, num_positives=12).shape
        torch.Size([])

    Notes:
        The same function as :func:`kdimpl.bckd_cls_loss` applied to the cross-head logits. The
        official configurations weight it by 1.0 (GFL, RetinaNet, ATSS) or 0.4 (FCOS).

        Under ``DistributedDataParallel`` this sum over the batch gets ``1 / world_size`` of the union
        batch's gradients (DDP averages); multiply ``loss_weight`` by the world size to train as one process
        would (:mod:`kdimpl.distributed`, behaviour ``'sum'``).
    """
    return bckd_cls_loss(student_logits, teacher_logits, valid_mask, num_positives, beta=beta, reduction=reduction)


@register_loss("crosskd_cls", function=crosskd_cls_loss, distributed="sum")
class CrossKDClsLoss(LossModule):
    """Module twin of :func:`crosskd_cls_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, beta: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(beta=beta, reduction=reduction, loss_weight=loss_weight)


def crosskd_box_loss(
    student_box_logits: Tensor,
    teacher_box_logits: Tensor,
    teacher_logits: Tensor,
    valid_mask: Tensor | None = None,
    region_weight_sum: float | Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""CrossKD's box distillation for GFL heads: distribution KL between cross-head and teacher (one level).

    .. math::
        L_{box} = \frac{1}{4 \sum_i \rho_i} \sum_i \rho_i \sum_{s=1}^{4}
            T^2\,\mathrm{KL}\big(\operatorname{softmax}(d^T_{is} / T) \,\|\,
            \operatorname{softmax}(\hat d^S_{is} / T)\big),
        \qquad \rho_i = \sigma\big(\max_c z^T_{ic}\big)\,[w_i \neq 0]

    with :math:`\hat d^S_{is}`, :math:`d^T_{is}` the ``R + 1`` bin logits of side :math:`s` at anchor
    :math:`i` from the cross head and the teacher, and :math:`\rho_i` from
    :func:`crosskd_region_weights`. Over FPN levels the denominator sums :math:`\rho` over all
    levels: ``multilevel_loss(crosskd_box_loss, cross, teacher, teacher_logits, valid_masks,
    region_weight_sum=sum(crosskd_region_weights(t, m).sum() for t, m in zip(teacher_logits, valid_masks)))``.

    Args:
        student_box_logits: cross-head distance-distribution logits, ``4 (R + 1)`` channels (the four
            sides in order, each with its bins).
        teacher_box_logits: the teacher's distribution logits (detached inside).
        teacher_logits: the teacher's class logits :math:`z^T` of the level (``(N, K, H, W)``).
        valid_mask: :math:`w_i`, ``(N, H, W)`` anchor weights; ``None``: all 1.
        region_weight_sum: :math:`\sum_i \rho_i` over all levels and images; ``None``: this call's
            own sum (one level, or levels concatenated).
        temperature: :math:`T` (official 1).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the weighted sum of
            per-side KL divided by :math:`4 \sum_i \rho_i` (as the official code: by
            ``4 + finfo(float32).eps``, then by the sum); use ``reduction='none'`` and ``.mean()``
            for the plain element mean; ``'sum'``: the weighted sum; ``'none'``: the
            ``(N, 4, H, W)`` weighted per-side terms.

    Shape:
        - student_box_logits, teacher_box_logits: :math:`(N, 4(R+1), H, W)`
        - teacher_logits: :math:`(N, K, H, W)`; valid_mask: :math:`(N, H, W)`
        - output: scalar, or :math:`(N, 4, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_box_logits``.

    Reference:
        Jiabao Wang, Yuming Chen, Zhaohui Zheng, Xiang Li, Ming-Ming Cheng, Qibin Hou.
        "CrossKD: Cross-Head Knowledge Distillation for Object Detection". CVPR 2024. arXiv:2306.11369.
        Official code: jbwang1997/CrossKD@87e156a (``CrossKDGFL.pred_mimicking_loss_single`` with
        ``KnowledgeDistillationKLDivLoss(class_reduction='sum', T=1)``); reference numbers only.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 68, 10, 12), torch.randn(2, 68, 10, 12)
        >>> crosskd_box_loss(s, t, torch.randn(2, 80, 10, 12)).shape
        torch.Size([])

    Notes:
        The GFL configuration weights this term by 4.0. The official code divides by the sum of
        :math:`\rho` of the local batch (not averaged over GPUs); a sum of 0 gives 0 here instead of
        the official NaN.

        Under ``DistributedDataParallel`` each process divides by its own sum of region weights (unless
        ``region_weight_sum`` is given); inside :func:`kdimpl.distributed.global_normalisers` it divides by
        the mean over processes and the gradients equal those of one process on the union batch (behaviour
        ``'count'``).
    """
    check_shape(student_box_logits, "student_box_logits", "N C H W")
    check_shape(teacher_box_logits, "teacher_box_logits", "N C H W")
    check_same_shape(student_box_logits, teacher_box_logits, ("student_box_logits", "teacher_box_logits"))
    check_shape(teacher_logits, "teacher_logits", "N K H W")
    check_same_shape(teacher_logits[:, 0], student_box_logits[:, 0], ("teacher_logits", "student_box_logits"),
                     "Class and box logits of one level have the same (N, H, W).")
    if not _tracing() and student_box_logits.shape[1] % 4:
        raise ValueError(f"student_box_logits must have 4 (R + 1) channels, got {student_box_logits.shape[1]}")
    if valid_mask is not None:
        check_shape(valid_mask, "valid_mask", "N H W")
        check_same_shape(valid_mask, teacher_logits[:, 0], ("valid_mask", "the logits' (N, H, W)"))
    check_options(temperature=temperature, reduction=reduction)
    n, channels, height, width = student_box_logits.shape
    s = upcast(student_box_logits).reshape(n, 4, channels // 4, height, width) / temperature
    t = upcast(teacher_box_logits.detach()).reshape(n, 4, channels // 4, height, width) / temperature
    log_p_t = F.log_softmax(t, dim=2)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=2))).sum(dim=2) * temperature**2
    rho = crosskd_region_weights(teacher_logits, valid_mask).to(kl.dtype)
    terms = rho[:, None] * kl
    if reduction == "none":
        return terms.to(student_box_logits.dtype)
    total = terms.sum()
    if reduction == "sum":
        return total.to(student_box_logits.dtype)
    norm = reduce_normaliser(rho.sum()) if region_weight_sum is None else torch.as_tensor(region_weight_sum, dtype=total.dtype,
                                                                       device=total.device)
    # a zero sum means every rho (so every term) is 0: keep 0 instead of 0 / 0
    norm = norm.clamp(min=torch.finfo(total.dtype).tiny)
    return (total / (4 + torch.finfo(torch.float32).eps) / norm).to(student_box_logits.dtype)


@register_loss("crosskd_box", function=crosskd_box_loss, distributed="count")
class CrossKDBoxLoss(LossModule):
    """Module twin of :func:`crosskd_box_loss`; ``loss_weight`` multiplies the result (official 4.0)."""

    def __init__(self, *, temperature: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)


def crosskd_box_iou_loss(
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    teacher_logits: Tensor,
    valid_mask: Tensor | None = None,
    num_positives: float | Tensor | None = None,
    *,
    generalized: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""CrossKD's box distillation for heads that regress boxes (RetinaNet, ATSS, FCOS), one FPN level.

    .. math::
        L_{box} = \frac{1}{N_{pos}} \sum_i \rho_i \big(1 - \mathrm{GIoU}(\hat b^S_i, b^T_i)\big),
        \qquad \rho_i = \sigma\big(\max_c z^T_{ic}\big)\,[w_i \neq 0]

    over the anchors :math:`i` of the level, with :math:`\hat b^S_i` the box decoded from the cross
    head's regression and :math:`b^T_i` the teacher's (same anchors, same decoder); with
    ``generalized=False``, :math:`1 - \max(\mathrm{IoU}, 10^{-6})` (FCOS's IoU loss).

    Args:
        student_boxes: decoded cross-head boxes ``x1, y1, x2, y2``, ``4 A`` channels for ``A`` anchors
            per position (anchor-major: channel ``4a + j``).
        teacher_boxes: the teacher's decoded boxes (detached inside).
        teacher_logits: the teacher's class logits :math:`z^T`, ``A K`` channels (channel ``K a + c``).
        valid_mask: :math:`w_i`, ``(N, A, H, W)`` anchor weights (``(N, H, W)`` when ``A = 1``; official:
            the label weights for RetinaNet and ATSS, none for FCOS); ``None``: all 1.
        num_positives: :math:`N_{pos}`, the normaliser over all levels (official: the number of positive
            anchors for RetinaNet and ATSS, the sum of the centerness targets of the positives for
            FCOS), clamped to at least 1; required with ``reduction='mean'``.
        generalized: GIoU (RetinaNet and ATSS configurations) or IoU (FCOS configuration).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the weighted sum
            divided by :math:`N_{pos}` (plus ``finfo(float32).eps``); use ``reduction='none'`` and
            ``.mean()`` for the plain element mean; ``'sum'``: the weighted sum; ``'none'``: the
            ``(N, A, H, W)`` weighted terms.

    Shape:
        - student_boxes, teacher_boxes: :math:`(N, 4A, H, W)`; teacher_logits: :math:`(N, AK, H, W)`
        - output: scalar, or :math:`(N, A, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_boxes``.

    Reference:
        Jiabao Wang, Yuming Chen, Zhaohui Zheng, Xiang Li, Ming-Ming Cheng, Qibin Hou.
        "CrossKD: Cross-Head Knowledge Distillation for Object Detection". CVPR 2024. arXiv:2306.11369.
        Official code: jbwang1997/CrossKD@87e156a (``CrossKDRetinaNet.pred_mimicking_loss_single`` with
        mmdetection's ``GIoULoss``; ``CrossKDATSS``, ``CrossKDFCOS``); reference numbers only.

    Example:
        >>> import torch
        >>> xy = torch.rand(2, 2, 10, 12) * 50
        >>> boxes = torch.cat([xy, xy + 1 + torch.rand(2, 2, 10, 12) * 30], dim=1)
        >>> crosskd_box_iou_loss(boxes, boxes.flip(0), torch.randn(2, 80, 10, 12), num_positives=12).shape
        torch.Size([])

    Notes:
        Configuration weights: 1.0 (RetinaNet, ATSS; GIoU), 0.75 (FCOS; IoU). The FCOS distiller
        applies no anchor mask. ATSS's configuration also distils the centerness (binary
        cross-entropy), which is not part of this function.

        Under ``DistributedDataParallel`` this sum over the batch gets ``1 / world_size`` of the union
        batch's gradients (DDP averages); multiply ``loss_weight`` by the world size to train as one process
        would (:mod:`kdimpl.distributed`, behaviour ``'sum'``).
    """
    check_shape(student_boxes, "student_boxes", "N C H W")
    check_shape(teacher_boxes, "teacher_boxes", "N C H W")
    check_same_shape(student_boxes, teacher_boxes, ("student_boxes", "teacher_boxes"))
    check_shape(teacher_logits, "teacher_logits", "N K H W")
    n, channels, height, width = student_boxes.shape
    anchors = channels // 4
    if not _tracing() and (channels % 4 or teacher_logits.shape[1] % max(anchors, 1)):
        raise ValueError(f"student_boxes must have 4 A channels and teacher_logits A K channels, got "
                         f"{channels} and {teacher_logits.shape[1]}")
    check_same_shape(teacher_logits[:, 0], student_boxes[:, 0], ("teacher_logits", "student_boxes"),
                     "Class and box outputs of one level have the same (N, H, W).")
    if valid_mask is not None and valid_mask.dim() == 3:
        valid_mask = valid_mask[:, None]
    if valid_mask is not None:
        check_shape(valid_mask, "valid_mask", f"N {anchors} H W")
        check_same_shape(valid_mask[:, 0], student_boxes[:, 0], ("valid_mask", "student_boxes' (N, H, W)"))
    check_options(reduction=reduction)
    classes = teacher_logits.shape[1] // anchors
    logits = teacher_logits.reshape(n, anchors, classes, height, width).movedim(2, 1).flatten(2)
    rho = crosskd_region_weights(logits, None if valid_mask is None else valid_mask.flatten(1))
    rho = rho.reshape(n, anchors, height, width)
    s = upcast(student_boxes).reshape(n, anchors, 4, height, width).movedim(2, -1)
    t = upcast(teacher_boxes.detach()).reshape(n, anchors, 4, height, width).movedim(2, -1)
    iou = aligned_box_iou(s, t, generalized=generalized)
    if not generalized:
        iou = iou.clamp(min=1e-6)
    terms = rho.to(iou.dtype) * (1 - iou)
    return bckd_reduce(terms, num_positives, reduction, student_boxes.dtype)


@register_loss("crosskd_box_iou", function=crosskd_box_iou_loss, distributed="sum")
class CrossKDBoxIoULoss(LossModule):
    """Module twin of :func:`crosskd_box_iou_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, generalized: bool = True, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(generalized=generalized, reduction=reduction, loss_weight=loss_weight)
