r"""UniKD: universal knowledge distillation for homogeneous or heterogeneous detectors, Lao et al., ICCV 2023.

UniKD distils *extracted knowledge* instead of raw features. Two adaptive knowledge extractors
(:class:`kdimpl.UniKDKnowledgeExtractor`, content and position) turn the teacher's features into
knowledge queries and read knowledge embeddings with them, from the teacher's features and from
the adapted student's. Training has two stages:

1. the extractors (teacher frozen) learn with detection heads on their knowledge
   (:func:`unikd_content_extractor_loss` with bipartite matching,
   :func:`unikd_position_extractor_loss` with the known positive/negative boxes of
   :func:`unikd_sample_position_boxes`);
2. the extractors are frozen and the student learns with its detection loss plus
   :math:`\lambda_1 D(z^S_{ct}, z^T_{ct}) + \lambda_2 D(z^S_{pos}, z^T_{pos})` (:func:`unikd_loss`).

The student's features pass an adapter :math:`\phi` before extraction; the paper's is described as a
linear layer followed by deformable self-attention: :class:`kdimpl.ChannelAdapter` gives the linear
part, the self-attention part is not implemented. No official code was found and the paper's text
could not be read here; this module follows descriptions of the method (see the Notes of each
function for what is assumed).

Reference:
    Shanshan Lao, Guanglu Song, Boxiao Liu, Yu Liu, Yujiu Yang. "UniKD: Universal Knowledge
    Distillation for Mimicking Homogeneous or Heterogeneous Object Detectors". ICCV 2023,
    no arXiv version. No official code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import (
    check_boxes,
    check_image_size,
    check_options,
    check_same_shape,
    check_shape,
    check_shapes,
    check_unit_interval,
)
from .._dtypes import upcast
from .._registry import register_loss
from ..adapters.unikd import _normalised_cxcywh
from ..masks import image_hw, pad_box_values, pad_boxes
from ..ops import (
    aligned_box_iou,
    box_iou,
    cxcywh_box_terms,
    detr_match_cost,
    gather_rows,
    hungarian_match,
    sigmoid_focal_loss,
)

__all__ = [
    "unikd_content_extractor_loss",
    "unikd_position_extractor_loss",
    "unikd_sample_position_boxes",
]


def unikd_loss(
    student: Tensor,
    teacher: Tensor,
    positive_mask: Tensor | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""UniKD's distillation loss on extracted knowledge: MSE balanced between positive and negative queries.

    .. math::
        D(z^S, z^T) = \frac{1}{|P| C} \sum_{q \in P} \lVert z^S_q - z^T_q \rVert^2
            + \frac{1}{|\bar P| C} \sum_{q \notin P} \lVert z^S_q - z^T_q \rVert^2

    over the queries :math:`q` of every image, :math:`P` the positive (object) queries of the
    position extractor; without ``positive_mask`` (the content extractor) it is the plain mean
    squared error. The paper's total is :math:`\lambda_1 D(z^S_{ct}, z^T_{ct}) + \lambda_2
    D(z^S_{pos}, z^T_{pos})` with :math:`\lambda_1 = \lambda_2 = 10` (``loss_weight``).

    Args:
        student: the student's knowledge :math:`z^S = f_e(q, \phi(F^S))`.
        teacher: the teacher's knowledge :math:`z^T = f_e(q, F^T)` (detached inside).
        positive_mask: ``(N, N_q)`` bool, true for queries built from boxes around objects
            (:func:`unikd_sample_position_boxes`); ``None`` treats all queries as one group.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean squared
            error over the positive queries' elements plus the one over the negative queries'
            (a group without queries adds 0); without ``positive_mask``, the element mean. Use
            ``reduction='none'`` and ``.mean()`` for the plain element mean; ``'sum'`` sums
            the squared errors; ``'none'`` returns them, :math:`(N, N_q, C)`.

    Shape:
        - student, teacher: :math:`(N, N_q, C)`; positive_mask: :math:`(N, N_q)`
        - output: scalar, or :math:`(N, N_q, C)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Shanshan Lao, Guanglu Song, Boxiao Liu, Yu Liu, Yujiu Yang. "UniKD: Universal Knowledge
        Distillation for Mimicking Homogeneous or Heterogeneous Object Detectors". ICCV 2023,
        no arXiv version. No official code.

    Example:
        >>> import torch
        >>> s, t = torch.zeros(1, 4, 1), torch.tensor([[[2.0], [0.0], [0.0], [0.0]]])
        >>> positive = torch.tensor([[True, False, False, False]])
        >>> float(unikd_loss(s, t, positive)), float(unikd_loss(s, t))  # balanced vs plain mean
        (4.0, 1.0)

    Notes:
        Unverified: the balanced form (separate means over positive and negative queries,
        summed) and the weights come from descriptions of the paper, not from its text.
    """
    check_options(reduction=reduction)
    check_shape(student, "student", "N Q C")
    check_shape(teacher, "teacher", "N Q C")
    check_same_shape(student, teacher, ("student", "teacher"))
    error = (upcast(student) - upcast(teacher.detach())).square()
    if reduction == "none":
        return error.to(student.dtype)
    if reduction == "sum":
        return error.sum().to(student.dtype)
    if positive_mask is None:
        return (error.sum() / max(error.numel(), 1)).to(student.dtype)
    check_shapes(student=(student, "N Q C"), positive_mask=(positive_mask, "N Q any"))
    per_query = error.sum(dim=-1)
    positive = positive_mask.to(per_query.dtype)
    channels = max(error.shape[-1], 1)
    pos = (per_query * positive).sum() / (positive.sum() * channels).clamp(min=1)
    neg = (per_query * (1 - positive)).sum() / ((1 - positive).sum() * channels).clamp(min=1)
    return (pos + neg).to(student.dtype)


