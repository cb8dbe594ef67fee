"""PKD: feature imitation with the Pearson correlation coefficient, Cao et al., NeurIPS 2022."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._checks import check_feature_pair, check_positive, check_reduction
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["pkd_loss", "PKDLoss"]

_RESIZE = ("student", "teacher")


def _check_pkd_inputs(student: Tensor, teacher: Tensor, resize: str) -> None:
    if resize not in _RESIZE:
        raise ValueError(f"resize must be one of {_RESIZE}, got {resize!r}")
    check_feature_pair(student, teacher, same_spatial=False)


def _channel_moments(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-channel means (shaped to broadcast) and centred sums ``S, T, X`` over ``(N, H, W)``."""
    dims = (0, 2, 3)
    mean_s, mean_t = s.mean(dim=dims, keepdim=True), t.mean(dim=dims, keepdim=True)
    ds, dt = s - mean_s, t - mean_t
    return mean_s, mean_t, (ds * ds).sum(dim=dims), (dt * dt).sum(dim=dims), (ds * dt).sum(dim=dims)


def _row_moments(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_channel_moments` from per-image rows, the form used under ``torch.compile``.

    Each image's map of a channel (a contiguous ``(n, c)`` row) is centred on its own mean, which
    inductor fuses into one kernel reading every row once from memory (the second pass over a
    row hits the cache, where centring on the channel mean reads the whole tensor twice); the
    rows are then combined exactly: ``S_c = sum_n S_nc + HW sum_n (mu_nc - mu_c)^2``, and alike
    for ``T`` and ``X``.
    """
    n, c = s.shape[:2]
    s, t = s.reshape(n, c, -1), t.reshape(n, c, -1)
    row_s, row_t = s.mean(dim=-1, keepdim=True), t.mean(dim=-1, keepdim=True)
    ds, dt = s - row_s, t - row_t
    ss, tt, st = (ds * ds).sum(dim=-1), (dt * dt).sum(dim=-1), (ds * dt).sum(dim=-1)
    row_s, row_t = row_s.squeeze(-1), row_t.squeeze(-1)
    mean_s, mean_t = row_s.mean(dim=0), row_t.mean(dim=0)
    es, et = row_s - mean_s, row_t - mean_t
    hw = s.shape[-1]
    ss = ss.sum(dim=0) + hw * (es * es).sum(dim=0)
    tt = tt.sum(dim=0) + hw * (et * et).sum(dim=0)
    st = st.sum(dim=0) + hw * (es * et).sum(dim=0)
    return mean_s[:, None, None], mean_t[:, None, None], ss, tt, st


class _StandardizedSquaredError(torch.autograd.Function):
    """Per channel ``1/2 sum (s_hat - t_hat)^2`` over ``(N, H, W)``, in closed form, with an analytic gradient.

    With centred features ``ds, dt``, ``S = sum ds^2``, ``T = sum dt^2``, ``X = sum ds dt`` and
    ``a = 1 / (sigma_s + eps)``, ``b = 1 / (sigma_t + eps)``, ``sigma = sqrt(S / (m - 1))``:
    ``L = (S a^2 + T b^2 - 2 X a b) / 2``. Because centred features sum to zero, the gradient is
    ``dL/ds = 2 (dL/dS) ds + (dL/dX) dt`` per channel: one elementwise pass in backward, and only
    the inputs (held by autograd anyway) and per-channel numbers saved.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, eps: float) -> Tensor:
        count = s.shape[0] * s.shape[2] * s.shape[3]
        moments = _row_moments if torch.compiler.is_compiling() else _channel_moments
        mean_s, mean_t, ss, tt, st = moments(s, t)
        dof = count - 1 if count > 1 else 1
        # A constant student channel (S = 0) would give sigma'(S) = inf: its S is clamped to the
        # smallest normal number there, where eps dominates a anyway, and the clamp's zero slope applies.
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


def pkd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    resize: str = "student",
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    r"""Pearson-correlation feature imitation: MSE between per-channel standardised features.

    Each channel is standardised over the batch and all positions (Cao et al.), and the
    loss is half the mean squared difference, i.e. one minus the Pearson correlation of every
    channel of the student with the teacher's:

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
        eps: :math:`\epsilon` added to the standard deviation (official: 1e-6).
        reduction: ``'none'``: the ``(C,)`` per-channel sums of the halved squared differences;
            ``'sum'``: their total; ``'mean'`` (default): the total divided by :math:`N C H W`,
            which is the official normalisation (``F.mse_loss(...) / 2``).

    Shape:
        - student: :math:`(N, C, H_s, W_s)`, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(C,)` with ``reduction='none'``

    Returns:
        The loss for one feature level, in the dtype of ``student``. The paper sums it over FPN
        levels and multiplies by the loss weight (6 for Faster R-CNN, 10 for RetinaNet/FCOS/RepPoints
        in the official configs).

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
        batch-mates (as in the official code). The loss is computed in closed form from three
        per-channel sums (:math:`\sum \tilde s^2, \sum \tilde t^2, \sum \tilde s \tilde t` of the
        centred features), which equals the official standardise-then-MSE value to rounding
        without materialising the standardised maps; its gradient is analytic (one elementwise
        pass in backward, first order only). Under ``torch.compile`` the sums are taken over each
        image's map of a channel, centred on that map's mean, and combined exactly, so the
        forward reads the features once. Deviations from the official code: resizing happens
        whenever the spatial sizes differ (official: only when the heights differ, and a
        width-only mismatch fails an assertion); a channel with a single value
        (:math:`N H W = 1`) uses the population standard deviation instead of returning NaN.
    """
    check_reduction(reduction)
    check_positive(eps, "eps")
    _check_pkd_inputs(student, teacher, resize)
    teacher = teacher.detach()
    if student.shape[-2:] != teacher.shape[-2:]:
        if resize == "student":
            student = F.interpolate(upcast(student), size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        else:
            teacher = F.interpolate(upcast(teacher), size=student.shape[-2:], mode="bilinear", align_corners=False)
    n, c, h, w = teacher.shape
    count = n * h * w
    per_channel = _StandardizedSquaredError.apply(upcast(student), upcast(teacher), float(eps))
    if reduction == "mean":
        return (per_channel.sum() / (count * c)).to(student.dtype)
    return reduce_loss(per_channel, reduction).to(student.dtype)


@register_loss("pkd", function=pkd_loss)
class PKDLoss(nn.Module):
    """Module twin of :func:`pkd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self, *, resize: str = "student", eps: float = 1e-6, reduction: str = "mean", loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        check_positive(eps, "eps")
        if resize not in _RESIZE:
            raise ValueError(f"resize must be one of {_RESIZE}, got {resize!r}")
        self.resize = resize
        self.eps = eps
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return self.loss_weight * pkd_loss(
            student, teacher, resize=self.resize, eps=self.eps, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"resize={self.resize!r}, eps={self.eps}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
