"""SSD-Det: spatial self-distillation for detection with inaccurate boxes, Wu et al., ICCV 2023.

SSD-Det refines noisy box annotations with a two-stage multiple-instance-learning box refiner and
trains a Faster R-CNN on the refined boxes. Its two self-distillation modules supervise the
refiner with its own spatial estimates: spatial position self-distillation (SPSD,
:func:`ssd_det_spsd_loss`) regresses every proposal of a bag towards the box of the previous
stage (the noisy annotation, then the stage-I refined box), and the regressed proposals form the
next bag; spatial identity self-distillation (SISD, :func:`ssd_det_sisd_loss`) predicts each
proposal's IoU with the stage-I refined box, and that prediction re-weights the stage-II
selection (:func:`ssd_det_selection_scores`, :func:`ssd_det_merge_boxes`); its head is
:class:`kdimpl.SSDDetIdentityHead`. The refiner's RoI heads, bag sampler and MIL losses stay with the
detector code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_positive, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..ops import aligned_box_iou

__all__ = ["ssd_det_box_deltas", "ssd_det_identity_target", "ssd_det_merge_boxes", "ssd_det_selection_scores"]

#: The refiner's box coder (``DeltaXYWHBBoxCoder`` with zero means) in the official configs.
BOX_STDS = (0.1, 0.1, 0.2, 0.2)


def ssd_det_box_deltas(proposals: Tensor, targets: Tensor, stds: Sequence[float] = BOX_STDS) -> Tensor:
    r"""Faster R-CNN's box deltas of ``targets`` relative to ``proposals``, divided by ``stds``.

    .. math::
        \delta = \Big(\frac{g_x - p_x}{p_w}, \frac{g_y - p_y}{p_h}, \log\frac{g_w}{p_w},
            \log\frac{g_h}{p_h}\Big) \oslash \sigma

    with centres and sizes of xyxy boxes (no ``+1``), as mmdetection's ``bbox2delta`` with zero
    means. Sizes are clamped to the smallest normal float, so a zero-size box gives large finite
    deltas instead of ``inf``.

    Args:
        proposals: ``(..., 4)`` xyxy boxes the deltas are relative to.
        targets: ``(..., 4)`` xyxy boxes (broadcast against ``proposals``).
        stds: :math:`\sigma`, per coordinate (default: the official ``(0.1, 0.1, 0.2, 0.2)``).

    Example:
        >>> import torch
        >>> ssd_det_box_deltas(torch.tensor([0.0, 0.0, 10.0, 10.0]), torch.tensor([1.0, 0.0, 11.0, 20.0]), (1, 1, 1, 1))
        tensor([0.1000, 0.5000, 0.0000, 0.6931])
    """
    tiny = torch.finfo(proposals.dtype).tiny
    p_size = (proposals[..., 2:] - proposals[..., :2]).clamp(min=tiny)
    g_size = (targets[..., 2:] - targets[..., :2]).clamp(min=tiny)
    p_centre = (proposals[..., :2] + proposals[..., 2:]) * 0.5
    g_centre = (targets[..., :2] + targets[..., 2:]) * 0.5
    deltas = torch.cat([(g_centre - p_centre) / p_size, torch.log(g_size / p_size)], dim=-1)
    return deltas / deltas.new_tensor(stds)


def ssd_det_identity_target(proposals: Tensor, boxes: Tensor) -> Tensor:
    r"""SISD's target :math:`T' = (\mathrm{IoU}(p, \hat b^*) - 0.5) / 0.5` in ``[-1, 1]`` for each proposal of a bag.

    Args:
        proposals: ``(G, P, 4)`` xyxy proposals, ``P`` per object.
        boxes: ``(G, 4)`` the stage-I refined box :math:`\hat b^*` of each object.

    Returns:
        ``(G, P)`` targets: 1 for a proposal equal to the box, 0 at IoU 0.5, -1 when disjoint.

    Example:
        >>> import torch
        >>> box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> ssd_det_identity_target(torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]]]), box)
        tensor([[ 1.,  0., -1.]])
    """
    iou = aligned_box_iou(proposals, boxes[:, None, :].expand_as(proposals))
    return (iou - 0.5) / 0.5


def ssd_det_selection_scores(class_scores: Tensor, identity_scores: Tensor) -> Tensor:
    r"""Stage-II selection scores :math:`S^* = S_{cls} \cdot U'`, with :math:`U'` the bag's min-max normalised IoU estimate.

    .. math::
        u = 0.5\,U + 0.5, \qquad U' = \frac{u - \min_p u}{\max_p u - \min_p u}

    Args:
        class_scores: ``(G, P)`` probabilities of each object's class for its proposals (sigmoid of
            the stage-II classifier, padding proposals zeroed).
        identity_scores: ``(G, P)`` the SISD head's outputs :math:`U` (trained towards
            :func:`ssd_det_identity_target`).

    Returns:
        ``(G, P)`` scores for :func:`ssd_det_merge_boxes`.

    Notes:
        The official ``merge_box`` divides by :math:`\max u - \min u` unguarded (a bag whose
        estimates are all equal gives NaN); here such a bag gets :math:`U' = 1`.
    """
    u = identity_scores * 0.5 + 0.5
    low, high = u.amin(dim=1, keepdim=True), u.amax(dim=1, keepdim=True)
    spread = high - low
    normalised = torch.where(spread > 0, (u - low) / spread.clamp(min=torch.finfo(u.dtype).tiny), torch.ones_like(u))
    return class_scores * normalised


def ssd_det_merge_boxes(proposals: Tensor, scores: Tensor, top_k: int = 7) -> Tensor:
    r"""The refined box of each bag: the score-weighted mean of its ``top_k`` best proposals.

    .. math::
        \hat b = \sum_{p \in \mathrm{top}_k} \Big(\frac{s_p}{\sum_{q \in \mathrm{top}_k} s_q} + 10^{-8}\Big) b_p

    (the :math:`10^{-8}` sits outside the fraction, as in the official ``merge_box``).

    Args:
        proposals: ``(G, P, 4)`` xyxy proposals.
        scores: ``(G, P)`` non-negative selection scores (:func:`ssd_det_selection_scores`).
        top_k: proposals kept per bag (official: 7).

    Returns:
        ``(G, 4)`` boxes (detached, as the official pseudo boxes are).

    Notes:
        A bag whose top scores are all 0 averages its top proposals uniformly (the official code
        divides 0 by 0 there).
    """
    top, index = scores.topk(k=min(top_k, scores.shape[1]), dim=1)
    total = top.sum(dim=1, keepdim=True)
    uniform = torch.full_like(top, 1.0 / max(top.shape[1], 1))
    weight = torch.where(total > 0, top / total.clamp(min=torch.finfo(top.dtype).tiny), uniform) + 1e-8
    picked = torch.gather(proposals, 1, index[..., None].expand(-1, -1, 4))
    return (picked * weight[..., None]).sum(dim=1).detach()


def ssd_det_spsd_loss(
    student_deltas: Tensor,
    teacher_boxes: Tensor,
    proposals: Tensor,
    *,
    bag_scores: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Spatial position self-distillation: every proposal of a bag regresses the box of the previous stage.

    .. math::
        \mathcal{L}_{SPSD} = \frac{1}{G P} \sum_{g=1}^{G} w_g \sum_{p=1}^{P} \sum_{k=1}^{4}
            \big|\hat\delta_{g,p,k} - \delta(b_{g,p}, b^*_g)_k\big|

    with :math:`\hat\delta` the regressor's deltas for proposal :math:`b_{g,p}`, :math:`\delta` the
    target deltas (:func:`ssd_det_box_deltas`, standard deviations ``(0.1, 0.1, 0.2, 0.2)``),
    :math:`b^*_g` the noisy annotation (stage I) or the stage-I refined box (stage II), and
    :math:`w_g` the object's weight (1 in stage I; the stage-I bag score in stage II). The decoded
    predictions (detached) form the next bag.

    Args:
        student_deltas: ``(G, P, 4)`` predicted deltas of each of the ``P`` proposals of ``G`` objects.
        teacher_boxes: ``(G, 4)`` xyxy target boxes :math:`b^*` (detached inside).
        proposals: ``(G, P, 4)`` xyxy proposals the deltas refer to.
        bag_scores: optional ``(G,)`` weights :math:`w_g` (stage II: the stage-I bag score of the
            object's class, the official ``dynamic_weight.sum(-1)``; detached inside).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum divided by
            the number of proposals :math:`G P` (the official ``avg_factor``; coordinates are summed),
            so use ``reduction='none'`` and ``.mean()`` for the plain element mean; ``'sum'`` sums;
            ``'none'`` returns the ``(G, P, 4)`` weighted absolute errors.

    Shape:
        - student_deltas, proposals: :math:`(G, P, 4)`; teacher_boxes: :math:`(G, 4)`
        - output: scalar, or :math:`(G, P, 4)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_deltas``; the official configs weigh it by 0.25
        (``loss_weight`` of :class:`SSDDetSPSDLoss`).

    Reference:
        Di Wu, Pengfei Chen, Xuehui Yu, Guorong Li, Zhenjun Han, Jianbin Jiao. "Spatial
        Self-Distillation for Object Detection with Inaccurate Bounding Boxes". ICCV 2023.
        arXiv:2307.12101. Official code: ucas-vg/PointTinyBenchmark@9ffa750 (branch SSD-Det)
        ``EP2BplusHead.forward_train_distill`` with ``Shared2FCInstanceMILHeadEPLUS.loss_distill``
        (stage I) and the regression term of ``Shared2FCInstanceMILHeadEPLUS.loss_mil`` (stage II).

    Example:
        >>> import torch
        >>> proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 12.0, 12.0]]])
        >>> ssd_det_spsd_loss(torch.zeros(1, 2, 4), torch.tensor([[1.0, 1.0, 11.0, 11.0]]), proposals)
        tensor(2.)

    Notes:
        In the official code stage I is the separate ``fc_distill_reg_ori`` regressor on the shared
        two FC layers, applied to the sampled bag; stage II is the stage-I MIL head's regression
        branch (``fc_reg``), trained towards the stage-I refined box and weighted by the bag score.
    """
    check_options(reduction=reduction)
    check_shapes(student_deltas=(student_deltas, "G P 4"), teacher_boxes=(teacher_boxes, "G 4"),
                 proposals=(proposals, "G P 4"))
    if bag_scores is not None:
        check_shapes(bag_scores=(bag_scores, "G"), teacher_boxes=(teacher_boxes, "G 4"))
    deltas = upcast(student_deltas)
    target = ssd_det_box_deltas(upcast(proposals.detach()), upcast(teacher_boxes.detach())[:, None, :])
    loss = (deltas - target).abs()
    if bag_scores is not None:
        loss = loss * upcast(bag_scores.detach())[:, None, None]
    if reduction == "none":
        return loss.to(student_deltas.dtype)
    total = loss.sum()
    if reduction == "mean":
        total = total / max(loss.shape[0] * loss.shape[1], 1)
    return total.to(student_deltas.dtype)


