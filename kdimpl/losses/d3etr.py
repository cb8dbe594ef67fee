"""D³ETR: decoder distillation for detection transformers with MixMatcher, Chen et al., IJCAI 2024.

The student's decoder runs two groups of queries that share the decoder but do not attend to each
other: its own queries, whose outputs are matched to the teacher's at every decoder layer by
bipartite matching (*Adaptive Matching*, :func:`d3etr_match`), and the teacher's learned queries,
whose outputs correspond to the teacher's one to one (*Fixed Matching*, ``match=None``). On the
matched pairs D³ETR distils the decoder predictions (:func:`d3etr_pred_loss`) and the self- and
cross-attention maps (:func:`d3etr_self_attention_loss`, :func:`d3etr_cross_attention_loss`)::

    matches = [d3etr_match(s, t, sb, tb) for s, t, sb, tb in zip(s_logits, t_logits, s_boxes, t_boxes)]
    adaptive = (multilevel_loss(d3etr_pred_loss, s_logits, t_logits, s_boxes, t_boxes, matches)
                + multilevel_loss(d3etr_self_attention_loss, s_self, t_self, matches)
                + multilevel_loss(d3etr_cross_attention_loss, s_cross, t_cross, matches))
    fixed = (multilevel_loss(d3etr_pred_loss, g_logits, t_logits, g_boxes, t_boxes)
             + multilevel_loss(d3etr_self_attention_loss, g_self, t_self)
             + multilevel_loss(d3etr_cross_attention_loss, g_cross, t_cross))

over lists of per-layer outputs (``g_*``: the student decoder's outputs for the teacher's queries).

No official code has been released, and the paper's equations could not be read for this
implementation (only its abstract and figure caption): the loss forms, normalisations and weights
below are this package's DETR-style choices, marked as such in each docstring.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..ops import detr_match_cost, hungarian_match
from .detrdistill import _matched_pred_terms

__all__ = ["d3etr_match"]


def d3etr_match(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    *,
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> Tensor:
    r"""D³ETR's Adaptive Matching: the teacher query matched to each student query at one decoder layer.

    Bipartite (Hungarian) matching of the student's predictions to the teacher's, with the DETR cost
    and the teacher's predictions as targets (:func:`kdimpl.ops.detr_match_cost`, soft-BCE class
    cost on :math:`\sigma(z^T)`, L1 and GIoU of the normalised boxes). Fixed Matching (the student
    decoder's outputs for the teacher's own queries) is the identity and needs no call: pass
    ``match=None`` to the losses.

    Args:
        student_logits: ``(N, Q, K)`` the student's sigmoid class logits of the layer.
        teacher_logits: ``(N, T, K)`` the teacher's logits of the same layer.
        student_boxes: ``(N, Q, 4)`` the student's boxes ``cx, cy, w, h`` normalised.
        teacher_boxes: ``(N, T, 4)`` the teacher's boxes.
        class_weight: weight of the class cost.
        l1_weight: weight of the L1 cost.
        giou_weight: weight of the GIoU cost.

    Returns:
        ``(N, Q)`` long: the teacher query matched to each student query (``-1`` when ``Q > T``
        leaves it unmatched); no gradient.

    Example:
        >>> import torch
        >>> logits, boxes = torch.randn(2, 5, 3), torch.rand(2, 5, 4)
        >>> d3etr_match(logits, logits, boxes, boxes)
        tensor([[0, 1, 2, 3, 4],
                [0, 1, 2, 3, 4]])
    """
    check_shapes(
        student_logits=(student_logits, "N Q K"),
        teacher_logits=(teacher_logits, "N T K"),
        student_boxes=(student_boxes, "N Q 4"),
        teacher_boxes=(teacher_boxes, "N T 4"),
    )
    with torch.no_grad():
        z_s = upcast(student_logits.detach())
        q_t = teacher_logits.detach().to(z_s.dtype).sigmoid()
        cost = detr_match_cost(z_s, student_boxes.detach().to(z_s.dtype), q_t, teacher_boxes.detach().to(z_s.dtype),
                               class_cost="bce", class_weight=class_weight, l1_weight=l1_weight,
                               giou_weight=giou_weight)
        return hungarian_match(cost)


def _identity(batch: int, queries: int, device) -> Tensor:
    return torch.arange(queries, device=device).expand(batch, queries)


def d3etr_pred_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    match: Tensor | None = None,
    *,
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""D³ETR's prediction distillation on the MixMatcher pairs of one decoder layer.

    With :math:`\pi(s)` the teacher query paired with student query :math:`s` (Adaptive Matching:
    :func:`d3etr_match`; Fixed Matching: :math:`\pi(s) = s`):

    .. math::
        L = \frac{1}{N_m} \sum_s \Big[\lambda_{cls} \sum_c \mathrm{BCE}\big(z^S_{sc}, \sigma(z^T_{\pi(s)c})\big)
            + \lambda_{L1} \lVert b^S_s - b^T_{\pi(s)} \rVert_1
            + \lambda_{GIoU} \big(1 - \mathrm{GIoU}(b^S_s, b^T_{\pi(s)})\big)\Big]

    over the paired queries (an unpaired student query learns the class target 0), :math:`N_m` the
    number of pairs. The form (soft binary cross-entropy on sigmoid logits, DETR's L1/GIoU
    weights) is this package's choice; see the module docstring.

    Args:
        student_logits: :math:`z^S`, the student's sigmoid class logits of one decoder layer (its own
            queries for Adaptive Matching, the teacher's queries for Fixed Matching).
        teacher_logits: :math:`z^T`, the teacher's logits of the same layer (detached inside).
        student_boxes: :math:`b^S`, the student's boxes ``cx, cy, w, h`` normalised.
        teacher_boxes: :math:`b^T`, the teacher's boxes (detached inside).
        match: :math:`\pi`, ``(N, Q)`` long from :func:`d3etr_match` (``-1``: unpaired); ``None``:
            Fixed Matching, query ``s`` with query ``s`` (then ``Q = T``).
        class_weight: :math:`\lambda_{cls}`.
        l1_weight: :math:`\lambda_{L1}`.
        giou_weight: :math:`\lambda_{GIoU}`.
        reduction: ``'mean'`` (default) applies the paper's own normalisation as assumed here
            (unverified): the sum divided by the number of pairs :math:`N_m` (at least 1); use
            ``reduction='none'`` and ``.mean()`` for the mean over student queries; ``'sum'``: the
            sum; ``'none'``: the ``(N, Q)`` per-query terms.

    Shape:
        - student_logits: :math:`(N, Q, K)`; teacher_logits: :math:`(N, T, K)`
        - student_boxes: :math:`(N, Q, 4)`; teacher_boxes: :math:`(N, T, 4)`; match: :math:`(N, Q)`
        - output: scalar, or :math:`(N, Q)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Xiaokang Chen, Jiahui Chen, Yan Liu, Jiaxiang Tang, Gang Zeng. "D³ETR: Decoder Distillation for
        Detection Transformer". IJCAI 2024. arXiv:2211.09768. No official code (announced, not released).

    Example:
        >>> import torch
        >>> s_logits, t_logits = torch.randn(2, 300, 80), torch.randn(2, 300, 80)
        >>> s_boxes, t_boxes = torch.rand(2, 300, 4), torch.rand(2, 300, 4)
        >>> match = d3etr_match(s_logits, t_logits, s_boxes, t_boxes)
        >>> d3etr_pred_loss(s_logits, t_logits, s_boxes, t_boxes, match).shape
        torch.Size([])

    Notes:
        Unverified: the paper's equations could not be read here; the abstract and figure caption
        fix only what is distilled (decoder predictions on MixMatcher pairs at every layer).
    """
    check_shapes(
        student_logits=(student_logits, "N Q K"),
        teacher_logits=(teacher_logits, "N T K"),
        student_boxes=(student_boxes, "N Q 4"),
        teacher_boxes=(teacher_boxes, "N T 4"),
    )
    if match is None:
        check_shapes(student_logits=(student_logits, "N Q K"), teacher_logits=(teacher_logits, "N Q K"))
        match = _identity(student_logits.shape[0], student_logits.shape[1], student_logits.device)
    check_shapes(student_logits=(student_logits, "N Q K"), match=(match, "N Q int"))
    check_options(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight, reduction=reduction)
    z_s = upcast(student_logits)
    q_t = teacher_logits.detach().to(z_s.dtype).sigmoid()
    terms = _matched_pred_terms(z_s, student_boxes.to(z_s.dtype), q_t, teacher_boxes.detach().to(z_s.dtype), match,
                                class_weight, l1_weight, giou_weight)
    return reduce_loss(terms, reduction, avg_factor=(match >= 0).sum().clamp(min=1)).to(student_logits.dtype)


