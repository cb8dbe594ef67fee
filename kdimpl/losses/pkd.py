"""PKD: feature imitation with the Pearson correlation coefficient, Cao et al., NeurIPS 2022."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._base import LossModule
from .._checks import check_feature_pair, check_options, check_positive
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

_RESIZE = ("student", "teacher")


def _check_resize(resize: str) -> None:
    if resize not in _RESIZE:
        raise ValueError(f"resize must be one of {_RESIZE}, got {resize!r}")


def pkd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    resize: str = "student",
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    r"""Pearson-correlation feature imitation: MSE between per-channel standardised features.

    Each channel is standardised over the batch and all positions, and the loss is half the
    mean squared difference of the standardised maps (Cao et al., Eq. 5), i.e. one minus the
    Pearson correlation of every student channel with the teacher's:

    .. math::
        \hat F_c = \frac{F_c - \mu_c}{\sigma_c + \epsilon}, \qquad
        \mathcal{L} = \frac{1}{2 N C H W} \sum_{n,c,h,w}
            \big(\hat F^S_{n,c,h,w} - \hat F^T_{n,c,h,w}\big)^2
            = \frac{1}{C}\sum_c \frac{m-1}{m}\,\big(1 - r(F^S_c, F^T_c)\big) \quad (\epsilon = 0)

    with :math:`\mu_c, \sigma_c` the mean and unbiased standard deviation over the
    :math:`m = N H W` values of channel :math:`c`, and :math:`r` the Pearson correlation.

    Args:
        student: student feature map.
        teacher: teacher feature map with the same batch size and channels (detached inside).
        resize: when the spatial sizes differ, ``'student'`` (default, official ``resize_stu=True``)
            bilinearly resizes the student to the teacher's size, ``'teacher'`` the reverse.
        eps: :math:`\epsilon` added to the standard deviation (default 1e-6, the official value:
            it sets the gradient on a constant student channel, :math:`1/\epsilon` times the
            teacher's standardised map, which the parity tests check).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum divided by
            :math:`2 N C H W` (the official ``F.mse_loss(...) / 2``), which is the element mean
            of the ``'none'`` output; ``'sum'`` sums; ``'none'`` returns the
            :math:`\frac12 (\hat F^S - \hat F^T)^2` map.

    Shape:
        - student: :math:`(N, C, H_s, W_s)`, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'`` (the resized size)

    Returns:
        The loss for one feature level, in the dtype of ``student``. The paper sums it over FPN
        levels (:func:`kdimpl.multilevel_loss`) and multiplies by the loss weight (6 for Faster
        R-CNN, 10 for RetinaNet/FCOS/RepPoints in the official configs).

    Reference:
        Weihan Cao, Yifan Zhang, Jianfei Gao, Anda Cheng, Ke Cheng, Jian Cheng. "PKD: General
        Distillation Framework for Object Detectors via Pearson Correlation Coefficient".
        NeurIPS 2022. arXiv:2207.02039. Official code: open-mmlab/mmrazor@90c7af1
        ``mmrazor/models/losses/pkd_loss.py::PKDLoss`` (matched by the parity tests).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> pkd_loss(s, t).shape
        torch.Size([])
        >>> float(pkd_loss(3.0 * t + 1.0, t)) < 1e-6  # invariant to per-channel affine maps
        True

    Notes:
        The statistics couple all images of the batch, so an image's loss depends on its
        batch-mates (as in the official code). Deviations from the official code: resizing
        happens whenever the spatial sizes differ (official: only when the heights differ, and a
        width-only mismatch fails an assertion); a channel with a single value
        (:math:`N H W = 1`) uses the population standard deviation instead of returning NaN; an
        empty batch gives 0. The scalar reductions are computed in closed form from the
        per-channel sums :math:`\sum \tilde s^2, \sum \tilde t^2, \sum \tilde s \tilde t` of the
        centred features, with an analytic gradient (first order only; ``reduction='none'``
        goes through autograd).

        Under ``DistributedDataParallel`` the standardisation statistics are computed over the features of
        the process's own images only, so no normaliser makes the gradients equal those of one process on
        the union batch (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    check_options(reduction=reduction)
    check_positive(eps, "eps")
    _check_resize(resize)
    check_feature_pair(student, teacher, same_spatial=False)
    s, t = upcast(student), upcast(teacher.detach())
    if s.shape[-2:] != t.shape[-2:]:
        if resize == "student":
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        else:
            t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    n, c, h, w = s.shape
    count = n * h * w
    # Benchmark (benchmarks.losses workload, CPU fwd+bwd, forms interleaved in one run): the closed form
    # is 2.4x faster than autograd through the reference (617 vs 1483 ms) with 47% less peak memory
    # (437 vs 831 MiB) in eager mode, and 1.6x faster compiled (79 vs 126 ms; same peak, the gradients).
    if reduction != "none" and count > 1:
        total = _StandardizedSquaredError.apply(s, t, float(eps)).sum()
        return (total / (count * c) if reduction == "mean" else total).to(student.dtype)
    loss = 0.5 * (_standardize(s, eps) - _standardize(t, eps)).square()
    return reduce_loss(loss, reduction).to(student.dtype)


def _standardize(x: Tensor, eps: float) -> Tensor:
    """Per channel over ``(N, H, W)``: ``(x - mean) / (unbiased std + eps)`` (population std for one value)."""
    if x.numel() == 0:
        return x
    dims = (0, 2, 3)
    correction = 1 if x.numel() > x.shape[1] else 0
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, correction=correction, keepdim=True) + eps)


