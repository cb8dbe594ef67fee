"""Channel-wise distillation (CWD), Shu et al., ICCV 2021."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._dtypes import upcast
from .._checks import check_feature_pair, check_positive, check_reduction
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["cwd_loss", "CWDLoss"]


def cwd_loss(student: Tensor, teacher: Tensor, *, tau: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Channel-wise distillation: KL divergence between per-channel spatial distributions.

    Each channel's activation map is turned into a distribution over the ``H x W`` positions,
    and the student matches the teacher's (Shu et al., Eq. 3-4):

    .. math::
        \varphi(y_c) = \operatorname{softmax}_{i}\big(y_{c,i} / \tau\big), \qquad
        \mathcal{L} = \frac{\tau^2}{N C} \sum_{n, c} \sum_{i=1}^{H W}
            \varphi(y^T_{n,c})_i \log \frac{\varphi(y^T_{n,c})_i}{\varphi(y^S_{n,c})_i}

    Args:
        student: student feature map.
        teacher: teacher feature map of the same shape (detached inside).
        tau: temperature :math:`\tau` (the paper uses 4 for detection, 1 for segmentation).
        reduction: ``'none'``: the ``(N, C)`` per-channel KL times :math:`\tau^2`;
            ``'mean'``: its mean over the ``N C`` channels, which is the paper's normalisation;
            ``'sum'``: its sum.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C)` with ``reduction='none'``

    Reference:
        Changyong Shu, Yifan Liu, Jianfei Gao, Zheng Yan, Chunhua Shen. "Channel-wise Knowledge
        Distillation for Dense Prediction". ICCV 2021. arXiv:2011.13256.
        Official code: irfanICMLL/TorchDistiller; detection configs in open-mmlab/mmrazor
        (``ChannelWiseDivergence``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
        >>> cwd_loss(s, t, tau=4.0).shape
        torch.Size([])
    """
    check_feature_pair(student, teacher)
    check_positive(tau, "tau")
    check_reduction(reduction)
    n, c, h, w = student.shape
    s = upcast(student).reshape(n, c, h * w)
    t = upcast(teacher.detach()).reshape(n, c, h * w)
    log_p_s = F.log_softmax(s / tau, dim=-1)
    log_p_t = F.log_softmax(t / tau, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=-1) * tau**2
    return reduce_loss(kl, reduction).to(student.dtype)


@register_loss("cwd", function=cwd_loss)
class CWDLoss(nn.Module):
    """Module twin of :func:`cwd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, tau: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_positive(tau, "tau")
        check_reduction(reduction)
        self.tau = tau
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return self.loss_weight * cwd_loss(student, teacher, tau=self.tau, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"