@register_loss("d3etr_pred", function=d3etr_pred_loss)
class D3ETRPredLoss(LossModule):
    """Module twin of :func:`d3etr_pred_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        class_weight: float = 1.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight,
                         reduction=reduction, loss_weight=loss_weight)


def _attention_kl(student: Tensor, teacher: Tensor, match: Tensor | None, permute_keys: bool,
                  reduction: str) -> Tensor:
    """KL(softmax(teacher row) || softmax(student row)) per (image, head, student query), teacher re-indexed."""
    n, heads, queries, _ = student.shape
    if match is None:
        match = _identity(n, queries, student.device)
    check_shapes(student=(student, "N H Q S"), match=(match, "N Q int"))
    check_options(reduction=reduction)
    s = upcast(student)
    t = teacher.detach().to(s.dtype)
    paired = match >= 0
    index = match.clamp(min=0)
    rows = index[:, None, :, None].expand(-1, heads, -1, t.shape[-1])
    t = torch.gather(t, 2, rows)  # teacher row of each student query
    if permute_keys:
        t = torch.gather(t, 3, index[:, None, None, :].expand(-1, heads, queries, -1))
    log_t, log_s = t.log_softmax(dim=-1), s.log_softmax(dim=-1)
    p_t = log_t.exp()
    # a key the teacher gives probability 0 (a masked key, score -inf) adds nothing
    kl = torch.where(p_t == 0, p_t.new_zeros(()), p_t * (log_t - log_s)).sum(dim=-1)  # (N, H, Q)
    kl = torch.where(paired[:, None, :], kl, kl.new_zeros(()))
    if reduction == "none":
        return kl.to(student.dtype)
    total = kl.sum()
    if reduction == "mean":
        total = total / (paired.sum() * heads).clamp(min=1)
    return total.to(student.dtype)


def d3etr_self_attention_loss(
    student_attention: Tensor,
    teacher_attention: Tensor,
    match: Tensor | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""D³ETR's self-attention distillation on the MixMatcher pairs of one decoder layer.

    The teacher's self-attention map is re-indexed on **both** query axes by the pairing
    :math:`\pi`, so that student query :math:`s` attending to student query :math:`s'` is compared
    with the teacher's :math:`\pi(s)` attending to :math:`\pi(s')`:

    .. math::
        L = \frac{1}{H N_m} \sum_{h, s} \mathrm{KL}\big(A^T_{h, \pi(s), \pi(\cdot)} \,\|\, A^S_{h, s, \cdot}\big)

    over heads :math:`h` and paired student queries :math:`s` (:math:`N_m` pairs). The divergence
    (KL of the softmax attention maps, teacher as target) and the normalisation are this
    package's choices; see the module docstring.

    Args:
        student_attention: the student's self-attention scores of one decoder layer, per head,
            before the softmax over keys (:math:`A^S` is their softmax; for probabilities ``p``
            pass ``p.log()``).
        teacher_attention: the teacher's scores (detached inside); :math:`A^T` is their softmax.
        match: :math:`\pi`, ``(N, Q)`` long from :func:`d3etr_match`; it must pair every query (the
            same number of queries on both sides); ``None``: Fixed Matching (identity).
        reduction: ``'mean'`` (default) applies the paper's own normalisation as assumed here
            (unverified): the KL summed over keys, averaged over heads and paired queries;
            ``'sum'``: the sum; ``'none'``: the ``(N, H, Q)`` per-row divergences.

    Shape:
        - student_attention, teacher_attention: :math:`(N, H, Q, Q)`; match: :math:`(N, Q)`
        - output: scalar, or :math:`(N, H, Q)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_attention``.

    Reference:
        Xiaokang Chen, Jiahui Chen, Yan Liu, Jiaxiang Tang, Gang Zeng. "D³ETR: Decoder Distillation for
        Detection Transformer". IJCAI 2024. arXiv:2211.09768. No official code (announced, not released).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 300, 300), torch.randn(2, 8, 300, 300)
        >>> d3etr_self_attention_loss(s, t).shape
        torch.Size([])

    Notes:
        Unverified (see the module docstring). The divergence is computed from the scores in
        log space (``log_softmax``); keys the teacher masks (score ``-inf``) add nothing.
    """
    check_shapes(student_attention=(student_attention, "N H Q Q"), teacher_attention=(teacher_attention, "N H Q Q"))
    return _attention_kl(student_attention, teacher_attention, match, True, reduction)