@register_loss("unikd", function=unikd_loss)
class UniKDLoss(LossModule):
    """Module twin of :func:`unikd_loss`; ``loss_weight`` is :math:`\\lambda_1` or :math:`\\lambda_2` (described: 10)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)


# --------------------------------------------------------------------------- position boxes
def _jitter(boxes: Tensor, count: int, scale: float, rng: torch.Generator | None) -> Tensor:
    """``count`` jittered copies of each xyxy box: centre shifted and sides rescaled by up to ``scale``."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    u = torch.rand(boxes.shape[0], count, 4, generator=rng, device=rng.device if rng is not None else boxes.device).to(boxes)
    centre = centre[:, None] + (2 * u[..., :2] - 1) * scale * wh[:, None]
    wh = wh[:, None] * torch.exp((2 * u[..., 2:] - 1) * scale)
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=-1)


def unikd_sample_position_boxes(
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    num_queries: int = 200,
    *,
    positive_ratio: float = 0.5,
    positive_iou: float = 0.6,
    negative_iou: float = 0.4,
    rng: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes for the position extractor: jittered ground truth (positives) and background boxes (negatives).

    Positives are ground-truth boxes with their centre shifted and sides rescaled at random,
    kept when their IoU with that ground truth exceeds ``positive_iou``; negatives are random
    boxes inside the image whose largest IoU with every ground truth stays below
    ``negative_iou``. Ground truths are used in turn, so each gets about the same number of
    positives.

    Args:
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in pixels of the input tensor, or ``(N, M, 4)``.
        image_size: ``(height, width)`` of the input tensor (or ``(N, 2)``).
        num_queries: boxes per image (the described setting: 200).
        positive_ratio: share of positives when the image has objects.
        positive_iou: :math:`\\alpha` (described: 0.6).
        negative_iou: :math:`\\beta` (described: 0.4).
        rng: ``torch.Generator`` for the draws.

    Returns:
        ``(boxes, positive_mask, matched)``: ``(N, num_queries, 4)`` xyxy pixel boxes,
        ``(N, num_queries)`` bool, and ``(N, num_queries)`` long index of the ground truth each
        positive was drawn from (``-1`` for negatives).

    Example:
        >>> import torch
        >>> boxes, positive, matched = unikd_sample_position_boxes(
        ...     [torch.tensor([[10.0, 10.0, 50.0, 40.0]])], (64, 96), 8, rng=torch.Generator().manual_seed(0))
        >>> boxes.shape, int(positive.sum()), matched.tolist()[0][:5]
        (torch.Size([1, 8, 4]), 4, [0, 0, 0, 0, -1])

    Notes:
        Unverified: the IoU thresholds and the number of queries follow descriptions of the
        paper; the jitter range, the share of positives and the background box sizes (sides
        from 2% to 50% of the image) are choices of this implementation. A positive falls back
        to its ground truth after 16 rejected draws, and an image whose objects cover
        everything takes its least-overlapping background candidates.
    """
    check_unit_interval(positive_ratio, "positive_ratio")
    boxes, valid = pad_boxes(gt_boxes)
    n = boxes.shape[0]
    check_boxes(gt_boxes, n)
    check_image_size(image_size, n)
    boxes = boxes.float()
    img_h, img_w = (v.reshape(-1) for v in image_hw(image_size, n, boxes))
    device = rng.device if rng is not None else boxes.device
    out_boxes = torch.zeros(n, num_queries, 4)
    matched = torch.full((n, num_queries), -1, dtype=torch.long)
    trials = 16
    for i in range(n):  # one loop over images
        gt = boxes[i][valid[i]].cpu()
        num_pos = round(num_queries * positive_ratio) if gt.shape[0] else 0
        if num_pos:
            owner = torch.arange(num_pos) % gt.shape[0]
            candidates = _jitter(gt[owner], trials, 0.1, rng).cpu()  # (P, T, 4)
            iou = aligned_box_iou(candidates, gt[owner][:, None].expand_as(candidates))
            good = iou > positive_iou
            first = torch.where(good.any(1), good.float().argmax(1), torch.full_like(owner, -1))
            chosen = torch.where((first >= 0)[:, None], candidates[torch.arange(num_pos), first.clamp(min=0)], gt[owner])
            out_boxes[i, :num_pos] = chosen
            matched[i, :num_pos] = owner
        num_neg = num_queries - num_pos
        h, w = float(img_h[i]), float(img_w[i])
        u = torch.rand(num_neg * trials, 4, generator=rng, device=device).cpu()
        size = (0.02 + 0.48 * u[:, 2:]) * torch.tensor([w, h])
        start = u[:, :2] * (torch.tensor([w, h]) - size)
        candidates = torch.cat([start, start + size], dim=1)
        overlap = box_iou(candidates, gt).amax(dim=1) if gt.shape[0] else torch.zeros(candidates.shape[0])
        # background candidates first (in draw order), then the least-overlapping rest
        order = torch.argsort(overlap + (overlap >= negative_iou).float() * 2, stable=True)
        out_boxes[i, num_pos:] = candidates[order[:num_neg]]
    return out_boxes.to(boxes.device), (matched >= 0).to(boxes.device), matched.to(boxes.device)


# --------------------------------------------------------------------------- extractor objectives
def _targets(
    gt_boxes: Sequence[Tensor] | Tensor, gt_labels: Sequence[Tensor] | Tensor, image_size, n: int, num_classes: int, like: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Padded normalised ``cx, cy, w, h`` targets ``(N, M, 4)``, one-hot labels ``(N, M, K)`` and validity."""
    check_boxes(gt_boxes, n)
    check_image_size(image_size, n)
    boxes, valid = pad_boxes(gt_boxes, batch_size=n)
    boxes, valid = boxes.to(like), valid.to(like.device)
    if boxes.shape[1] == 0:  # no box in the batch: one padding column keeps the gathers defined
        boxes, valid = boxes.new_zeros(n, 1, 4), valid.new_zeros(n, 1)
    labels = pad_box_values(gt_labels, valid, name="gt_labels", num_classes=num_classes)
    target = _normalised_cxcywh(boxes, image_size)
    onehot = F.one_hot(labels, num_classes).to(like.dtype) * valid[..., None].to(like.dtype)
    return target, onehot, valid


def _set_loss(logits, boxes, matched, target, onehot, count, class_weight, l1_weight, giou_weight, alpha, gamma):
    """Focal classification of every query and L1 + GIoU of the matched ones, each divided by ``count``."""
    has = matched >= 0
    index = matched.clamp(min=0)
    cls_target = gather_rows(onehot, index) * has[..., None].to(logits.dtype)
    cls = sigmoid_focal_loss(logits, cls_target, alpha=alpha, gamma=gamma).sum()
    weight = has.to(boxes.dtype)
    l1, giou = cxcywh_box_terms(boxes, gather_rows(target, index))
    l1, giou = (l1 * weight).sum(), (giou * weight).sum()
    count = count.clamp(min=1)
    return (class_weight * cls + l1_weight * l1 + giou_weight * giou) / count


def unikd_content_extractor_loss(
    logits: Tensor,
    boxes: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    gt_labels: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    class_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Tensor:
    r"""Stage-1 objective of the content extractor: a DETR set-prediction loss on the content knowledge.

    Predictions of :class:`kdimpl.UniKDPredictionHead` on :math:`z^T_{ct}` are matched one-to-one
    to the ground truth (Hungarian matching on the focal class cost plus the L1 and GIoU box
    costs, :func:`kdimpl.ops.detr_match_cost`); every query is classified (sigmoid focal loss,
    unmatched queries against all-zero targets) and matched queries regress their box:

    .. math::
        \mathcal{L} = \frac{1}{M} \Big(\lambda_{cls} \sum_{q, k} \mathrm{FL}(z_{qk}, y_{qk})
            + \sum_{q \to m} \lambda_{L1} \lVert b_q - \hat b_m \rVert_1
            + \lambda_{GIoU} \big(1 - \mathrm{GIoU}(b_q, \hat b_m)\big)\Big)

    with :math:`M` the number of ground-truth boxes in the batch (at least 1).

    Args:
        logits: ``(N, N_q, K)`` sigmoid class logits.
        boxes: ``(N, N_q, 4)`` predicted ``cx, cy, w, h`` normalised by the image size.
        gt_boxes: per-image ``(M_i, 4)`` xyxy pixel boxes of the input tensor, or ``(N, M, 4)``.
        gt_labels: per-image ``(M_i,)`` class indices into the ``K`` logit columns (a sigmoid
            head has no background column).
        image_size: ``(height, width)`` of the input tensor (or ``(N, 2)``).
        class_weight: :math:`\lambda_{cls}` (Deformable DETR's 2.0).
        l1_weight: :math:`\lambda_{L1}` (5.0).
        giou_weight: :math:`\lambda_{GIoU}` (2.0).
        focal_alpha: focal :math:`\alpha`.
        focal_gamma: focal :math:`\gamma`.

    Returns:
        A scalar loss.

    Example:
        >>> import torch
        >>> logits, boxes = torch.randn(2, 6, 3), torch.rand(2, 6, 4) * 0.5 + 0.1
        >>> gt = [torch.tensor([[10.0, 10.0, 50.0, 40.0]]), torch.zeros(0, 4)]
        >>> labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.long)]
        >>> unikd_content_extractor_loss(logits, boxes, gt, labels, (64, 96)).shape
        torch.Size([])

    Notes:
        Unverified: the matching, the loss terms and their weights are Deformable DETR's, which
        the descriptions of the paper name as the extractor's objective without weights.
    """
    check_options(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight)
    check_shape(logits, "logits", "N Q K")
    check_shape(boxes, "boxes", "N Q 4")
    n, _, num_classes = logits.shape
    z, b = upcast(logits), upcast(boxes)
    target, onehot, valid = _targets(gt_boxes, gt_labels, image_size, n, num_classes, b)
    cost = detr_match_cost(z, b, onehot, target, class_cost="focal", class_weight=class_weight,
                           l1_weight=l1_weight, giou_weight=giou_weight, focal_alpha=focal_alpha, focal_gamma=focal_gamma)
    matched = hungarian_match(cost, valid)
    loss = _set_loss(z, b, matched, target, onehot, valid.sum(), class_weight, l1_weight, giou_weight,
                     focal_alpha, focal_gamma)
    return loss.to(logits.dtype)


def unikd_position_extractor_loss(
    logits: Tensor,
    boxes: Tensor,
    matched: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    gt_labels: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    class_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Tensor:
    r"""Stage-1 objective of the position extractor: known assignments instead of matching.

    The same terms as :func:`unikd_content_extractor_loss`, but each query's target is the
    ground truth its box was drawn from (``matched`` of :func:`unikd_sample_position_boxes`);
    negatives are classified against all-zero targets and regress nothing:

    .. math::
        \mathcal{L} = \frac{1}{|P|} \Big(\lambda_{cls} \sum_{q, k} \mathrm{FL}(z_{qk}, y_{qk})
            + \sum_{q \in P} \lambda_{L1} \lVert b_q - \hat b_{m(q)} \rVert_1
            + \lambda_{GIoU} \big(1 - \mathrm{GIoU}(b_q, \hat b_{m(q)})\big)\Big)

    Args:
        logits: ``(N, N_q, K)`` sigmoid class logits on :math:`z^T_{pos}`.
        boxes: ``(N, N_q, 4)`` predicted normalised ``cx, cy, w, h``.
        matched: ``(N, N_q)`` long ground-truth index of each query, ``-1`` for negatives.
        gt_boxes: per-image ``(M_i, 4)`` xyxy pixel boxes, or ``(N, M, 4)``.
        gt_labels: per-image ``(M_i,)`` class indices into the ``K`` logit columns.
        image_size: ``(height, width)`` of the input tensor (or ``(N, 2)``).
        class_weight, l1_weight, giou_weight, focal_alpha, focal_gamma: as in
            :func:`unikd_content_extractor_loss`.

    Returns:
        A scalar loss (divided by the number of positive queries, at least 1).

    Example:
        >>> import torch
        >>> gt, labels = [torch.tensor([[10.0, 10.0, 50.0, 40.0]])], [torch.tensor([1])]
        >>> _, _, matched = unikd_sample_position_boxes(gt, (64, 96), 6, rng=torch.Generator().manual_seed(0))
        >>> unikd_position_extractor_loss(torch.randn(1, 6, 3), torch.rand(1, 6, 4), matched, gt, labels, (64, 96)).shape
        torch.Size([])

    Notes:
        Unverified, as :func:`unikd_content_extractor_loss`.
    """
    check_options(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight)
    check_shape(logits, "logits", "N Q K")
    check_shape(boxes, "boxes", "N Q 4")
    check_shape(matched, "matched", "N Q", floating=False)
    n, _, num_classes = logits.shape
    z, b = upcast(logits), upcast(boxes)
    target, onehot, valid = _targets(gt_boxes, gt_labels, image_size, n, num_classes, b)
    matched = matched.to(torch.long)
    if bool((matched >= valid.sum(1, keepdim=True)).any()):
        raise ValueError("matched holds a ground-truth index beyond the image's boxes")
    loss = _set_loss(z, b, matched, target, onehot, (matched >= 0).sum(), class_weight, l1_weight, giou_weight,
                     focal_alpha, focal_gamma)
    return loss.to(logits.dtype)
