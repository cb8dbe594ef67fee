"""DETRDistill: knowledge distillation for DETR-style detectors, Chang et al., ICCV 2023.

Three losses, each called once per decoder layer (or per decoder stage and FPN level); sum them
over layers with :func:`kdimpl.multilevel_loss` (the layers play the part of levels)::

    pred = multilevel_loss(detrdistill_pred_loss, s_logits, t_logits, s_boxes, t_boxes)
    group = multilevel_loss(detrdistill_group_loss, g_logits, t_logits, g_boxes, t_boxes,
                            gt_boxes=gt_boxes, gt_labels=gt_labels, image_size=image_size)
    feature = sum(multilevel_loss(detrdistill_feature_loss, s_feats, t_feats, teacher_queries=t_queries[l],
                                  teacher_logits=t_logits[l], teacher_boxes=t_boxes[l],
                                  gt_boxes=gt_boxes, image_size=image_size) for l in range(6))

with ``s_*`` the student's per-layer decoder outputs, ``t_*`` the teacher's, ``g_*`` the student
decoder's outputs for the teacher's object queries (the "teacher group"), and ``s_feats``/``t_feats``
the per-level encoder inputs (FPN features). Boxes predicted by the decoders are DETR's
``cx, cy, w, h`` normalised by the image size; ground-truth boxes are ``x1, y1, x2, y2`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_image_size, check_options, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..masks import image_hw, pad_box_values, pad_boxes
from ..ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    cxcywh_box_terms,
    detr_match_cost,
    gather_rows,
    hungarian_match,
    sigmoid_focal_loss,
)

__all__ = ["detrdistill_query_weights"]


def _xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], dim=-1)


def _matched_pred_terms(
    z_s: Tensor, b_s: Tensor, q_t: Tensor, b_t: Tensor, matched: Tensor,
    class_weight: float, l1_weight: float, giou_weight: float,
) -> Tensor:
    """Per-query soft-BCE class term (target 0 when unmatched) plus L1 and ``1 - GIoU`` of the matched box."""
    is_matched = matched >= 0
    index = matched.clamp(min=0)
    target_probs = gather_rows(q_t, index) * is_matched[..., None]
    target_boxes = gather_rows(b_t, index)
    cls = F.binary_cross_entropy_with_logits(z_s, target_probs, reduction="none").sum(dim=-1)
    l1, giou = cxcywh_box_terms(b_s, target_boxes)
    return class_weight * cls + is_matched * (l1_weight * l1 + giou_weight * giou)


def detrdistill_pred_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    *,
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""DETRDistill's Hungarian-matching logits and box distillation for one decoder layer.

    Every teacher query's prediction is a pseudo target (soft class vector :math:`q_t = \sigma(z^T_t)`,
    box :math:`\hat b_t`); the student's queries are matched one-to-one to them by Hungarian
    matching (:func:`kdimpl.ops.hungarian_match`) with the cost

    .. math::
        C_{st} = \lambda_{cls} \sum_c \big[q_{tc}\,\mathrm{BCE}(z^S_{sc}, 1)
            + (1 - q_{tc})\,\mathrm{BCE}(z^S_{sc}, 0)\big]
            + \lambda_{L1} \lVert b_s - \hat b_t \rVert_1 - \lambda_{GIoU}\,\mathrm{GIoU}(b_s, \hat b_t)

    and the loss of the matched pairs :math:`\pi` is

    .. math::
        L = \frac{1}{N_m} \sum_s \Big[\lambda_{cls} \sum_c \mathrm{BCE}(z^S_{sc}, q_{\pi(s)c})
            + [\pi(s) \ne \varnothing] \big(\lambda_{L1} \lVert b_s - \hat b_{\pi(s)} \rVert_1
            + \lambda_{GIoU} (1 - \mathrm{GIoU}(b_s, \hat b_{\pi(s)}))\big)\Big]

    over all student queries :math:`s` of the batch (an unmatched one learns the target
    :math:`q = 0`), :math:`N_m` the number of matched pairs. The paper applies it to every decoder
    layer with the teacher's same layer: ``multilevel_loss(detrdistill_pred_loss, s_logits, t_logits,
    s_boxes, t_boxes)`` over lists of per-layer outputs.

    Args:
        student_logits: :math:`z^S`, the student's sigmoid class logits of one decoder layer.
        teacher_logits: :math:`z^T`, the teacher's logits of the same layer (detached inside).
        student_boxes: :math:`b`, the student's boxes ``cx, cy, w, h`` normalised by the image size.
        teacher_boxes: the teacher's boxes, same format (detached inside); as in the official
            code, their ``x1, y1, x2, y2`` corners are clamped to the image before use
            (:math:`\hat b`).
        class_weight: :math:`\lambda_{cls}`, in the cost and the loss (official 1.0).
        l1_weight: :math:`\lambda_{L1}` (official 5.0).
        giou_weight: :math:`\lambda_{GIoU}` (official 2.0).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum over the
            batch divided by the number of matched pairs :math:`N_m` (at least 1); use
            ``reduction='none'`` and ``.mean()`` for the mean over student queries; ``'sum'``:
            the sum; ``'none'``: the ``(N, Q)`` per-query terms.

    Shape:
        - student_logits: :math:`(N, Q, K)`; teacher_logits: :math:`(N, T, K)`
        - student_boxes: :math:`(N, Q, 4)`; teacher_boxes: :math:`(N, T, 4)`
        - output: scalar, or :math:`(N, Q)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Jiahao Chang, Shuo Wang, Hai-Ming Xu, Zehui Chen, Chenhongyi Yang, Feng Zhao.
        "DETRDistill: A Universal Knowledge Distillation Framework for DETR-families". ICCV 2023.
        arXiv:2211.10156.
        Official code: BIVLab-USTC/DETRDistill@b5ee33d (``deformdetr_project/mmdet/models/dense_heads/
        distill_deformable_detr_head.py::DistillDeformableDETRHead.loss_single_distill``,
        ``mmdet/core/bbox/assigners/distill_hungarian_assigner.py::DistillHungarianAssigner``).

    Example:
        >>> import torch
        >>> s_logits, t_logits = torch.randn(2, 300, 80), torch.randn(2, 300, 80)
        >>> s_boxes, t_boxes = torch.rand(2, 300, 4), torch.rand(2, 300, 4)
        >>> detrdistill_pred_loss(s_logits, t_logits, s_boxes, t_boxes).shape
        torch.Size([])

    Notes:
        Matching costs of the official code (``DistillHungarianAssigner`` in the released
        configuration): ``DistillCrossEntropyLossCost`` weight 1.0 (the BCE cost above, summed,
        not averaged, over classes), ``BBoxL1Cost`` weight 5.0 on normalised ``cx, cy, w, h``
        (``box_format='xywh'``), ``IoUCost`` (``iou_mode='giou'``) weight 2.0 on pixel boxes.
        GIoU does not change when both boxes are scaled per axis, so normalised boxes give the
        same cost and loss here (mmdetection's 1e-6 area clamp then applies to normalised areas).
        The official code distils all teacher queries (no score threshold); when the teacher has
        as many queries as the student every student query is matched. Off that path it fills
        the class target of an unmatched student query with the number of classes (a BCE target
        of 80); here an unmatched query's target is 0 (background). The official class term
        divides by the matched count plus ``finfo(float32).eps`` and the box terms by the count
        averaged over GPUs and clamped to 1; here all three divide by the count clamped to 1. The
        official non-default mode ``is_layer_by_layer_distill=False`` distils the teacher's last
        layer into every student layer: pass the last layer's outputs for every layer.
    """
    check_shapes(
        student_logits=(student_logits, "N Q K"),
        teacher_logits=(teacher_logits, "N T K"),
        student_boxes=(student_boxes, "N Q 4"),
        teacher_boxes=(teacher_boxes, "N T 4"),
    )
    check_options(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight, reduction=reduction)
    z_s, b_s = upcast(student_logits), upcast(student_boxes).to(upcast(student_logits).dtype)
    with torch.no_grad():
        q_t = upcast(teacher_logits.detach()).to(z_s.dtype).sigmoid()
        b_t = _xyxy_to_cxcywh(box_cxcywh_to_xyxy(teacher_boxes.detach().to(z_s.dtype)).clamp(0, 1))
        cost = detr_match_cost(z_s, b_s, q_t, b_t, class_cost="bce", class_weight=class_weight,
                               l1_weight=l1_weight, giou_weight=giou_weight)
        matched = hungarian_match(cost)
    terms = _matched_pred_terms(z_s, b_s, q_t, b_t, matched, class_weight, l1_weight, giou_weight)
    return reduce_loss(terms, reduction, avg_factor=(matched >= 0).sum().clamp(min=1)).to(student_logits.dtype)


