"""YOLOv6 v3.0 self-distillation, Li et al., 2023: class KD, DFL distribution KD and a cosine-decayed weight.

YOLOv6 trains a model with a pre-trained teacher of the same architecture (self-distillation); for
the N and S models the teacher's and the student's heavy DFL branch is only used in training
(Decoupled Localization Distillation, DLD). The distillation terms are a temperature-softened KL
of the class scores over all anchors, :func:`yolov6_cls_loss`, and of the edge distributions of the
DFL branch on the foreground anchors, :func:`yolov6_dfl_loss`; both are multiplied by
:func:`yolov6_distill_weight`, which decays from 1 to 0.01 over training with a cosine. The head's
outputs are taken as the official loss takes them: the anchors of all FPN levels concatenated::

    weight = yolov6_distill_weight(epoch, max_epoch)
    loss = det_loss + weight * (yolov6_cls_loss(scores, teacher_scores)
                                + 0.5 * yolov6_dfl_loss(distri, teacher_distri, fg_mask))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._base import LossModule
from .._checks import check_feature_pair, check_options, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..distributed import reduce_normaliser

__all__ = ["yolov6_distill_weight"]


def _soft_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last dimension."""
    log_p = torch.log_softmax(upcast(teacher.detach()) / temperature, dim=-1)
    log_q = torch.log_softmax(upcast(student) / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1) * temperature**2


def yolov6_cls_loss(student: Tensor, teacher: Tensor, *, temperature: float = 20.0, reduction: str = "mean") -> Tensor:
    r"""YOLOv6's class distillation: a softened KL of the class scores at every anchor, summed.

    .. math::
        \mathcal{L}^{cls}_{KD} = T^2 \sum_{n, a}
            \mathrm{KL}\big(\operatorname{softmax}(\mathbf{p}^t_{n,a} / T) \,\|\, \operatorname{softmax}(\mathbf{p}^s_{n,a} / T)\big)

    with :math:`\mathbf{p}_{n,a}` the ``K`` class scores of anchor ``a`` of image ``n``.

    Args:
        student: the student's class scores, as the official loss takes them: the head's sigmoid
            outputs (not logits), the anchors of all levels concatenated.
        teacher: the teacher's class scores, same shape (detached inside).
        temperature: :math:`T` (official default 20, ``--temperature``).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the official sum
            over anchors and images (not divided by anything; use ``reduction='none'`` and
            ``.mean()`` for the plain element mean). ``'sum'`` sums too; ``'none'`` returns the
            ``(N, A)`` per-anchor terms.

    Shape:
        - student, teacher: :math:`(N, A, K)`
        - output: scalar, or :math:`(N, A)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Chuyi Li, Lulu Li, Yifei Geng, Hongliang Jiang, Meng Cheng, Bo Zhang, Zaidan Ke, Xiaoming Xu,
        Xiangxiang Chu. "YOLOv6 v3.0: A Full-Scale Reloading". arXiv 2023. arXiv:2301.05586.
        Official code: meituan/YOLOv6@e86a483 ``ComputeLoss.distill_loss_cls``
        (``yolov6/models/losses/loss_distill.py``); matched by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.rand(2, 8400, 80), torch.rand(2, 8400, 80)
        >>> yolov6_cls_loss(s, t).shape
        torch.Size([])
        >>> float(yolov6_cls_loss(t, t))
        0.0

    Notes:
        The official loss applies the softmax to sigmoid scores in :math:`[0, 1]`, so at
        :math:`T = 20` both distributions are close to uniform and each anchor's KL is small; the
        sum over all anchors and :math:`T^2 = 400` make up for it. Reproduced as is (pass logits
        to distil the logits' softmax instead). The sum is over the local batch: under
        ``DistributedDataParallel`` the gradient is the union batch's divided by the world size.
    """
    check_feature_pair(student, teacher, "N A K")
    check_options(temperature=temperature, reduction=reduction)
    return reduce_loss(_soft_kl(student, teacher, temperature), reduction if reduction != "mean" else "sum").to(
        student.dtype
    )


