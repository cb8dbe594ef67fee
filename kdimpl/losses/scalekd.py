"""ScaleKD, Zhu et al., CVPR 2023: scale-decoupled feature distillation and cross-scale-assistant mimicking.

Verification level: **unverified**. No official code exists and the paper's text could not be read
while writing this; the losses follow secondary descriptions of the paper (total objective
:math:`\\alpha L_{feat} + \\beta L_{cls} + \\gamma L_{bbox} + L_{det}` with
:math:`(\\alpha, \\beta, \\gamma) = (0.07, 0.5, 0.2)` for two-stage and ``(0.01, 0.2, 0.05)`` for
one-stage detectors). The exact distance functions are our choices and are documented per function.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_feature_pair, check_positive, check_reduction, check_tensor
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = [
    "scalekd_feature_loss",
    "ScaleKDFeatureLoss",
    "scalekd_assistant_cls_loss",
    "ScaleKDAssistantClsLoss",
    "scalekd_assistant_box_loss",
    "ScaleKDAssistantBoxLoss",
]

_REFERENCE = """
    Reference:
        Yichen Zhu, Qiqi Zhou, Ning Liu, Zhiyuan Xu, Zhicai Ou, Xiaofeng Mou, Jian Tang. "ScaleKD:
        Distilling Scale-Aware Knowledge in Small Object Detector". CVPR 2023, pp. 19723-19733
        (CVF open access; no arXiv version, no official code; deep-optimization/ScaleKD is an unrelated
        NeurIPS 2024 paper).