@register_loss("detrdistill_pred", function=detrdistill_pred_loss)
class DETRDistillPredLoss(LossModule):
    """Module twin of :func:`detrdistill_pred_loss`; ``loss_weight`` multiplies the result."""

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


def detrdistill_query_weights(
    teacher_logits: Tensor,
    teacher_boxes: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    top_k: int = 100,
) -> tuple[Tensor, Tensor]:
    r"""The teacher queries that guide DETRDistill's feature distillation and their weights.

    The ``top_k`` highest (query, class) sigmoid scores of the flattened :math:`Q \times K` scores
    are kept (a query can be kept once per class); each kept pair :math:`n` weighs
    :math:`w_n = s_n \max_g \mathrm{IoU}(\hat b_n, g)` (just :math:`s_n` in an image without boxes).

    Args:
        teacher_logits: ``(N, Q, K)`` sigmoid class logits of one teacher decoder stage.
        teacher_boxes: ``(N, Q, 4)`` its boxes ``cx, cy, w, h`` normalised by the image size.
        gt_boxes: ground-truth boxes ``x1, y1, x2, y2`` in pixels, one ``(M_i, 4)`` tensor per image.
        image_size: ``(height, width)`` of the input tensor, or ``(N, 2)``.
        top_k: how many (query, class) pairs to keep (official ``max_per_img`` = 100).

    Returns:
        ``(index, weight)``: ``(N, k)`` query indices and their ``(N, k)`` weights :math:`w_n`,
        ``k = min(top_k, Q K)``, without gradient.

    Example:
        >>> import torch
        >>> logits, boxes = torch.tensor([[[3.0, -5.0], [-5.0, -5.0]]]), torch.tensor([[[0.25, 0.25, 0.5, 0.5]] * 2])
        >>> detrdistill_query_weights(logits, boxes, [torch.tensor([[0.0, 0.0, 50.0, 100.0]])], (100, 100), top_k=1)
        (tensor([[0]]), tensor([[0.4763]]))
    """
    with torch.no_grad():
        n, q, k = teacher_logits.shape
        scores, flat = upcast(teacher_logits).sigmoid().flatten(1).topk(min(top_k, q * k), dim=1)
        index = torch.div(flat, k, rounding_mode="floor")
        boxes = box_cxcywh_to_xyxy(gather_rows(teacher_boxes.to(scores.dtype), index))
        gt, valid = pad_boxes(gt_boxes, batch_size=n)
        img_h, img_w = image_hw(image_size, n, scores)
        scale = torch.cat([img_w, img_h, img_w, img_h], dim=1)[:, None]
        iou = box_iou(boxes, gt.to(scores) / scale) * valid[:, None, :]
        best = torch.cat([iou, iou.new_zeros(n, iou.shape[1], 1)], dim=-1).amax(dim=-1)
        weight = torch.where(valid.any(dim=1, keepdim=True), scores * best, scores)
    return index, weight


