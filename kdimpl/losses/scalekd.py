"""ScaleKD, Zhu et al., CVPR 2023: scale-decoupled feature distillation and cross-scale-assistant mimicking.

Verification level: **unverified**. No official code exists and the paper's text could not be read
while writing this; the losses follow secondary descriptions of the paper (total objective
:math:`\\alpha L_{feat} + \\beta L_{cls} + \\gamma L_{bbox} + L_{det}` with
:math:`(\\alpha, \\beta, \\gamma) = (0.07, 0.5, 0.2)` for two-stage and ``(0.01, 0.2, 0.05)`` for
one-stage detectors). The exact distance functions are our choices and are documented per function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import check_feature_pair, check_options, check_same_shape, check_shape
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..adapters.scalekd import ScaleDecoupledFeature

ACTIVATIONS = ("softmax", "sigmoid")


def scalekd_feature_loss(
    student: Tensor, teacher: Tensor, *, decoupler_student: nn.Module | None = None, reduction: str = "mean"
) -> Tensor:
    r"""ScaleKD scale-decoupled feature distillation: L2 between multi-scale embeddings.

    Student and teacher features go through the same scale-decoupled block :math:`E`
    (:class:`kdimpl.adapters.ScaleDecoupledFeature`, ``B`` dilated branches) and the student's
    embeddings regress the teacher's:

    .. math::
        \mathcal{L}_{feat} = \frac{1}{N B C H W} \sum_{n, b, c, h, w}
            \big(E_b(Z^S) - E_b(Z^T)\big)_{n,c,h,w}^2

    Args:
        student: student feature (already mapped to the teacher's channels by an adapter).
        teacher: teacher feature of the same shape (detached inside).
        decoupler_student: the block :math:`E`, mapping ``(N, C, H, W)`` to ``(N, B, C, H, W)`` or
            ``(N, C, H, W)``; ``None`` compares the features directly. It is a learnable piece of the
            student's side: applied to both features with shared weights, it learns only through the
            student's embedding, since the teacher's embedding is a fixed target (a gradient through
            that side as well would let the block collapse both embeddings to a constant).
            :class:`ScaleKDFeatureLoss` builds and owns one when given ``channels``.
        reduction: ``'mean'`` (default) stands for the paper's own normalisation, which could not be
            read: here the mean over the ``N B C H W`` embedding elements, the element mean of the
            ``'none'`` output; ``'sum'`` sums; ``'none'`` returns the element-wise squared errors of
            the embeddings.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or the embedding shape with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Yichen Zhu, Qiqi Zhou, Ning Liu, Zhiyuan Xu, Zhicai Ou, Xiaofeng Mou, Jian Tang. "ScaleKD:
        Distilling Scale-Aware Knowledge in Small Object Detector". CVPR 2023, pp. 19723-19733
        (CVF open access; no arXiv version, no official code; deep-optimization/ScaleKD is an unrelated
        NeurIPS 2024 paper).
    Example:
        >>> import torch
        >>> from kdimpl.adapters.scalekd import ScaleDecoupledFeature
        >>> s, t = torch.randn(2, 16, 6, 10), torch.randn(2, 16, 6, 10)
        >>> scalekd_feature_loss(s, t, decoupler_student=ScaleDecoupledFeature(16)).shape
        torch.Size([])

    Notes:
        Unverified (see the module docstring). The paper applies this to the last backbone stage;
        nothing here depends on which map is passed, and :class:`kdimpl.MultiLevelLoss` applies it
        to several levels with one block per level.
    """
    check_feature_pair(student, teacher)
    check_options(reduction=reduction)
    s = upcast(student)
    t = upcast(teacher.detach())
    if decoupler_student is not None:
        with torch.no_grad():  # the teacher's embedding is a fixed target: no graph kept for it
            t = decoupler_student(t)
        s = decoupler_student(s)
    return reduce_loss((s - t).square(), reduction).to(student.dtype)


def _check_predictions(student: Tensor, assistant: Tensor, dims: str) -> None:
    check_shape(student, "student", dims)
    check_shape(assistant, "assistant", dims)
    check_same_shape(student, assistant, ("student", "assistant"))


def scalekd_assistant_cls_loss(
    student: Tensor,
    assistant: Tensor,
    *,
    temperature: float = 1.0,
    activation: str = "softmax",
    reduction: str = "mean",
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
        assistant: the cross-scale assistant's logits of the same shape (detached inside). Named
            after the paper's assistant, which is the target here in place of the teacher.
        temperature: :math:`\tau`.
        activation: ``'softmax'`` or ``'sigmoid'``.
        reduction: ``'mean'`` (default) stands for the paper's own normalisation, which could not be
            read: here the mean over the :math:`P` predictions, the element mean of the ``'none'``
            output; ``'sum'`` sums; ``'none'`` returns the per-prediction KL times :math:`\tau^2` (the
            shape without the class axis).

    Shape:
        - student, assistant: :math:`(*, K)`; output: scalar, or :math:`(*)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zhu et al., "ScaleKD: Distilling Scale-Aware Knowledge in Small Object Detector", CVPR 2023
        (no arXiv version; no official code); full entry in :func:`scalekd_feature_loss`.
    Example:
        >>> import torch
        >>> s, a = torch.randn(2, 30, 5), torch.randn(2, 30, 5)
        >>> scalekd_assistant_cls_loss(s, a, activation="sigmoid").shape
        torch.Size([])

    Notes:
        Unverified: the paper's distance for :math:`L_{cls}` was not readable; KL with temperature is our
        choice (log-space, finite for extreme logits).
    """
    _check_predictions(student, assistant, "* K")
    check_options(temperature=temperature, reduction=reduction)
    _check_activation(activation)
    s = upcast(student) / temperature
    a = upcast(assistant.detach()) / temperature
    if activation == "softmax":
        kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(a, dim=-1), reduction="none", log_target=True).sum(-1)
    else:
        p_a = a.sigmoid()
        # Bernoulli KL per class; log(1 - sigmoid(x)) = logsigmoid(-x)
        kl = (p_a * (F.logsigmoid(a) - F.logsigmoid(s)) + (1 - p_a) * (F.logsigmoid(-a) - F.logsigmoid(-s))).sum(-1)
    return reduce_loss(kl * temperature**2, reduction).to(student.dtype)


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def scalekd_assistant_box_loss(student: Tensor, assistant: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""ScaleKD box mimicking: L1 between the student's and the cross-scale assistant's box regressions.

    .. math::
        \mathcal{L}_{bbox} = \frac{1}{P} \sum_{p} \big\| b^S_p - b^A_p \big\|_1

    Args:
        student: student box regression, coordinates last, e.g. ``(N, P, 4)`` deltas or distances.
        assistant: the cross-scale assistant's regression of the same shape and encoding (detached
            inside); see :func:`scalekd_assistant_cls_loss` for the name.
        reduction: ``'mean'`` (default) stands for the paper's own normalisation, which could not be
            read: here the mean over the :math:`P` predictions, the element mean of the ``'none'``
            output; ``'sum'`` sums; ``'none'`` returns the per-prediction L1 (the shape without the
            last axis).

    Shape:
        - student, assistant: :math:`(*, D)`; output: scalar, or :math:`(*)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zhu et al., "ScaleKD: Distilling Scale-Aware Knowledge in Small Object Detector", CVPR 2023
        (no arXiv version; no official code); full entry in :func:`scalekd_feature_loss`.
    Example:
        >>> import torch
        >>> scalekd_assistant_box_loss(torch.randn(2, 30, 4), torch.randn(2, 30, 4)).shape
        torch.Size([])

    Notes:
        Unverified: L1 is our choice of distance; the paper's was not readable.
    """
    _check_predictions(student, assistant, "* D")
    check_options(reduction=reduction)
    l1 = (upcast(student) - upcast(assistant.detach())).abs().sum(-1)
    return reduce_loss(l1, reduction).to(student.dtype)


@register_loss("scalekd_feature", function=scalekd_feature_loss)
class ScaleKDFeatureLoss(LossModule):
    """Module twin of :func:`scalekd_feature_loss`; ``loss_weight`` multiplies the result (the paper's
    alpha, 0.07 two-stage / 0.01 one-stage).

    Args:
        channels: when given, the module builds and owns its ``decoupler_student``, a
            :class:`kdimpl.adapters.ScaleDecoupledFeature` of that many channels.
        dilations: the block's branch dilations (with ``channels``).
        decoupler_student: a block to own instead (exclusive with ``channels``).
    """

    def __init__(
        self,
        *,
        channels: int | None = None,
        dilations: tuple[int, ...] = (1, 2, 3),
        decoupler_student: nn.Module | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        if channels is not None:
            if decoupler_student is not None:
                raise ValueError("pass either decoupler_student or channels, not both")
            decoupler_student = ScaleDecoupledFeature(channels, dilations=dilations)
        super().__init__(decoupler_student=decoupler_student, reduction=reduction, loss_weight=loss_weight)


@register_loss("scalekd_assistant_cls", function=scalekd_assistant_cls_loss)
class ScaleKDAssistantClsLoss(LossModule):
    """Module twin of :func:`scalekd_assistant_cls_loss`; ``loss_weight`` multiplies the result (the
    paper's beta, 0.5 two-stage / 0.2 one-stage)."""

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        activation: str = "softmax",
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        _check_activation(activation)
        super().__init__(temperature=temperature, activation=activation, reduction=reduction, loss_weight=loss_weight)


@register_loss("scalekd_assistant_box", function=scalekd_assistant_box_loss)
class ScaleKDAssistantBoxLoss(LossModule):
    """Module twin of :func:`scalekd_assistant_box_loss`; ``loss_weight`` multiplies the result (the
    paper's gamma, 0.2 two-stage / 0.05 one-stage)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
