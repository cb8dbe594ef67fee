"""Teach-DETR: better training of DETR with teachers, Huang et al., TPAMI 2023.

The boxes that one or more trained teacher detectors (R-CNN or DETR based) predict for an image
are extra ground truth for a DETR student: besides its ordinary one-to-one loss against the real
ground truth, every decoder layer is matched one-to-one to the teachers' boxes and trained on them,
each term weighted by the teacher's confidence. Sum the layers with
:func:`kdimpl.multilevel_loss` (the layers play the part of levels)::

    loss = multilevel_loss(teach_detr_loss, s_logits, [scores] * len(s_logits), s_boxes,
                           teacher_boxes=boxes, teacher_labels=labels, image_size=image_size)

with ``s_*`` the student's per-layer class logits and ``cx, cy, w, h`` boxes normalised by the
image size, and the teachers' merged predictions (confidences ``scores``, pixel boxes, labels)
given once per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_image_size, check_options, check_shapes
from .._dtypes import upcast
from .._registry import register_loss
from ..distributed import reduce_normaliser
from ..masks import image_hw, pad_box_values, pad_boxes
from ..ops import (
    cxcywh_box_terms,
    detr_match_cost,
    gather_rows,
    hungarian_match,
    sigmoid_focal_loss,
)

__all__: list[str] = []


def teach_detr_loss(
    student_logits: Tensor,
    teacher_scores: Sequence[Tensor] | Tensor,
    student_boxes: Tensor,
    teacher_boxes: Sequence[Tensor] | Tensor,
    teacher_labels: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    *,
    class_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    background_weight: float = 0.5,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Teach-DETR's auxiliary one-to-one loss on the teachers' boxes, for one decoder layer.

    The teachers' predicted boxes :math:`\hat b_m` (class :math:`\hat c_m`, confidence
    :math:`s_m`) are matched one-to-one to the student's queries by Hungarian matching
    (:func:`kdimpl.ops.hungarian_match`) with Deformable DETR's cost (focal class cost
    :math:`\lambda_{cls}`, L1 :math:`\lambda_{L1}`, GIoU :math:`\lambda_{GIoU}`,
    :func:`kdimpl.ops.detr_match_cost`); the matched pairs :math:`\pi` are trained like ground
    truth, each query's terms weighted by the confidence of its teacher box:

    .. math::
        L = \frac{1}{M} \sum_q \Big[\lambda_{cls}\, w_q \sum_c \mathrm{FL}(z_{qc}, y_{qc})
            + [\pi(q) \ne \varnothing]\, s_{\pi(q)} \big(\lambda_{L1} \lVert b_q - \hat b_{\pi(q)} \rVert_1
            + \lambda_{GIoU} (1 - \mathrm{GIoU}(b_q, \hat b_{\pi(q)}))\big)\Big]

    with :math:`y_q` the one-hot class :math:`\hat c_{\pi(q)}` (all zeros for an unmatched query),
    :math:`w_q = s_{\pi(q)}` for a matched query and :math:`w_q = \beta` (``background_weight``)
    for an unmatched one, :math:`\mathrm{FL}` the sigmoid focal loss (:math:`\alpha, \gamma`) and
    :math:`M` the number of teacher boxes in the batch.

    Args:
        student_logits: :math:`z`, the student's sigmoid class logits of one decoder layer.
        teacher_scores: :math:`s`, the teachers' confidence of each box, one ``(M_i,)`` tensor per
            image or an ``(N, M)`` tensor padded per image (entries past ``M_i`` ignored; detached
            inside).
        student_boxes: :math:`b`, the student's boxes ``cx, cy, w, h`` normalised by the image size.
        teacher_boxes: the teachers' boxes ``x1, y1, x2, y2`` in pixels of the input tensor, one
            ``(M_i, 4)`` tensor per image or an ``(N, M, 4)`` tensor; normalised by ``image_size``
            to :math:`\hat b`.
        teacher_labels: :math:`\hat c`, their class indices into the ``K`` logit columns (a
            sigmoid head has no background column), one ``(M_i,)`` tensor per image or ``(N, M)``
            padded like ``teacher_scores``.
        image_size: ``(height, width)`` of the input tensor, or ``(N, 2)`` (DETR normalises by each
            image's own size before padding).
        class_weight: :math:`\lambda_{cls}`, in the cost and the loss (official 2).
        l1_weight: :math:`\lambda_{L1}`, in the cost and the loss (official 5).
        giou_weight: :math:`\lambda_{GIoU}`, in the cost and the loss (official 2).
        background_weight: :math:`\beta`, the class-term weight of the queries no teacher box is
            matched to (official 0.5).
        focal_alpha: :math:`\alpha` of the focal loss and cost (official 0.25).
        focal_gamma: :math:`\gamma` (official 2).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum over the
            batch divided by :math:`M`, the number of teacher boxes (at least 1; under
            :func:`kdimpl.distributed.global_normalisers` its mean over processes); use
            ``reduction='none'`` and ``.mean()`` for the mean over queries; ``'sum'``: the sum;
            ``'none'``: the ``(N, Q)`` per-query terms.

    Shape:
        - student_logits: :math:`(N, Q, K)`; student_boxes: :math:`(N, Q, 4)`
        - teacher_scores, teacher_labels: ``N`` tensors :math:`(M_i)` or :math:`(N, M)`
        - teacher_boxes: ``N`` tensors :math:`(M_i, 4)` or :math:`(N, M, 4)`
        - output: scalar, or :math:`(N, Q)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Linjiang Huang, Kaixin Lu, Guanglu Song, Liang Wang, Si Liu, Yu Liu, Hongsheng Li.
        "Teach-DETR: Better Training DETR with Teachers". TPAMI 2023. arXiv:2211.11953.
        Official code: LeonHLJ/Teach-DETR@8e15829 (``H-Deformable-DETR/models/deformable_detr.py::
        SetCriterion.forward`` with ``is_ensemble=True``: ``loss_weighted_labels``,
        ``loss_weighted_boxes``; ``engine.py::train_hybrid``).

    Example:
        >>> import torch
        >>> s_logits, s_boxes = torch.randn(2, 300, 80), torch.rand(2, 300, 4)
        >>> boxes = [torch.tensor([[10.0, 20.0, 200.0, 300.0]]), torch.zeros(0, 4)]
        >>> scores = [torch.tensor([0.9]), torch.zeros(0)]
        >>> labels = [torch.tensor([3]), torch.zeros(0, dtype=torch.long)]
        >>> teach_detr_loss(s_logits, scores, s_boxes, boxes, labels, (800, 1333)).shape
        torch.Size([])

    Notes:
        The official code merges the teachers' predictions per image before the loss (in the
        dataset: class-wise NMS at IoU 0.2 over all teachers' boxes, ranked by the score plus a
        per-teacher bonus, keeping the teachers' average box count); pass the merged boxes here.
        It weights by ``lambda_ensemble`` (official 1; use ``loss_weight``), applies the loss to the
        final layer and every auxiliary decoder layer, each with its own matching and the same
        :math:`M`, and on the two-stage encoder proposals applies the *unweighted* class-agnostic
        loss against the teachers' boxes (not covered here). Its GIoU term is written
        ``1 - GIoU * s`` (operator precedence), unlike its L1 term, which is weighted as a whole;
        here both are weighted as a whole, :math:`s (1 - \mathrm{GIoU})`: the gradients are the
        same, the official value is larger by :math:`\lambda_{GIoU} \sum_{\text{matched}} (1 - s) / M`.
        The paper's text was not read here; the equation above is the official code's. Its
        focal cost adds 1e-8 inside the logarithms, :func:`kdimpl.ops.detr_match_cost` 1e-12.
        The sum of the class term runs over all queries of the batch (the official
        ``mean(1).sum() * Q``). The loss declares ``distributed="count"``.
    """
    check_shapes(student_logits=(student_logits, "N Q K"), student_boxes=(student_boxes, "N Q 4"))
    n, _, num_classes = student_logits.shape
    check_image_size(image_size, n)
    check_options(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight,
                  background_weight=background_weight, reduction=reduction)
    z = upcast(student_logits)
    b = student_boxes.to(z.dtype)
    boxes, valid = pad_boxes(teacher_boxes, batch_size=n, name="teacher_boxes")
    scores = pad_box_values(teacher_scores, valid, name="teacher_scores", dtype=z.dtype).detach()
    labels = pad_box_values(teacher_labels, valid, name="teacher_labels", num_classes=num_classes)
    if boxes.shape[1] == 0:  # no teacher box in the batch: one padding column keeps the gathers defined
        boxes, valid = boxes.new_zeros(n, 1, 4), valid.new_zeros(n, 1)
        scores, labels = scores.new_zeros(n, 1), labels.new_zeros(n, 1)
    with torch.no_grad():
        img_h, img_w = image_hw(image_size, n, z)
        xyxy = boxes.detach().to(z) / torch.cat([img_w, img_h, img_w, img_h], dim=1)[:, None]
        target_boxes = torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], dim=-1)
        valid = valid.to(z.device)
        onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).to(z.dtype) * valid[..., None]
        cost = detr_match_cost(z, b, onehot, target_boxes, class_cost="focal", class_weight=class_weight,
                               l1_weight=l1_weight, giou_weight=giou_weight, focal_alpha=focal_alpha,
                               focal_gamma=focal_gamma)
        matched = hungarian_match(cost, valid)
        is_matched = matched >= 0
        index = matched.clamp(min=0)
        target = gather_rows(onehot, index) * is_matched[..., None]
        matched_boxes = gather_rows(target_boxes, index)
        matched_scores = torch.gather(scores, 1, index)
        class_scores = torch.where(is_matched, matched_scores, torch.full_like(matched_scores, background_weight))
    focal = sigmoid_focal_loss(z, target, alpha=focal_alpha, gamma=focal_gamma)
    l1, giou = cxcywh_box_terms(b, matched_boxes)
    box = torch.where(is_matched, matched_scores * (l1_weight * l1 + giou_weight * giou), 0.0)
    terms = class_weight * class_scores * focal.sum(dim=-1) + box
    if reduction == "none":
        return terms.to(student_logits.dtype)
    total = terms.sum()
    if reduction == "mean":
        total = total / reduce_normaliser(valid.sum().to(total.dtype)).clamp(min=1)
    return total.to(student_logits.dtype)


@register_loss("teach_detr", function=teach_detr_loss, distributed="count")
class TeachDETRLoss(LossModule):
    """Module twin of :func:`teach_detr_loss`; ``loss_weight`` multiplies the result (``lambda_ensemble``)."""

    def __init__(
        self,
        *,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        background_weight: float = 0.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight,
                         background_weight=background_weight, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
                         reduction=reduction, loss_weight=loss_weight)