class _StandardizedSquaredError(torch.autograd.Function):
    """Per channel, the sum over ``(N, H, W)`` of the reference's loss map, in closed form, with an analytic gradient.

    With centred features ``ds, dt``, ``S = sum ds^2``, ``T = sum dt^2``, ``X = sum ds dt`` and
    ``a = 1 / (sigma_s + eps)``, ``b = 1 / (sigma_t + eps)``, ``sigma = sqrt(S / (m - 1))``:
    ``L = (S a^2 + T b^2 - 2 X a b) / 2``. Because centred features sum to zero, the gradient is
    ``dL/ds = 2 (dL/dS) ds + (dL/dX) dt`` per channel: one elementwise pass in backward, and only
    the inputs (held by autograd anyway) and per-channel numbers saved. Needs ``m > 1``.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, eps: float) -> Tensor:
        dims = (0, 2, 3)
        dof = s.numel() // s.shape[1] - 1
        mean_s, mean_t = s.mean(dim=dims, keepdim=True), t.mean(dim=dims, keepdim=True)
        ds, dt = s - mean_s, t - mean_t
        ss, tt, st = (ds * ds).sum(dim=dims), (dt * dt).sum(dim=dims), (ds * dt).sum(dim=dims)
        del ds, dt
        # A constant student channel (S = 0) has sigma'(S) = inf; torch.std's backward gives it a
        # zero slope, which the clamp reproduces (S below the smallest normal number).
        tiny = torch.finfo(ss.dtype).tiny
        sigma_s = torch.sqrt(ss.clamp_min(tiny) / dof)
        a = 1.0 / (sigma_s + eps)
        b = 1.0 / (torch.sqrt(tt / dof) + eps)
        loss = 0.5 * (ss * a**2 + tt * b**2 - 2.0 * st * a * b)
        # dL/dS = a^2 / 2 + (S a - X b) da/dS, da/dS = -a^2 / (2 (m - 1) sigma_s) above the clamp
        dloss_dss = 0.5 * a**2 - (ss * a - st * b) * a**2 / (2 * dof * sigma_s) * (ss > tiny)
        ctx.save_for_backward(s, t, mean_s, mean_t, 2.0 * dloss_dss, -a * b)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        s, t, mean_s, mean_t, coef_s, coef_t = ctx.saved_tensors
        coef_s = (grad_loss * coef_s)[:, None, None]
        coef_t = (grad_loss * coef_t)[:, None, None]
        return (s - mean_s) * coef_s + (t - mean_t) * coef_t, None, None


@register_loss("pkd", function=pkd_loss, distributed="batch")
class PKDLoss(LossModule):
    """Module twin of :func:`pkd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self, *, resize: str = "student", eps: float = 1e-6, reduction: str = "mean", loss_weight: float = 1.0
    ) -> None:
        check_positive(eps, "eps")
        _check_resize(resize)
        super().__init__(resize=resize, eps=eps, reduction=reduction, loss_weight=loss_weight)
