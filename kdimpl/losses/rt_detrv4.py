"""RT-DETRv4: real-time DETRs furthered with a vision foundation model, Liao et al., arXiv 2025.

During training only, the student's deep encoder feature (the AIFI output :math:`F_5`) is projected
to the foundation model's width by a linear *injector* and pulled towards the frozen teacher's patch
features (DINOv3) by a cosine loss; the loss weight is adapted once per epoch from the share of the
gradient that reaches the encoder transformer::

    loss = rt_detrv4_loss(f5, dinov3_patches, projector_student=projector)  # or RTDETRv4Loss(256, 768)
    ...
    weight = rt_detrv4_distill_weight(weight, encoder_grad_percentage)  # at the end of each epoch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import check_modules, check_options, check_shape, check_shapes
from .._dtypes import upcast
from .._registry import register_loss

__all__ = ["rt_detrv4_distill_weight"]


def rt_detrv4_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    projector_student: nn.Module | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""RT-DETRv4's foundation-model distillation: cosine between projected student and teacher features.

    The student's feature :math:`F` (projected over channels by the injector :math:`\phi`, a linear
    layer) and the teacher's patch feature :math:`T` (bilinearly resized to the student's size when
    they differ) are compared position by position:

    .. math::
        L = \frac{1}{NHW} \sum_{n, h, w} \Big(1 - \cos\big(\phi(F_{n,:,h,w}), T_{n,:,h,w}\big)\Big)

    Args:
        student: :math:`F`, the student's deep encoder feature (the AIFI output, stride 32), or its
            projection when ``projector_student`` is ``None``.
        teacher: :math:`T`, the frozen foundation model's patch features (detached inside).
        projector_student: :math:`\phi`, applied over the channel dimension (channels last, an
            ``nn.Linear(C_s, C_t)`` as in the official injector); ``None``: ``student`` already has
            the teacher's width.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over the
            :math:`NHW` positions (0 for an empty batch); ``'sum'``: the sum; ``'none'``: the
            ``(N, H, W)`` per-position terms.

    Shape:
        - student: :math:`(N, C_s, H, W)`, or :math:`(N, C_t, H, W)` without a projector
        - teacher: :math:`(N, C_t, H_t, W_t)`
        - output: scalar, or :math:`(N, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zijun Liao, Yian Zhao, Xin Shan, Yu Yan, Chang Liu, Lei Lu, Xiangyang Ji, Jie Chen.
        "RT-DETRv4: Painlessly Furthering Real-Time Object Detection with Vision Foundation Models".
        arXiv 2025. arXiv:2510.25257.
        Official code: RT-DETRs/RT-DETRv4@df44122 (``engine/rtv4/rtv4_criterion.py::
        RTv4Criterion.loss_distillation``; the injector ``feature_projector`` in
        ``engine/rtv4/hybrid_encoder.py::HybridEncoder``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 768, 20, 20), torch.randn(2, 768, 40, 40)
        >>> rt_detrv4_loss(s, t).shape
        torch.Size([])

    Notes:
        The official code L2-normalises both features (``F.normalize``, eps 1e-12) before
        ``F.cosine_similarity`` (eps 1e-8); this changes nothing but the value at a zero vector
        (1 both ways). Its weight is ``weight_dict['loss_distill']`` (5 for S/M, 15 for L in the
        released configurations; the base file notes it is five times the reported setting), adapted
        each epoch by :func:`rt_detrv4_distill_weight`. The teacher (DINOv3 ViT-B/16 patch features
        with ImageNet normalisation) and the injector's input (the student's AIFI output) are the
        caller's.
    """
    check_shapes(student=(student, "N Cs H W"), teacher=(teacher, "N C Ht Wt"))
    check_options(reduction=reduction)
    if projector_student is not None:
        check_modules(projector_student=projector_student)
    s = upcast(student)
    if projector_student is not None:
        s = projector_student(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).to(s.dtype)
    check_shape(s, "the projected student", f"N {teacher.shape[1]} H W")
    t = teacher.detach().to(s.dtype)
    if t.shape[-2:] != s.shape[-2:]:
        t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    terms = 1 - F.cosine_similarity(s, t, dim=1)
    if reduction == "none":
        return terms.to(student.dtype)
    total = terms.sum()
    if reduction == "mean":
        total = total / max(terms.numel(), 1)
    return total.to(student.dtype)


@register_loss("rt_detrv4", function=rt_detrv4_loss)
class RTDETRv4Loss(LossModule):
    """Module twin of :func:`rt_detrv4_loss`; ``loss_weight`` multiplies the result.

    Args:
        student_channels: the student feature's width :math:`C_s` (official hidden dim 256).
        teacher_channels: the teacher's width :math:`C_t` (768 for DINOv3 ViT-B). Given both, the
            loss owns the injector ``projector_student = nn.Linear(C_s, C_t)``, so the optimiser and
            ``DistributedDataParallel`` see it through the loss; ``None`` (default): no projector.
    """

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        pieces = {}
        if student_channels is not None and teacher_channels is not None:
            pieces = {"projector_student": nn.Linear(student_channels, teacher_channels)}
        super().__init__(**pieces, reduction=reduction, loss_weight=loss_weight)


def rt_detrv4_distill_weight(
    weight: float,
    grad_percentage: float,
    *,
    rho: float = 11.0,
    delta: float = 1.0,
    default_weight: float = 20.0,
) -> float:
    r"""RT-DETRv4's once-per-epoch update of the distillation weight from the encoder's gradient share.

    :math:`p` is the epoch's mean share (in percent) of the gradients' L1 norm that falls on the
    encoder transformer's parameters. Within :math:`[\rho - \delta, \rho + \delta]` the weight is
    kept; outside, with :math:`p^*` the nearer bound, it is multiplied by the odds ratio

    .. math::
        r = \max\Big(\frac{p^* (1 - p)}{p (1 - p^*)},\ 0.1\Big), \qquad
        w' = \min\big(\max(w\,r,\ w / 10),\ 10\,w\big)

    (percentages as fractions). A share below :math:`10^{-6}` resets the weight to
    ``default_weight``; so does the caller in the final no-augmentation (EMA) epochs.

    Args:
        weight: the current weight :math:`w` (a weight at most :math:`10^{-6}` is kept).
        grad_percentage: :math:`p`, in percent.
        rho: :math:`\rho`, the target share in percent (official 11).
        delta: :math:`\delta`, the tolerance in percent (official 1).
        default_weight: the reset value (official 20 for S/M/L).

    Returns:
        The new weight.

    Reference:
        Official code: RT-DETRs/RT-DETRv4@df44122 (``engine/solver/det_solver.py::DetSolver.fit``,
        ``engine/solver/det_engine.py::_compute_encoder_transformer_grad_percentage``).

    Example:
        >>> rt_detrv4_distill_weight(5.0, 11.5), round(rt_detrv4_distill_weight(5.0, 20.0), 4)
        (5.0, 2.2222)
    """
    if grad_percentage < 1e-6:
        return default_weight
    lower, upper = rho - delta, rho + delta
    if lower <= grad_percentage <= upper or weight <= 1e-6:
        return weight
    p, target = grad_percentage / 100.0, (upper if grad_percentage < lower else lower) / 100.0
    denominator = p * (1.0 - target)
    if abs(denominator) < 1e-9:
        return weight
    ratio = max(target * (1.0 - p) / denominator, 0.1)
    return min(max(weight * ratio, weight / 10.0), weight * 10.0)
