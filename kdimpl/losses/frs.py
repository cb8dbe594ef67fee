"""Feature-richness score distillation (FRS), Du et al., NeurIPS 2021."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import _tracing, check_feature_pair, check_reduction, check_tensor
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["FRSClsLoss", "FRSFeatureLoss", "feature_richness", "frs_cls_loss", "frs_feature_loss"]


def feature_richness(teacher_logits: Tensor) -> Tensor:
    r"""Feature-richness score of one level: the teacher's highest class probability per position.

    .. math::
        S_{n,h,w} = \max_{c} \sigma\big(z^T_{n,c,h,w}\big)

    The max runs over every channel of the classification output (for anchor-based heads,
    anchors times classes). It is computed as :math:`\sigma(\max_c z)`, which is equal since the
    sigmoid is monotone and cheaper. The result carries no gradient.

    Args:
        teacher_logits: ``(N, K, H, W)`` classification logits of the teacher on this level.

    Returns:
        ``(N, H, W)`` scores in ``(0, 1)``, in float32 for half inputs.
    """
    check_tensor(teacher_logits, "teacher_logits", 4, "N K H W")
    return torch.sigmoid(upcast(teacher_logits.detach()).amax(dim=1))


def _check_logits_match(teacher_logits: Tensor, features: Tensor) -> None:
    if _tracing():
        return
    check_tensor(teacher_logits, "teacher_logits", 4, "N K H W")
    if teacher_logits.shape[0] != features.shape[0] or teacher_logits.shape[2:] != features.shape[2:]:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} must cover the same images and H x W as the features "
            f"{tuple(features.shape)}: pass the classification output of the same FPN level"
        )


def frs_feature_loss(student: Tensor, teacher: Tensor, teacher_logits: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""FRS feature imitation on one FPN level, weighted by the teacher's feature richness.

    .. math::
        \mathcal{L}_{FPN} = \frac{\sum_{n,c,h,w} S_{n,h,w}\,\big(F^T_{n,c,h,w} - \phi(F^S)_{n,c,h,w}\big)^2}
            {\sum_{n,h,w} S_{n,h,w}}, \qquad S = \max_c \sigma(z^T_c)

    Args:
        student: adapted student features :math:`\phi(F^S)` (use :class:`kdimpl.FRSAdapter`, a 3x3
            convolution per level, as the official code does).
        teacher: teacher features of the same shape (detached inside).
        teacher_logits: the teacher's classification logits on the same level (detached inside).
        reduction: ``'none'``: the ``(N, C, H, W)`` weighted squared errors
            :math:`S (F^T - \phi(F^S))^2`; ``'sum'``: their sum; ``'mean'``: the sum divided by
            :math:`\sum S` over the batch, which is the official normalisation.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`; teacher_logits: :math:`(N, K, H, W)`
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'``

    Returns:
        The loss of this level; the paper sums levels (multiply by its weight, 0.005 for
        RetinaNet, yourself or through ``loss_weight``).

    Notes:
        The official detector also ramps both FRS terms linearly over the first 500 iterations;
        that schedule belongs to the training loop and is not part of the loss.

    Reference:
        Zhixing Du, Rui Zhang, Ming Chang, Xishan Zhang, Shaoli Liu, Tianshi Chen, Yunji Chen.
        "Distilling Object Detectors with Feature Richness". NeurIPS 2021. arXiv:2111.00674.
        Official code: duzhixing/FRS@decd60c (``detectors/distill_frs_single.py``,
        ``Distilling_FRS_Single.forward_train``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> frs_feature_loss(s, t, torch.randn(2, 9, 6, 10)).shape
        torch.Size([])
    """
    check_feature_pair(student, teacher)
    _check_logits_match(teacher_logits, teacher)
    check_reduction(reduction)
    richness = feature_richness(teacher_logits)
    error = (upcast(student) - upcast(teacher.detach())).square() * richness[:, None]
    return reduce_loss(error, reduction, avg_factor=richness.sum()).to(student.dtype)


def frs_cls_loss(student_logits: Tensor, teacher_logits: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""FRS head distillation on one level: richness-weighted binary cross-entropy between logits.

    .. math::
        \mathcal{L}_{head} = \frac{\sum_{n,c,h,w} S_{n,h,w}\,
            \mathrm{BCE}\big(\sigma(z^S_{n,c,h,w}),\, \sigma(z^T_{n,c,h,w})\big)}{\sum_{n,h,w} S_{n,h,w}}

    with :math:`\mathrm{BCE}(p, q) = -q \log p - (1 - q) \log(1 - p)` and :math:`S` the teacher's
    feature richness (:func:`feature_richness`).

    Args:
        student_logits: student classification logits of one level.
        teacher_logits: teacher classification logits of the same shape (detached inside).
        reduction: ``'none'``: the ``(N, K, H, W)`` weighted cross-entropies; ``'sum'``: their sum;
            ``'mean'``: the sum divided by :math:`\sum S`, the official normalisation.

    Shape:
        - student_logits, teacher_logits: :math:`(N, K, H, W)`
        - output: scalar, or :math:`(N, K, H, W)` with ``reduction='none'``

    Returns:
        The loss of this level (official weight 0.02 for RetinaNet).

    Notes:
        The cross-entropy is computed from logits (``softplus(z^S) - sigma(z^T) z^S``), which is
        exact and stays finite for extreme logits. The official code takes the logs of sigmoids
        through ``F.binary_cross_entropy``, which clamps each log at -100, so the two differ only
        where a student logit exceeds about 100 in magnitude. The loss is the cross-entropy, not the
        KL divergence, so it does not vanish when the student equals the teacher (its gradient does).

    Reference:
        Zhixing Du, Rui Zhang, Ming Chang, Xishan Zhang, Shaoli Liu, Tianshi Chen, Yunji Chen.
        "Distilling Object Detectors with Feature Richness". NeurIPS 2021. arXiv:2111.00674.
        Official code: duzhixing/FRS@decd60c (``detectors/distill_frs_single.py``,
        ``Distilling_FRS_Single.forward_train``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 9, 6, 10), torch.randn(2, 9, 6, 10)
        >>> frs_cls_loss(s, t).shape
        torch.Size([])
    """
    check_feature_pair(student_logits, teacher_logits)
    check_reduction(reduction)
    richness = feature_richness(teacher_logits)
    z_s = upcast(student_logits)
    target = torch.sigmoid(upcast(teacher_logits.detach()))
    bce = F.binary_cross_entropy_with_logits(z_s, target, reduction="none") * richness[:, None]
    return reduce_loss(bce, reduction, avg_factor=richness.sum()).to(student_logits.dtype)


@register_loss("frs_feature", function=frs_feature_loss)
class FRSFeatureLoss(nn.Module):
    """Module twin of :func:`frs_feature_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student: Tensor, teacher: Tensor, teacher_logits: Tensor) -> Tensor:
        return self.loss_weight * frs_feature_loss(student, teacher, teacher_logits, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"


@register_loss("frs_cls", function=frs_cls_loss)
class FRSClsLoss(nn.Module):
    """Module twin of :func:`frs_cls_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return self.loss_weight * frs_cls_loss(student_logits, teacher_logits, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