def detrdistill_feature_loss(
    student: Tensor,
    teacher: Tensor,
    teacher_queries: Tensor,
    teacher_logits: Tensor,
    teacher_boxes: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    top_k: int = 100,
    reduction: str = "mean",
) -> Tensor:
    r"""DETRDistill's target-aware (query-prior) feature distillation on one feature level.

    The teacher's decoder embeddings :math:`h_n` of its best predictions
    (:func:`detrdistill_query_weights`: top-``top_k`` (query, class) scores, weights :math:`w_n`)
    select the positions of the teacher's feature map that the student imitates:

    .. math::
        m(x, y) = \max\Big(\sum_n w_n \langle \hat h_n, \hat F^T(x, y) \rangle,\ 0.01\Big), \qquad
        m \leftarrow \frac{m}{\max_{x, y} m}, \qquad
        L = \frac{1}{N C H W} \sum \big(m \odot F^T - m \odot F^S\big)^2

    with :math:`\hat h_n` and :math:`\hat F^T(x, y)` L2-normalised over channels and the mask
    normalised per image. The official code sums :math:`L` over the FPN levels for each decoder
    stage and adds one such term per stage (6), weight 1: per stage,
    ``multilevel_loss(detrdistill_feature_loss, s_feats, t_feats, teacher_queries=h, teacher_logits=z,
    teacher_boxes=b, gt_boxes=gt_boxes, image_size=image_size)``.

    Args:
        student: :math:`F^S`, the student's features of one level (no adapter: same channels).
        teacher: :math:`F^T`, the teacher's features of the level (detached inside).
        teacher_queries: :math:`h`, the teacher's decoder output embeddings of one stage (detached).
        teacher_logits: the teacher's class logits of that stage.
        teacher_boxes: the teacher's boxes of that stage, ``cx, cy, w, h`` normalised.
        gt_boxes: ground-truth boxes ``x1, y1, x2, y2`` in pixels of the input tensor, one
            ``(M_i, 4)`` tensor per image.
        image_size: ``(height, width)`` of the input tensor, or ``(N, 2)``.
        top_k: (query, class) pairs kept (official 100).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over
            all :math:`N C H W` elements (``nn.MSELoss``); ``'sum'``: the sum; ``'none'``: the
            ``(N, C, H, W)`` squared differences.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`; teacher_queries: :math:`(N, Q, C)`
        - teacher_logits: :math:`(N, Q, K)`; teacher_boxes: :math:`(N, Q, 4)`
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Jiahao Chang, Shuo Wang, Hai-Ming Xu, Zehui Chen, Chenhongyi Yang, Feng Zhao.
        "DETRDistill: A Universal Knowledge Distillation Framework for DETR-families". ICCV 2023.
        arXiv:2211.10156.
        Official code: BIVLab-USTC/DETRDistill@b5ee33d (``deformdetr_project/mmdet/distillation/
        distillers/distiller.py::Distiller.forward_train``, weights from
        ``distill_deformable_detr_head.py::simple_test_teacher_distill``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 256, 25, 42), torch.randn(2, 256, 25, 42)
        >>> h, z, b = torch.randn(2, 300, 256), torch.randn(2, 300, 80), torch.rand(2, 300, 4)
        >>> boxes = [torch.tensor([[10.0, 20.0, 200.0, 300.0]]), torch.zeros(0, 4)]
        >>> detrdistill_feature_loss(s, t, h, z, b, boxes, (800, 1333)).shape
        torch.Size([])

    Notes:
        The sum over kept pairs is taken before the inner product with the features
        (:math:`\langle \sum_n w_n \hat h_n, \hat F \rangle`, the same by linearity, one
        ``C``-vector per image instead of a ``k x H x W`` map), and the feature norm divides
        the inner product instead of a normalised copy of the map. The official distiller also adds a
        MoCo-style contrastive loss between matched student and teacher queries into the same
        per-stage term; it is not part of the paper's method and not implemented here.
    """
    check_shapes(
        student=(student, "N C H W"),
        teacher=(teacher, "N C H W"),
        teacher_queries=(teacher_queries, "N Q C"),
        teacher_logits=(teacher_logits, "N Q K"),
        teacher_boxes=(teacher_boxes, "N Q 4"),
    )
    check_image_size(image_size, student.shape[0], student)
    check_options(reduction=reduction)
    s = upcast(student)
    t = upcast(teacher.detach()).to(s.dtype)
    index, weight = detrdistill_query_weights(teacher_logits.detach(), teacher_boxes.detach(), gt_boxes,
                                              image_size, top_k)
    with torch.no_grad():
        queries = F.normalize(gather_rows(teacher_queries.detach().to(s.dtype), index), dim=-1)
        guide = (weight.to(s.dtype)[..., None] * queries).sum(dim=1)  # (N, C)
        # <guide, t / max(|t|, 1e-12)> as F.normalize, without a normalised copy of the feature map
        norm = torch.linalg.vector_norm(t, dim=1).clamp(min=1e-12)
        mask = (torch.einsum("nc,nchw->nhw", guide, t) / norm).clamp(min=0.01)
        mask = (mask / mask.flatten(1).amax(dim=1)[:, None, None])[:, None]
    if reduction == "none":
        return F.mse_loss(mask * s, mask * t, reduction="none").to(student.dtype)
    total = F.mse_loss(mask * s, mask * t, reduction="sum")
    if reduction == "mean":
        total = total / max(s.numel(), 1)
    return total.to(student.dtype)


