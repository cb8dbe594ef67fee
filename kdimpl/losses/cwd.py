"""Channel-wise distillation (CWD), Shu et al., ICCV 2021."""

from __future__ import annotations

import torch
from torch import Tensor

from .._base import LossModule
from .._checks import check_feature_pair, check_options
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss


def cwd_loss(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Channel-wise distillation: KL divergence between per-channel spatial distributions.

    Each channel's activation map is turned into a distribution over the ``H x W`` positions,
    and the student matches the teacher's (Shu et al., Eq. 2–3):

    .. math::
        \phi(y_c) = \operatorname{softmax}_{i}\big(y_{c,i} / \tau\big), \qquad
        \mathcal{L} = \frac{\tau^2}{N C} \sum_{n, c} \sum_{i=1}^{H W}
            \phi(y^T_{n,c})_i \log \frac{\phi(y^T_{n,c})_i}{\phi(y^S_{n,c})_i}

    Args:
        student: student feature map (or dense logits).
        teacher: teacher feature map of the same shape (detached inside).
        temperature: :math:`\tau` (default 1.0, as in the official detection configs).
        reduction: ``'mean'`` (default) applies the paper's own normalisation, here the mean over
            the ``N C`` channels (:math:`\tau^2 / (N C)`, which is also the element mean of the
            ``'none'`` output); ``'sum'`` sums; ``'none'`` returns the ``(N, C)`` per-channel
            KL times :math:`\tau^2`.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Changyong Shu, Yifan Liu, Jianfei Gao, Zheng Yan, Chunhua Shen. "Channel-wise Knowledge
        Distillation for Dense Prediction". ICCV 2021. arXiv:2011.13256.
        Official code: irfanICMLL/TorchDistiller@78bac7c ``CriterionCWD`` (``norm_type='channel'``,
        ``divergence='kl'``); the detection configs use open-mmlab/mmrazor@90c7af1
        ``ChannelWiseDivergence``. Both are matched to float32 rounding by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
        >>> cwd_loss(s, t, temperature=4.0).shape
        torch.Size([])
        >>> float(cwd_loss(t, t))
        0.0

    Notes:
        TorchDistiller takes ``softmax(...).log()`` and returns ``inf`` once a channel's logits
        span more than ~100 (float32 underflow); the log-softmax form here stays finite. The
        unofficial pppppM/mmdetection-distiller port omits the teacher-entropy term (a soft
        cross-entropy): same gradient, value larger by :math:`\tau^2 / (NC) \sum H(p^T)`.
    """
    check_feature_pair(student, teacher)
    check_options(temperature=temperature, reduction=reduction)
    n, c, h, w = student.shape
    s = upcast(student).reshape(n, c, h * w)
    t = upcast(teacher.detach()).reshape(n, c, h * w)
    # Benchmark (benchmarks.losses workload, CPU fwd+bwd, forms interleaved in one run): in eager mode
    # the analytic-gradient form is 1.9x faster than autograd through the reference (375 vs 710 ms)
    # with 40% less peak memory (394 vs 656 MiB); compiled, the fused form is 1.4x faster than the
    # compiled reference (85 vs 120 ms) at the same peak (the gradients, 175 MiB).
    kl = (_SpatialKLCompiled if torch.compiler.is_compiling() else _SpatialKL).apply(s, t, temperature)
    return reduce_loss(kl * temperature**2, reduction).to(student.dtype)


def _spatial_kl_reference(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """Row-wise ``KL(softmax(t / T) || softmax(s / T))`` over the last dimension, in log space."""
    log_p_t = torch.log_softmax(t / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - torch.log_softmax(s / temperature, dim=-1))).sum(dim=-1)


def _scaled(x: Tensor, temperature: float) -> Tensor:
    return x if temperature == 1.0 else x / temperature


class _SpatialKL(torch.autograd.Function):
    """:func:`_spatial_kl_reference` with its analytic gradient ``(softmax(s / T) - softmax(t / T)) / T``.

    Only the unscaled inputs are saved (views autograd holds anyway); both softmaxes are
    recomputed in backward, and forward and backward work in place on their temporaries.
    First-order gradients only.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(s, t)
        ctx.temperature = temperature
        log_p_t = torch.log_softmax(_scaled(t, temperature), dim=-1)
        p_t = log_p_t.exp()
        return log_p_t.sub_(torch.log_softmax(_scaled(s, temperature), dim=-1)).mul_(p_t).sum(dim=-1)

    @staticmethod
    def backward(ctx, grad_kl: Tensor):
        s, t = ctx.saved_tensors
        temperature = ctx.temperature
        grad = torch.softmax(_scaled(s, temperature), dim=-1)
        grad.sub_(torch.softmax(_scaled(t, temperature), dim=-1)).mul_(grad_kl.unsqueeze(-1) / temperature)
        return grad, None, None


class _SpatialKLCompiled(torch.autograd.Function):
    """:func:`_spatial_kl_reference` in the form used under ``torch.compile``.

    With rows shifted by their maxima, ``KL = sum_i e^T_i (t_i - s_i) / z_t + log z_s - log z_t``
    (``e = exp``, ``z`` the row sums), which inductor fuses into one kernel that reads each row
    once and also writes the gradient direction ``softmax(s / T) - softmax(t / T)``, the only
    tensor saved; backward scales it (in place once compiled). First-order gradients only.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, temperature: float) -> Tensor:
        s, t = _scaled(s, temperature), _scaled(t, temperature)
        s = s - s.amax(dim=-1, keepdim=True)  # both shifts cancel in the KL
        t = t - t.amax(dim=-1, keepdim=True)
        e_s, e_t = torch.exp(s), torch.exp(t)
        z_s, z_t = e_s.sum(dim=-1, keepdim=True), e_t.sum(dim=-1, keepdim=True)
        r_t = z_t.reciprocal()
        kl = ((e_t * (t - s)).sum(dim=-1, keepdim=True) * r_t + torch.log(z_s) - torch.log(z_t)).squeeze(-1)
        ctx.save_for_backward(e_s * z_s.reciprocal() - e_t * r_t)
        ctx.temperature = temperature
        return kl

    @staticmethod
    def backward(ctx, grad_kl: Tensor):
        (direction,) = ctx.saved_tensors
        return direction * (grad_kl.unsqueeze(-1) / ctx.temperature), None, None


@register_loss("cwd", function=cwd_loss)
class CWDLoss(LossModule):
    """Module twin of :func:`cwd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, temperature: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)