@register_loss("d3etr_self_attention", function=d3etr_self_attention_loss)
class D3ETRSelfAttentionLoss(LossModule):
    """Module twin of :func:`d3etr_self_attention_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)


def d3etr_cross_attention_loss(
    student_attention: Tensor,
    teacher_attention: Tensor,
    match: Tensor | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""D³ETR's cross-attention distillation on the MixMatcher pairs of one decoder layer.

    Each student query's attention over the image positions (or, for deformable attention, over
    its sampling points) learns the paired teacher query's:

    .. math::
        L = \frac{1}{H N_m} \sum_{h, s} \mathrm{KL}\big(A^T_{h, \pi(s), \cdot} \,\|\, A^S_{h, s, \cdot}\big)

    over heads and paired student queries. The divergence and normalisation are this package's
    choices; see the module docstring.

    Args:
        student_attention: the student's cross-attention scores of one decoder layer, per head,
            before the softmax over the ``S`` keys (:math:`A^S` is their softmax; for probabilities
            ``p`` pass ``p.log()``).
        teacher_attention: the teacher's scores over the same keys (detached inside).
        match: :math:`\pi`, ``(N, Q)`` long from :func:`d3etr_match` (``-1``: unpaired, skipped);
            ``None``: Fixed Matching (identity).
        reduction: ``'mean'`` (default) applies the paper's own normalisation as assumed here
            (unverified): the KL summed over keys, averaged over heads and paired queries;
            ``'sum'``: the sum; ``'none'``: the ``(N, H, Q)`` per-row divergences.

    Shape:
        - student_attention: :math:`(N, H, Q, S)`; teacher_attention: :math:`(N, H, T, S)`;
          match: :math:`(N, Q)`
        - output: scalar, or :math:`(N, H, Q)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_attention``.

    Reference:
        Xiaokang Chen, Jiahui Chen, Yan Liu, Jiaxiang Tang, Gang Zeng. "D³ETR: Decoder Distillation for
        Detection Transformer". IJCAI 2024. arXiv:2211.09768. No official code (announced, not released).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 300, 850), torch.randn(2, 8, 300, 850)
        >>> d3etr_cross_attention_loss(s, t).shape
        torch.Size([])

    Notes:
        Unverified (see the module docstring). Student and teacher must attend over the same keys
        (the same feature-map size).
    """
    check_shapes(student_attention=(student_attention, "N H Q S"), teacher_attention=(teacher_attention, "N H T S"))
    if match is None:
        check_shapes(student_attention=(student_attention, "N H Q S"), teacher_attention=(teacher_attention, "N H Q S"))
    return _attention_kl(student_attention, teacher_attention, match, False, reduction)


@register_loss("d3etr_cross_attention", function=d3etr_cross_attention_loss)
class D3ETRCrossAttentionLoss(LossModule):
    """Module twin of :func:`d3etr_cross_attention_loss`; ``loss_weight`` multiplies the result."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