def ssd_det_sisd_loss(
    student_scores: Tensor,
    teacher_boxes: Tensor,
    proposals: Tensor,
    *,
    beta: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Spatial identity self-distillation: each proposal predicts its IoU with the stage-I refined box.

    .. math::
        \mathcal{L}_{SISD} = \frac{1}{G P} \sum_{g, p} \mathrm{SmoothL1}_\beta\big(U_{g,p},\;
            (\mathrm{IoU}(b_{g,p}, \hat b^*_g) - 0.5) / 0.5\big)

    with :math:`U` the identity head's output for the stage-II proposals :math:`b_{g,p}`
    (:class:`kdimpl.SSDDetIdentityHead`: two FC layers of its own on the RoI features, the
    object-relevance enhancement :math:`F^* = F + \frac{1}{P}\sum_p F_p` over the bag, and a linear
    layer) and :math:`\hat b^*`
    the stage-I refined box. :func:`ssd_det_selection_scores` turns :math:`U` into selection weights.

    Args:
        student_scores: ``(G, P)`` identity predictions :math:`U`.
        teacher_boxes: ``(G, 4)`` xyxy stage-I refined boxes :math:`\hat b^*` (detached inside).
        proposals: ``(G, P, 4)`` xyxy stage-II proposals.
        beta: the Smooth L1 threshold :math:`\beta` (official: 1.0).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over the
            :math:`G P` proposals (the official ``SmoothL1Loss`` mean); ``'sum'`` sums; ``'none'``
            returns the ``(G, P)`` losses.

    Shape:
        - student_scores: :math:`(G, P)`; teacher_boxes: :math:`(G, 4)`; proposals: :math:`(G, P, 4)`
        - output: scalar, or :math:`(G, P)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_scores``; the official head weighs it by 5.0 (its
        ``loss_iou`` default, which the shipped configs keep; ``loss_weight`` of
        :class:`SSDDetSISDLoss`).

    Reference:
        Di Wu, Pengfei Chen, Xuehui Yu, Guorong Li, Zhenjun Han, Jianbin Jiao. "Spatial
        Self-Distillation for Object Detection with Inaccurate Bounding Boxes". ICCV 2023.
        arXiv:2307.12101. Official code: ucas-vg/PointTinyBenchmark@9ffa750 (branch SSD-Det)
        ``EP2BplusHead._bbox_forward_train`` (target) with
        ``Shared2FCInstanceMILHeadEPLUS.loss_objectness`` (loss), enabled by ``with_objectness=True``.

    Example:
        >>> import torch
        >>> box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> ssd_det_sisd_loss(torch.tensor([[1.0, 0.0]]), box, torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5]]]))
        tensor(0.)
    """
    check_options(reduction=reduction)
    check_positive(beta, "beta")
    check_shapes(student_scores=(student_scores, "G P"), teacher_boxes=(teacher_boxes, "G 4"),
                 proposals=(proposals, "G P 4"))
    scores = upcast(student_scores)
    target = ssd_det_identity_target(upcast(proposals.detach()), upcast(teacher_boxes.detach()))
    loss = F.smooth_l1_loss(scores, target, beta=beta, reduction="none")
    return reduce_loss(loss, reduction).to(student_scores.dtype)


@register_loss("ssd_det_spsd", function=ssd_det_spsd_loss)
class SSDDetSPSDLoss(LossModule):
    """Module twin of :func:`ssd_det_spsd_loss`; ``loss_weight`` multiplies the result (official: 0.25)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)


@register_loss("ssd_det_sisd", function=ssd_det_sisd_loss)
class SSDDetSISDLoss(LossModule):
    """Module twin of :func:`ssd_det_sisd_loss`; ``loss_weight`` multiplies the result (official: 5.0)."""

    def __init__(self, *, beta: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(beta=beta, reduction=reduction, loss_weight=loss_weight)
