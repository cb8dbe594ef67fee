"""CCKT-Det: cyclic contrastive knowledge transfer from a VLM to a DETR's query embeddings, Zhang et al., ICLR 2025."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_background_index, check_labels, check_options, check_shapes
from .._dtypes import upcast
from .._registry import register_loss

__all__: list[str] = []


def cckt_det_loss(
    student: Tensor,
    teacher: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.07,
    background_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    r"""CCKT-Det semantic alignment: a two-way multi-positive contrast between queries and the VLM's class guidance.

    With :math:`q_i` the decoder's embedding of query :math:`i` (over the :math:`N Q` queries of
    the batch, L2-normalised), :math:`g_k` the frozen VLM's regional embedding of class
    :math:`k` (one per class, as given), :math:`s_{ik} = \hat q_i \cdot g_k / \tau`, and
    :math:`P_{ik} = 1` when query :math:`i` is matched to a ground truth of class :math:`k`:

    .. math::
        \mathcal{L}_{q \to g} = \sum_{i:\,\exists k\,P_{ik}} \Bigl(
            -\frac{\sum_k P_{ik} s_{ik}}{\sum_k P_{ik}} + \log \sum_{k=1}^{K} e^{s_{ik}} \Bigr), \qquad
        \mathcal{L}_{g \to q} = \sum_{k:\,\exists i\,P_{ik}} \Bigl(
            -\frac{\sum_i P_{ik} s_{ik}}{\sum_i P_{ik}} + \log \sum_{i=1}^{NQ} e^{s_{ik}} \Bigr),

    .. math::
        \mathcal{L} = \frac{\tau}{2} \bigl(\mathcal{L}_{q \to g} + \mathcal{L}_{g \to q}\bigr)

    Args:
        student: ``(N, Q, D)`` query embeddings of the student DETR's decoder (``pred_embed``;
            normalised inside).
        teacher: ``(K, D)`` the VLM's regional embeddings of the ``K`` foreground classes, in
            label order with the background removed (used as given, as the official code does:
            its CLIP image embeddings are not normalised; detached inside).
        labels: ``(N, Q)`` integer labels in ``[0, K]``: the class of the ground truth each query
            is matched to (Hungarian matching, e.g. :func:`kdimpl.ops.hungarian_match`), and
            ``background_index`` for unmatched queries.
        temperature: :math:`\tau` (official ``--temperature`` 0.07).
        background_index: the label of unmatched queries (0: torchvision's convention; the
            official code puts it last: -1).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: none, the official
            code sums the terms over the matched queries and the classes present in the batch
            (times :math:`\tau / 2`), so ``'sum'`` gives the same value; ``'none'`` returns the
            ``N Q + K`` terms (the per-query terms, zero for unmatched queries, then the
            per-class terms, zero for absent classes), each times :math:`\tau / 2`, whose sum
            is the loss.

    Shape:
        - student: :math:`(N, Q, D)`; teacher: :math:`(K, D)`; labels: :math:`(N, Q)`
        - output: scalar, or :math:`(NQ + K,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Chuhan Zhang, Chaoyang Zhu, Pingcheng Dong, Long Chen, Dong Zhang. "Cyclic Contrastive
        Knowledge Transfer for Open-Vocabulary Object Detection". ICLR 2025. arXiv:2503.11005.
        Official code: ZCHUHan/CCKT-Det@ad00366 ``models/set_criterion.py::SetCriterion.loss_feat_alignment``
        (matched by the parity tests).

    Example:
        >>> import torch
        >>> student, teacher = torch.randn(2, 10, 16), torch.randn(4, 16)
        >>> labels = torch.zeros(2, 10, dtype=torch.long)  # 0: unmatched
        >>> labels[0, 3], labels[1, 7] = 2, 4
        >>> cckt_det_loss(student, teacher, labels).shape
        torch.Size([])

    Notes:
        Only the alignment loss is covered; the official criterion adds it to Deformable DETR's
        focal and box losses on every decoder layer (``aux_outputs``) with the same matching,
        with weight 1 (use the twin's ``loss_weight``). The official code samples, at each call,
        one stored regional embedding per class from the VLM's crops of that class: pass the
        sampled rows as ``teacher``. It divides the positive terms by ``count + 1e-6``; the
        count itself here (at least 1 wherever it is used), a relative difference of
        :math:`10^{-6}` on the positive terms. As released, ``SetCriterion.__init__`` cannot run
        (it unpacks the guidance dict into ``self`` and never sets ``regional_feats``); the
        parity tests ran ``loss_feat_alignment`` on an object carrying the intended attributes.

        The class-to-query term takes the log-sum-exp over all queries of the batch, so the
        loss couples the images (``distributed="batch"``): under ``DistributedDataParallel`` each
        process contrasts its own queries only, and the sum over the batch is not normalised.
    """
    check_shapes(student=(student, "N Q D"), teacher=(teacher, "K D"), labels=(labels, "N Q int"))
    num_classes = teacher.shape[0]
    check_labels(labels, num_classes + 1)
    check_options(temperature=temperature, reduction=reduction)
    bg = check_background_index(background_index, num_classes + 1)
    labels = labels.long()
    foreground = labels != bg
    class_index = torch.where(labels > bg, labels - 1, labels)  # the guidance row, background removed
    positive = F.one_hot(class_index.clamp(max=num_classes - 1).flatten(), num_classes).to(torch.bool)
    positive = positive & foreground.flatten()[:, None]  # (NQ, K)
    queries = F.normalize(upcast(student).flatten(0, 1), dim=-1)
    scores = queries @ upcast(teacher.detach()).T / temperature  # (NQ, K)
    pos = torch.where(positive, scores, 0.0)
    count_q, count_g = positive.sum(1), positive.sum(0)
    to_guidance = -pos.sum(1) / count_q.clamp(min=1) + scores.logsumexp(1)
    to_queries = -pos.sum(0) / count_g.clamp(min=1) + scores.logsumexp(0)
    terms = torch.cat([torch.where(count_q > 0, to_guidance, 0.0), torch.where(count_g > 0, to_queries, 0.0)])
    terms = terms * (temperature / 2)
    if reduction == "none":
        return terms.to(student.dtype)
    return terms.sum().to(student.dtype)


@register_loss("cckt_det", function=cckt_det_loss, distributed="batch")
class CCKTDetLoss(LossModule):
    """Module twin of :func:`cckt_det_loss`; ``loss_weight`` multiplies the result (official 1)."""

    def __init__(
        self, *, temperature: float = 0.07, background_index: int = 0, reduction: str = "mean", loss_weight: float = 1.0
    ) -> None:
        super().__init__(temperature=temperature, background_index=background_index, reduction=reduction,
                         loss_weight=loss_weight)