@register_loss("detrdistill_feature", function=detrdistill_feature_loss)
class DETRDistillFeatureLoss(LossModule):
    """Module twin of :func:`detrdistill_feature_loss`; ``loss_weight`` multiplies the result (official 1.0)."""

    def __init__(self, *, top_k: int = 100, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(top_k=top_k, reduction=reduction, loss_weight=loss_weight)


def detrdistill_group_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    gt_labels: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    class_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""DETRDistill's query-prior assignment distillation ("teacher group") for one decoder layer.

    The teacher's object queries are fed to the student's decoder as an extra group; its outputs
    (:math:`z^S, b`) are trained with the ordinary Deformable-DETR losses, but with the
    assignment :math:`\pi` that Hungarian matching gives the **teacher's** predictions for the same
    queries against the ground truth (cost: focal class cost :math:`\lambda_{cls}`, L1
    :math:`\lambda_{L1}`, GIoU :math:`\lambda_{GIoU}`, :func:`kdimpl.ops.detr_match_cost`), instead
    of matching the student's own:

    .. math::
        L = \frac{1}{N_{pos}} \sum_q \Big[\lambda_{cls} \sum_c \mathrm{FL}(z^S_{qc}, y_{qc})
            + [\pi(q) \ne \varnothing]\big(\lambda_{L1} \lVert b_q - g_{\pi(q)} \rVert_1
            + \lambda_{GIoU} (1 - \mathrm{GIoU}(b_q, g_{\pi(q)}))\big)\Big]

    with :math:`y_q` the one-hot label of the ground truth :math:`g_{\pi(q)}` assigned to query
    :math:`q` (all zeros if none), :math:`\mathrm{FL}` the sigmoid focal loss
    (:math:`\alpha, \gamma`) and :math:`N_{pos}` the number of assigned queries. Each student
    decoder layer uses the teacher's same layer.

    Args:
        student_logits: :math:`z^S`, the student decoder's class logits for the teacher's queries.
        teacher_logits: the teacher's logits for its queries at the same layer (assignment only).
        student_boxes: :math:`b`, the student decoder's boxes ``cx, cy, w, h`` normalised.
        teacher_boxes: the teacher's boxes (assignment only), same format.
        gt_boxes: ground-truth boxes ``x1, y1, x2, y2`` in pixels of the input tensor, one
            ``(M_i, 4)`` tensor per image.
        gt_labels: their class indices into the ``K`` logit columns (a sigmoid head has no
            background column), one ``(M_i,)`` tensor per image.
        image_size: ``(height, width)`` of the input tensor, or ``(N, 2)``; boxes are normalised by it.
        class_weight: :math:`\lambda_{cls}`, in the cost and the loss (official 2.0).
        l1_weight: :math:`\lambda_{L1}` (official 5.0).
        giou_weight: :math:`\lambda_{GIoU}` (official 2.0).
        focal_alpha: :math:`\alpha` of the focal loss and cost (official 0.25).
        focal_gamma: :math:`\gamma` (official 2.0).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum divided by
            :math:`N_{pos}` (at least 1); use ``reduction='none'`` and ``.mean()`` for the mean
            over queries; ``'sum'``: the sum; ``'none'``: the ``(N, Q)`` per-query terms.

    Shape:
        - student_logits, teacher_logits: :math:`(N, Q, K)`
        - student_boxes, teacher_boxes: :math:`(N, Q, 4)`
        - output: scalar, or :math:`(N, Q)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Jiahao Chang, Shuo Wang, Hai-Ming Xu, Zehui Chen, Chenhongyi Yang, Feng Zhao.
        "DETRDistill: A Universal Knowledge Distillation Framework for DETR-families". ICCV 2023.
        arXiv:2211.10156.
        Official code: BIVLab-USTC/DETRDistill@b5ee33d (``deformdetr_project/mmdet/models/dense_heads/
        distill_deformable_detr_head.py::forward_train_teacher_group``, ``loss_single_teacher_group``,
        teacher assignment from ``pseudo_loss``).

    Example:
        >>> import torch
        >>> g_logits, t_logits = torch.randn(2, 300, 80), torch.randn(2, 300, 80)
        >>> g_boxes, t_boxes = torch.rand(2, 300, 4), torch.rand(2, 300, 4)
        >>> boxes = [torch.tensor([[10.0, 20.0, 200.0, 300.0]]), torch.zeros(0, 4)]
        >>> labels = [torch.tensor([3]), torch.zeros(0, dtype=torch.long)]
        >>> detrdistill_group_loss(g_logits, t_logits, g_boxes, t_boxes, boxes, labels, (800, 1333)).shape
        torch.Size([])

    Notes:
        The official teacher assignment uses mmdetection's ``HungarianAssigner`` with
        ``FocalLossCost`` 2.0, ``BBoxL1Cost`` 5.0 (``cx, cy, w, h``) and ``IoUCost`` (GIoU) 2.0;
        the official loss is mmdetection's ``FocalLoss`` (weight 2.0), ``L1Loss`` (5.0) and
        ``GIoULoss`` (2.0), all divided by the positives (averaged over GPUs, clamped to 1). A
        NaN teacher input gives a NaN loss here (its assignment is meaningless).

        Under ``DistributedDataParallel`` each process divides by its own count of matched queries
        (its ground-truth boxes); inside :func:`kdimpl.distributed.global_normalisers` it divides
        by the mean over processes, as the official code does, and the gradients equal those of one
        process on the union batch (behaviour ``'count'``).
    """
    check_shapes(
        student_logits=(student_logits, "N Q K"),
        teacher_logits=(teacher_logits, "N Q K"),
        student_boxes=(student_boxes, "N Q 4"),
        teacher_boxes=(teacher_boxes, "N Q 4"),
    )
    n, _, num_classes = student_logits.shape
    check_image_size(image_size, n)
    check_options(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight, reduction=reduction)
    gt, valid = pad_boxes(gt_boxes, batch_size=n)
    labels = pad_box_values(gt_labels, valid, name="gt_labels", num_classes=num_classes)
    if gt.shape[1] == 0:  # no boxes in the batch: one padding column keeps the gathers defined
        gt, valid, labels = gt.new_zeros(n, 1, 4), valid.new_zeros(n, 1), labels.new_zeros(n, 1)
    z_s = upcast(student_logits)
    b_s = student_boxes.to(z_s.dtype)
    with torch.no_grad():
        z_t, b_t = teacher_logits.detach().to(z_s.dtype), teacher_boxes.detach().to(z_s.dtype)
        img_h, img_w = image_hw(image_size, n, z_s)
        scale = torch.cat([img_w, img_h, img_w, img_h], dim=1)[:, None]
        gt_norm = _xyxy_to_cxcywh(gt.to(z_s) / scale)
        valid = valid.to(z_s.device)
        onehot = F.one_hot(labels, num_classes).to(z_s.dtype) * valid[..., None]
        cost = detr_match_cost(z_t, b_t, onehot, gt_norm, class_cost="focal", class_weight=class_weight,
                               l1_weight=l1_weight, giou_weight=giou_weight, focal_alpha=focal_alpha,
                               focal_gamma=focal_gamma)
        matched = hungarian_match(cost, valid)
        is_matched = matched >= 0
        index = matched.clamp(min=0)
        target = gather_rows(onehot, index) * is_matched[..., None]
        target_boxes = gather_rows(gt_norm, index)
        # the assignment of a NaN teacher is meaningless: show it in the loss
        poison = (z_t.sum() + b_t.sum()) * 0
    focal = sigmoid_focal_loss(z_s, target, alpha=focal_alpha, gamma=focal_gamma)
    l1, giou = cxcywh_box_terms(b_s, target_boxes)
    terms = class_weight * focal.sum(dim=-1) + is_matched * (l1_weight * l1 + giou_weight * giou) + poison
    return reduce_loss(terms, reduction, avg_factor=is_matched.sum().clamp(min=1)).to(student_logits.dtype)


@register_loss("detrdistill_group", function=detrdistill_group_loss, distributed="count")
class DETRDistillGroupLoss(LossModule):
    """Module twin of :func:`detrdistill_group_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight,
                         focal_alpha=focal_alpha, focal_gamma=focal_gamma, reduction=reduction,
                         loss_weight=loss_weight)
