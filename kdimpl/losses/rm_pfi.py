"""Rank mimicking (RM) and prediction-guided feature imitation (PFI), Li et al., AAAI 2022.

- :func:`rm_loss` distils how the teacher ranks the candidate boxes (positive anchors) of each
  object. Candidates of one object lie on every FPN level, so it takes the head outputs of all
  levels at once: :func:`rm_concat_levels` turns mmdetection-layout per-level logits into one
  ``(N, P, K)`` tensor, in the order of the assigner's ``(N, P)`` results.
- :func:`pfi_loss` imitates features where the predictions of teacher and student differ, one
  level at a time (``multilevel_loss(pfi_loss, students, teachers, student_logits, teacher_logits)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._base import LossModule
from .._checks import (
    _tracing,
    check_feature_pair,
    check_labels,
    check_options,
    check_same_shape,
    check_shape,
    check_shapes,
)
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from .tadf import _masked_squared_error, _MaskedSquaredError

__all__ = ["rm_concat_levels"]


def rm_concat_levels(logits: Sequence[Tensor], num_classes: int) -> Tensor:
    """Per-level ``(N, A * K, H, W)`` head outputs as one ``(N, P, K)`` tensor, ``P = sum H W A``.

    The order is level by level, then row-major over cells, then anchors: the order of
    mmdetection's flattened anchors and assign results.

    Example:
        >>> import torch
        >>> rm_concat_levels([torch.randn(2, 9 * 3, 4, 6), torch.randn(2, 9 * 3, 2, 3)], 3).shape
        torch.Size([2, 270, 3])
    """
    flat = []
    for level in logits:
        n, channels, h, w = level.shape
        flat.append(level.permute(0, 2, 3, 1).reshape(n, h * w * (channels // num_classes), num_classes))
    return torch.cat(flat, dim=1)


def _padded_labels(gt_labels: Sequence[Tensor] | Tensor, batch: int, device) -> Tensor:
    """``(N, M)`` labels, padded with 0, from per-image ``(M_i,)`` tensors (or a padded tensor)."""
    if isinstance(gt_labels, Tensor):
        check_shape(gt_labels, "gt_labels", "N M", floating=False)
        return gt_labels.long()
    if not _tracing() and len(gt_labels) != batch:
        raise ValueError(f"gt_labels has {len(gt_labels)} images but the logits have batch size {batch}")
    counts = [len(x) for x in gt_labels]
    labels = torch.zeros((batch, max(counts) if counts else 0), dtype=torch.long, device=device)
    for i, lab in enumerate(gt_labels):  # one loop over images
        labels[i, : len(lab)] = lab.long()
    return labels


def rm_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    assigned_gt: Tensor,
    gt_labels: Sequence[Tensor] | Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""Rank mimicking: the student matches the teacher's distribution over each object's candidates.

    For object :math:`j` of class :math:`c_j`, let :math:`A_j` be the anchors assigned to it and
    :math:`s_a = \sigma(z_{a, c_j})` the classification score of anchor :math:`a` for that class.
    The rank distribution is a softmax of the scores over the candidates, and the student's
    follows the teacher's:

    .. math::
        P_j(a) = \frac{\exp(s_a)}{\sum_{a' \in A_j} \exp(s_{a'})}, \qquad
        L_{RM} = \frac{1}{M} \sum_{j=1}^{M} \sum_{a \in A_j} P^T_j(a) \log \frac{P^T_j(a)}{P^S_j(a)}

    over the :math:`M` objects of the batch that have at least one candidate.

    Args:
        student_logits: ``(N, P, K)`` student classification logits over every anchor of every
            level (:func:`rm_concat_levels`; sigmoid heads: ``K`` foreground classes).
        teacher_logits: the teacher's logits on the same anchors (detached inside).
        assigned_gt: ``(N, P)`` integer index of the object each anchor is assigned to, ``-1`` for
            anchors assigned to none (mmdetection's ``assign_result.gt_inds - 1``, ignored anchors
            included as ``-1``).
        gt_labels: per-image ``(M_i,)`` class indices in ``[0, K)`` of the objects, or a padded
            ``(N, M)`` tensor.
        reduction: ``'mean'`` (default) applies the paper's own normalisation as implemented here
            (see Notes): the sum of the per-object KL divergences divided by :math:`M`, the number of
            objects with candidates (clamped to >= 1), not the element mean; use
            ``reduction='none'`` and ``.mean()`` for the mean over the ``(N, M)`` padded objects. ``'sum'`` sums; ``'none'`` returns the
            ``(N, M)`` per-object divergences (0 for padding and objects without candidates).

    Shape:
        - student_logits, teacher_logits: :math:`(N, P, K)`; assigned_gt: :math:`(N, P)`
        - output: scalar, or :math:`(N, M)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Gang Li, Xiang Li, Yujie Wang, Shanshan Zhang, Yichao Wu, Ding Liang. "Knowledge
        Distillation for Object Detection via Rank Mimicking and Prediction-guided Feature
        Imitation". AAAI 2022. arXiv:2112.04840. No official code.

    Example:
        >>> import torch
        >>> student, teacher = torch.zeros(1, 3, 2), torch.tensor([[[2.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])
        >>> assigned = torch.tensor([[0, 0, -1]])  # anchors 0 and 1 are object 0's candidates
        >>> round(float(rm_loss(student, teacher, assigned, [torch.tensor([0])])), 6)
        0.017802

    Notes:
        Unverified: the paper's text could not be read for this implementation. The scores are
        sigmoid probabilities, as in an unmerged OpenMMLab port (open-mmlab/mmrazor@ae8fe9a,
        ``RankMimicLoss``, not by the authors). That port differs from this function: it sorts
        both score vectors before the softmax (which discards which anchor ranks where), reads the
        student's labels at the teacher's anchors, and averages per image over all objects,
        candidates or not.

        Under ``DistributedDataParallel`` each process divides by its own number of objects with candidates; inside
        :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_shape(student_logits, "student_logits", "N P K")
    check_shape(teacher_logits, "teacher_logits", "N P K")
    check_same_shape(student_logits, teacher_logits, ("student_logits", "teacher_logits"))
    check_shapes(student_logits=(student_logits, "N P K"), assigned_gt=(assigned_gt, "N P int"))
    if not _tracing() and assigned_gt.dtype == torch.bool:
        raise TypeError("assigned_gt must be an integer tensor of object indices (-1: none), got torch.bool")
    check_options(reduction=reduction)
    n, p, num_classes = student_logits.shape
    labels = _padded_labels(gt_labels, n, student_logits.device)
    check_labels(labels, num_classes, "gt_labels")
    m = labels.shape[1]
    assigned = assigned_gt.long()
    positive = assigned >= 0
    # class of each anchor's object (0 for unassigned anchors, which no object uses)
    anchor_labels = labels.gather(1, assigned.clamp(min=0).clamp(max=max(m - 1, 0))) if m else assigned.clamp(min=0)
    index = anchor_labels[..., None]
    s = torch.sigmoid(upcast(student_logits).gather(2, index)[..., 0])  # (N, P)
    t = torch.sigmoid(upcast(teacher_logits.detach()).gather(2, index)[..., 0])
    member = (assigned[:, None, :] == torch.arange(m, device=assigned.device)[None, :, None]) & positive[:, None, :]
    has_candidates = member.any(dim=2)  # (N, M)
    # softmax over each object's candidates: non-members get -inf; objects without candidates get 0
    fill = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    log_p_s = torch.log_softmax(torch.where(member, s[:, None, :], fill), dim=2)
    log_p_t = torch.log_softmax(torch.where(member, t[:, None, :], fill), dim=2)
    terms = torch.where(member, log_p_t.exp() * (log_p_t - log_p_s), torch.zeros_like(log_p_s))
    per_object = terms.sum(dim=2)  # (N, M)
    # only candidates enter the loss, but as everywhere in kdimpl a NaN anywhere gives NaN
    guard = (student_logits.sum(dtype=s.dtype) + teacher_logits.detach().sum(dtype=s.dtype)) * 0
    per_object = per_object + guard
    count = has_candidates.sum().clamp(min=1)
    return reduce_loss(per_object, reduction, avg_factor=count).to(student_logits.dtype)


def pfi_loss(
    student: Tensor,
    teacher: Tensor,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""Prediction-guided feature imitation: feature error weighted by the prediction difference.

    Per cell :math:`(i, j)` of one level, the squared difference of the teacher's and student's
    sigmoid scores (averaged over the head's :math:`A K` outputs, anchors times classes) weights
    the squared feature difference (averaged over the :math:`C` channels):

    .. math::
        P_{ij} = \frac{1}{A K} \sum_{k} \big(\sigma(z^T_{kij}) - \sigma(z^S_{kij})\big)^2, \qquad
        L_{PFI} = \frac{1}{N H W} \sum_{n, i, j} P_{nij} \cdot \frac{1}{C} \sum_{c}
            \big(F^T_{ncij} - F^S_{ncij}\big)^2

    :math:`P` is a weight: no gradient flows through it into the student's head.

    Args:
        student: student features of the level (the neck output feeding the head), already
            projected to the teacher's channels (:class:`kdimpl.ChannelAdapter`) if they differ.
        teacher: teacher features of the same shape (detached inside).
        student_logits: ``(N, A K, H, W)`` the student head's classification logits on this level.
        teacher_logits: the teacher head's logits of the same shape (detached inside).
        reduction: ``'mean'`` (default) applies the paper's own normalisation as implemented here
            (see Notes): the mean over the :math:`N H W` cells, which is also the element mean of the
            ``'none'`` output; ``'sum'``
            sums; ``'none'`` returns the ``(N, H, W)`` per-cell terms.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`; student_logits, teacher_logits: :math:`(N, A K, H, W)`
        - output: scalar, or :math:`(N, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Gang Li, Xiang Li, Yujie Wang, Shanshan Zhang, Yichao Wu, Ding Liang. "Knowledge
        Distillation for Object Detection via Rank Mimicking and Prediction-guided Feature
        Imitation". AAAI 2022. arXiv:2112.04840. No official code.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> zs, zt = torch.randn(2, 9 * 3, 6, 10), torch.randn(2, 9 * 3, 6, 10)
        >>> pfi_loss(s, t, zs, zt).shape
        torch.Size([])
        >>> float(pfi_loss(s, t, zt, zt))  # equal predictions: nothing to imitate
        0.0

    Notes:
        Unverified: the paper's text could not be read for this implementation. An unmerged
        OpenMMLab port (open-mmlab/mmrazor@ae8fe9a, ``PredictionGuidedFeatureImitation``, not by
        the authors) differs: it compares raw logits instead of sigmoid scores, lets gradient flow
        through :math:`P`, and (in its last version) takes per image the L2 norm of the per-cell
        products over the cells divided by :math:`N H W`, averaging over levels.
    """
    check_feature_pair(student, teacher)
    check_shapes(student=(student, "N C H W"), student_logits=(student_logits, "N D H W"),
                 teacher_logits=(teacher_logits, "N D H W"))
    check_options(reduction=reduction)
    s = upcast(student)
    t = upcast(teacher.detach())
    with torch.no_grad():
        weight = (torch.sigmoid(upcast(teacher_logits)) - torch.sigmoid(upcast(student_logits))).square().mean(dim=1)
    # P / C times sum_c (t - s)^2, by TADF's masked error. Benchmark (benchmarks.losses pfi, five levels, CPU,
    # one thread, fwd+bwd, one interleaved run of two rounds): eager 1031/935 ms with its in-place backward vs
    # 1549/1677 ms plain (1.6x), peak 176 vs 569 MiB; torch.compile traces the plain form.
    masked_error = _MaskedSquaredError.apply if not torch.compiler.is_compiling() else _masked_squared_error
    per_cell = masked_error(s, t, weight / s.shape[1])  # (N, H, W)
    return reduce_loss(per_cell, reduction).to(student.dtype)


@register_loss("rm", function=rm_loss, distributed="count")
class RMLoss(LossModule):
    """Module twin of :func:`rm_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)


@register_loss("pfi", function=pfi_loss)
class PFILoss(LossModule):
    """Module twin of :func:`pfi_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