"""


def scalekd_feature_loss(
    student: Tensor, teacher: Tensor, *, decoupler: nn.Module | None = None, reduction: str = "mean"
) -> Tensor:
    r"""ScaleKD scale-decoupled feature distillation: L2 between multi-scale embeddings.

    Student and teacher features go through the same scale-decoupled block
    (:class:`kdimpl.adapters.ScaleDecoupledFeature`, ``B`` dilated branches) and the student's
    embeddings regress the teacher's:

    .. math::
        \mathcal{L}_{feat} = \frac{1}{N B C H W} \sum_{n, b, c, h, w}
            \big(E_b(Z^S) - E_b(Z^T)\big)_{n,c,h,w}^2

    Args:
        student: student feature (already mapped to the teacher's channels by an adapter).
        teacher: teacher feature of the same shape (detached inside).
        decoupler: module mapping ``(N, C, H, W)`` to ``(N, B, C, H, W)`` or ``(N, C, H, W)``; ``None``
            compares the features directly. The teacher's embedding is a fixed target (no gradient into
            ``decoupler`` through the teacher side, which would let the block collapse both to a constant).
        reduction: ``'none'``: element-wise squared errors of the embeddings; ``'mean'``: their mean
            (over ``N B C H W``; the paper's normalisation is not known); ``'sum'``: their sum.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or the embedding shape with ``reduction='none'``
{reference}
    Example:
        >>> import torch
        >>> from kdimpl.adapters.scalekd import ScaleDecoupledFeature
        >>> s, t = torch.randn(2, 16, 6, 10), torch.randn(2, 16, 6, 10)
        >>> scalekd_feature_loss(s, t, decoupler=ScaleDecoupledFeature(16)).shape
        torch.Size([])

    Notes:
        Unverified (see the module docstring). The paper applies this to the last backbone stage;
        nothing here depends on which map is passed.
    """
    check_feature_pair(student, teacher)
    check_reduction(reduction)
    s = upcast(student)
    t = upcast(teacher.detach())
    if decoupler is not None:
        s, t = decoupler(s), decoupler(t).detach()
    return reduce_loss((s - t).pow(2), reduction).to(student.dtype)


scalekd_feature_loss.__doc__ = scalekd_feature_loss.__doc__.replace("{reference}", _REFERENCE)


@register_loss("scalekd_feature", function=scalekd_feature_loss)
class ScaleKDFeatureLoss(nn.Module):
    """Module twin of :func:`scalekd_feature_loss`; ``loss_weight`` is the paper's alpha (0.07 / 0.01)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student: Tensor, teacher: Tensor, *, decoupler: nn.Module | None = None) -> Tensor:
        return self.loss_weight * scalekd_feature_loss(student, teacher, decoupler=decoupler, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"


ACTIVATIONS = ("softmax", "sigmoid")


def scalekd_assistant_cls_loss(
    student: Tensor, assistant: Tensor, *, tau: float = 1.0, activation: str = "softmax", reduction: str = "mean"
) -> Tensor:
    r"""ScaleKD classification mimicking: the student's class scores follow the cross-scale assistant's.

    The cross-scale assistant (a detection head on :class:`kdimpl.adapters.MultiScaleCrossAttention`
    features, trained on the ground truth) replaces the teacher's raw, noisy predictions as the target:

    .. math::
        \mathcal{L}_{cls} = \frac{\tau^2}{P} \sum_{p} \mathrm{KL}\big(\sigma(a_p / \tau)\,\|\,\sigma(s_p / \tau)\big)

    with :math:`\sigma` the softmax over classes (``activation='softmax'``) or an element-wise sigmoid
    with the Bernoulli KL summed over classes (``'sigmoid'``, for dense one-stage heads).

    Args:
        student: student class logits, classes last, e.g. ``(N, P, K)``.
        assistant: the assistant's logits of the same shape (detached inside).
        tau: temperature.
        activation: ``'softmax'`` or ``'sigmoid'``.
        reduction: ``'none'``: per-prediction KL times :math:`\tau^2` (shape without the class axis);
            ``'mean'``: its mean over predictions; ``'sum'``: its sum.

    Shape:
        - student, assistant: :math:`(*, K)`; output: scalar, or :math:`(*)` with ``reduction='none'``
{reference}
    Example:
        >>> import torch
        >>> s, a = torch.randn(2, 30, 5), torch.randn(2, 30, 5)
        >>> scalekd_assistant_cls_loss(s, a, activation="sigmoid").shape
        torch.Size([])

    Notes:
        Unverified: the paper's distance for :math:`L_{cls}` was not readable; KL with temperature is our
        choice (log-space, finite for extreme logits).
    """
    check_tensor(student, "student")
    check_tensor(assistant, "assistant")
    _check_same(student, assistant, "assistant")
    check_positive(tau, "tau")
    check_reduction(reduction)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    s = upcast(student) / tau
    a = upcast(assistant.detach()) / tau
    if activation == "softmax":
        kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(a, dim=-1), reduction="none", log_target=True).sum(-1)
    else:
        p_a = a.sigmoid()
        # Bernoulli KL per class; log(1 - sigmoid(x)) = logsigmoid(-x)
        kl = (p_a * (F.logsigmoid(a) - F.logsigmoid(s)) + (1 - p_a) * (F.logsigmoid(-a) - F.logsigmoid(-s))).sum(-1)
    return reduce_loss(kl * tau**2, reduction).to(student.dtype)


scalekd_assistant_cls_loss.__doc__ = scalekd_assistant_cls_loss.__doc__.replace("{reference}", _REFERENCE)


def _check_same(student: Tensor, other: Tensor, name: str) -> None:
    if student.shape != other.shape:
        raise ValueError(
            f"student and {name} must have the same shape, got {tuple(student.shape)} and {tuple(other.shape)}"
        )


@register_loss("scalekd_assistant_cls", function=scalekd_assistant_cls_loss)
class ScaleKDAssistantClsLoss(nn.Module):
    """Module twin of :func:`scalekd_assistant_cls_loss`; ``loss_weight`` is the paper's beta (0.5 / 0.2)."""

    def __init__(
        self, *, tau: float = 1.0, activation: str = "softmax", reduction: str = "mean", loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        check_positive(tau, "tau")
        check_reduction(reduction)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.tau, self.activation, self.reduction, self.loss_weight = tau, activation, reduction, loss_weight

    def forward(self, student: Tensor, assistant: Tensor) -> Tensor:
        return self.loss_weight * scalekd_assistant_cls_loss(
            student, assistant, tau=self.tau, activation=self.activation, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, activation={self.activation!r}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}"
        )


def scalekd_assistant_box_loss(student: Tensor, assistant: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""ScaleKD box mimicking: L1 between the student's and the cross-scale assistant's box regressions.

    .. math::
        \mathcal{L}_{bbox} = \frac{1}{P} \sum_{p} \big\| b^S_p - b^A_p \big\|_1

    Args:
        student: student box regression, coordinates last, e.g. ``(N, P, 4)`` deltas or distances.
        assistant: the assistant's regression of the same shape and encoding (detached inside).
        reduction: ``'none'``: per-prediction L1 (shape without the last axis); ``'mean'``: its mean over
            predictions; ``'sum'``: its sum.

    Shape:
        - student, assistant: :math:`(*, 4)`; output: scalar, or :math:`(*)` with ``reduction='none'``
{reference}
    Example:
        >>> import torch
        >>> scalekd_assistant_box_loss(torch.randn(2, 30, 4), torch.randn(2, 30, 4)).shape
        torch.Size([])

    Notes:
        Unverified: L1 is our choice of distance; the paper's was not readable.
    """
    check_tensor(student, "student")
    check_tensor(assistant, "assistant")
    _check_same(student, assistant, "assistant")
    check_reduction(reduction)
    l1 = (upcast(student) - upcast(assistant.detach())).abs().sum(-1)
    return reduce_loss(l1, reduction).to(student.dtype)


scalekd_assistant_box_loss.__doc__ = scalekd_assistant_box_loss.__doc__.replace("{reference}", _REFERENCE)


@register_loss("scalekd_assistant_box", function=scalekd_assistant_box_loss)
class ScaleKDAssistantBoxLoss(nn.Module):
    """Module twin of :func:`scalekd_assistant_box_loss`; ``loss_weight`` is the paper's gamma (0.2 / 0.05)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, student: Tensor, assistant: Tensor) -> Tensor:
        return self.loss_weight * scalekd_assistant_box_loss(student, assistant, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