def yolov6_dfl_loss(
    student: Tensor, teacher: Tensor, fg_mask: Tensor, *, temperature: float = 20.0, reduction: str = "mean"
) -> Tensor:
    r"""YOLOv6's DFL distillation (DLD): a softened KL of the edge distributions on the foreground anchors.

    .. math::
        \mathcal{L}^{dfl}_{KD} = \frac{T^2}{4 |\mathcal{P}|} \sum_{(n, a) \in \mathcal{P}} \sum_{e=1}^{4}
            \mathrm{KL}\big(\operatorname{softmax}(\mathbf{d}^t_{n,a,e} / T) \,\|\, \operatorname{softmax}(\mathbf{d}^s_{n,a,e} / T)\big)

    over the foreground anchors :math:`\mathcal{P}` of the label assignment, each edge
    distribution :math:`\mathbf{d}` having ``R = reg_max + 1`` bins.

    Args:
        student: the student's DFL-branch logits, the four edges' ``R`` bins in order along the
            last dimension (``e * R + b``), the anchors of all levels concatenated.
        teacher: the teacher's DFL-branch logits, same shape (detached inside).
        fg_mask: ``(N, A)`` bool (or 0/1) mask of the foreground anchors (YOLOv6: the TAL assigner's ``fg_mask``).
        temperature: :math:`T` (official default 20).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over the
            foreground anchors' edges (the sum divided by 4 times the number of foreground anchors,
            0 without any); use ``reduction='none'`` and ``.mean()`` for the plain element mean.
            ``'sum'`` sums; ``'none'`` returns the ``(N, A, 4)`` terms (0 off the foreground).

    Shape:
        - student, teacher: :math:`(N, A, 4R)`
        - fg_mask: :math:`(N, A)`
        - output: scalar, or :math:`(N, A, 4)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Chuyi Li et al. "YOLOv6 v3.0: A Full-Scale Reloading". arXiv 2023. arXiv:2301.05586.
        Official code: meituan/YOLOv6@e86a483 ``BboxLoss.distill_loss_dfl`` called by
        ``BboxLoss.forward`` (``loss_distill.py``, and ``loss_distill_ns.py`` for the DLD of the N/S
        models); matched by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 100, 4 * 17), torch.randn(2, 100, 4 * 17)
        >>> fg = torch.rand(2, 100) < 0.1
        >>> yolov6_dfl_loss(s, t, fg).shape
        torch.Size([])

    Notes:
        The official code takes the mean over the foreground edges first and then multiplies
        that scalar by each anchor's assigned score and divides by the sum of the assigned
        scores: a factor :math:`\sum_{\mathcal{P}} s_a / \sum_a s_a` that is 1 for the TAL assigner
        (its scores are 0 off the foreground), so the per-anchor score weighting it seems to
        apply is lost; the factor is not reproduced. The official code fixes ``reg_max = 16``
        (``view(-1, 17)``); any ``R`` is accepted here. Pass all levels in one call: through
        :func:`kdimpl.multilevel_loss` each level would be averaged over its own foreground.
        The equation is computed at every anchor (the reference form, used for ``reduction='none'``
        and under ``torch.compile``); otherwise only the foreground anchors are gathered, as the
        official code does, with the same value and gradient (tested). A NaN anywhere in the inputs
        gives a NaN loss in both forms.
    """
    check_feature_pair(student, teacher, "N A C")
    check_shapes(student=(student, "N A C"), fg_mask=(fg_mask, "N A any"))
    check_options(temperature=temperature, reduction=reduction)
    if student.shape[-1] % 4:
        raise ValueError(f"student must have 4 * (reg_max + 1) channels (four edge distributions), got {student.shape[-1]}")
    mask = fg_mask.detach().to(upcast(student).dtype)
    # Benchmark (benchmarks.losses workload: 2 x 89523 anchors x 68 logits, 520 foreground anchors, 13 per box
    # as TAL picks; fwd+bwd CPU time, one thread, one interleaved run): dense 363 ms, gathered 25 ms (official 137 ms).
    dense = reduction == "none" or torch.compiler.is_compiling()
    terms = (_dfl_terms if dense else _dfl_terms_at_foreground)(student, teacher, mask, temperature)
    if reduction != "mean":
        return reduce_loss(terms, reduction).to(student.dtype)
    count = reduce_normaliser(4 * mask.sum())
    return (terms.sum() / count.clamp(min=1)).to(student.dtype)


def _dfl_terms(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """The ``(N, A, 4)`` per-edge terms of :func:`yolov6_dfl_loss` at every anchor, 0 off the foreground."""
    n, a, c = student.shape
    edges = _soft_kl(student.reshape(n, a, 4, c // 4), teacher.reshape(n, a, 4, c // 4), temperature)
    return edges * mask[..., None]


def _dfl_terms_at_foreground(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """:func:`_dfl_terms` computed on the foreground anchors only: their flat terms, then a zero that is NaN
    when any input element is NaN (the dense form's NaN propagation)."""
    rows = mask.nonzero(as_tuple=True)
    c = student.shape[-1]
    guard = (upcast(student.detach()).sum() + upcast(teacher.detach()).sum()) * 0
    edges = _soft_kl(student[rows].reshape(-1, 4, c // 4), teacher[rows].reshape(-1, 4, c // 4), temperature)
    return torch.cat([(edges * mask[rows][:, None]).flatten(), guard[None]])


def yolov6_distill_weight(epoch: float, max_epoch: float, *, final_weight: float = 0.01) -> float:
    r"""YOLOv6's distillation weight at ``epoch``: a cosine decay from 1 to ``final_weight``.

    .. math::
        \alpha(E) = 1 + (\alpha_{end} - 1) \, \frac{1 - \cos(\pi E / E_{max})}{2}

    Example:
        >>> [round(yolov6_distill_weight(epoch, 300), 3) for epoch in (0, 150, 300)]
        [1.0, 0.505, 0.01]
    """
    if max_epoch <= 0:
        raise ValueError(f"max_epoch must be > 0, got {max_epoch}")
    return (1 - math.cos(epoch * math.pi / max_epoch)) / 2 * (final_weight - 1) + 1


@register_loss("yolov6_cls", function=yolov6_cls_loss, distributed="sum")
class YOLOv6ClsLoss(LossModule):
    """Module twin of :func:`yolov6_cls_loss`; ``loss_weight`` multiplies the result (official 1, times the decay)."""

    def __init__(self, *, temperature: float = 20.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)


@register_loss("yolov6_dfl", function=yolov6_dfl_loss, distributed="count")
class YOLOv6DFLLoss(LossModule):
    """Module twin of :func:`yolov6_dfl_loss`; ``loss_weight`` multiplies the result (official 0.5, times the decay)."""

    def __init__(self, *, temperature: float = 20.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)
