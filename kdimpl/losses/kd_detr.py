"""KD-DETR: knowledge distillation for DETR on consistent distillation points, Wang et al., CVPR 2024.

A DETR's predictions are tied to its queries, and student and teacher have different ones; KD-DETR
feeds the **same** queries (distillation points) to both decoders, so their outputs correspond one to
one. :func:`kd_detr_sample_points` draws the points of a training step (the teacher's anchors, and
random anchors drawn afresh), and :func:`kd_detr_loss` distils the teacher's outputs at those points
into every decoder layer of the student::

    specific, general = kd_detr_sample_points(teacher.refpoint_embed.weight, 300, rng=rng)
    # teacher(images, general) and student(images, specific / general): per-layer outputs at the points
    loss = multilevel_loss(kd_detr_loss, s_logits, [t_logits] * 6, s_boxes, [t_boxes] * 6)

with ``s_*`` the student's per-layer outputs at one set of points and ``t_*`` the teacher's final-layer
outputs at the same points (one such sum per set of points). Boxes are DETR's ``cx, cy, w, h``
normalised by the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_shape, check_shapes
from .._dtypes import upcast
from .._registry import register_loss
from ..distributed import reduce_normaliser
from ..ops import aligned_box_iou, box_cxcywh_to_xyxy, gather_rows

__all__ = ["kd_detr_sample_points"]


def kd_detr_sample_points(
    teacher_anchors: Tensor, num_random: int = 300, *, rng: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""The distillation points of one training step: the teacher's anchors and random anchors.

    *Specific sampling* uses the teacher's learned anchor boxes (DAB-DETR's ``refpoint_embed``,
    before the sigmoid), fed to the student's decoder; *general sampling* draws ``num_random``
    anchors :math:`\sim \mathcal{N}(0, 1)` in the same pre-sigmoid space (the official code builds a
    fresh ``nn.Embedding(num_random, 4)`` every iteration, whose default initialisation is this
    normal draw), fed to both decoders.

    Args:
        teacher_anchors: ``(Q, D)`` the teacher's anchors before the sigmoid (``D = 4`` for
            DAB-DETR's ``x, y, w, h``).
        num_random: how many random anchors to draw (official 300).
        rng: the ``torch.Generator`` of the draw (on the CPU, like the official draw); ``None``:
            the global generator.

    Returns:
        ``(specific, general)``: the teacher's anchors (detached) and ``(num_random, D)`` random
        anchors on ``teacher_anchors``' device and dtype.

    Example:
        >>> import torch
        >>> specific, general = kd_detr_sample_points(torch.randn(300, 4), rng=torch.Generator().manual_seed(0))
        >>> specific.shape, general.shape
        (torch.Size([300, 4]), torch.Size([300, 4]))
    """
    check_shape(teacher_anchors, "teacher_anchors", "Q D")
    general = torch.randn(num_random, teacher_anchors.shape[1], generator=rng)
    return teacher_anchors.detach(), general.to(device=teacher_anchors.device, dtype=teacher_anchors.dtype)


def _kl_per_row(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """:math:`T^2` times the class-averaged KL(softmax(z_t / T) || softmax(z_s / T)) of each row."""
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).mean(dim=-1) * temperature**2


def kd_detr_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    *,
    temperature: float = 10.0,
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""KD-DETR's distillation loss at shared distillation points, for one student decoder layer.

    At each point :math:`i` (a query given to both decoders) the teacher's final-layer prediction
    (logits :math:`z^T_i`, box :math:`b^T_i`) is the target of the student's, weighted by the
    teacher's foreground confidence :math:`\omega_i = \max_c \sigma(z^T_{ic})` (no gradient):

    .. math::
        L = \lambda_{cls} \sum_i \omega_i\, \frac{T^2}{K} \sum_c
                \mathrm{KL}\big(\mathrm{softmax}(z^T_i / T) \,\|\, \mathrm{softmax}(z^S_i / T)\big)_c
            + \frac{\sum_i \omega_i \big(\lambda_{L1} \tfrac14 \lVert b^S_i - b^T_i \rVert_1
                + \lambda_{GIoU} (1 - \mathrm{GIoU}(b^S_i, b^T_i))\big)}{\sum_i \omega_i}

    over all points of the batch (the class term is summed, not normalised, as in the official
    code). The paper writes the same per-point weighted sum; every student decoder layer is compared
    with the teacher's final layer: ``multilevel_loss(kd_detr_loss, s_logits, [t_logits] * L,
    s_boxes, [t_boxes] * L)``.

    Args:
        student_logits: :math:`z^S`, the student's class logits at the points (sigmoid/focal
            logits; the KL takes a softmax over them, as the official code does).
        teacher_logits: :math:`z^T`, the teacher's final-layer logits at the same points (detached).
        student_boxes: :math:`b^S`, the student's boxes ``cx, cy, w, h`` normalised.
        teacher_boxes: :math:`b^T`, the teacher's boxes (detached inside; see Notes).
        temperature: :math:`T` (official 10).
        class_weight: :math:`\lambda_{cls}` (official 1).
        l1_weight: :math:`\lambda_{L1}`, on the L1 distance averaged over the four coordinates
            (official 5).
        giou_weight: :math:`\lambda_{GIoU}` (official 2).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the class term
            summed over points, the box terms divided by :math:`\sum_i \omega_i`; ``'sum'``: every
            term summed over points without the box normaliser; ``'none'``: the ``(N, P)`` per-point
            weighted terms (their sum is ``'sum'``; ``'mean'`` is not their element mean).

    Shape:
        - student_logits, teacher_logits: :math:`(N, P, K)`
        - student_boxes, teacher_boxes: :math:`(N, P, 4)`
        - output: scalar, or :math:`(N, P)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Yu Wang, Xin Li, Shengzhao Weng, Gang Zhang, Haixiao Yue, Haocheng Feng, Junyu Han, Errui Ding.
        "KD-DETR: Knowledge Distillation for Detection Transformer with Consistent Distillation Points
        Sampling". CVPR 2024. arXiv:2211.08071.
        Official code: wennyuhey/KD-DETR, commit eecf1705 (read through the fork Myleswork/KD-DETR@e7dfccb;
        ``models/DAB_DETR/kd_loss.py::KDCriterion.forward``, ``loss_kl_div``, ``loss_boxes``; random points in
        ``kd_engine.py::train_one_epoch``).

    Example:
        >>> import torch
        >>> s_logits, t_logits = torch.randn(2, 600, 91), torch.randn(2, 600, 91)
        >>> s_boxes, t_boxes = torch.rand(2, 600, 4), torch.rand(2, 600, 4)
        >>> kd_detr_loss(s_logits, t_logits, s_boxes, t_boxes).shape
        torch.Size([])

    Notes:
        The official class term detaches the teacher (its softmax target and :math:`\omega` are
        detached); the official box terms (``loss_boxes``) do not detach the teacher boxes, which
        only matters if the teacher's outputs carry gradient (the official training runs the
        teacher under ``torch.no_grad``). Here every teacher input is detached. With many points
        (300 random plus the teacher's anchors, per image and per layer) the summed class term
        grows with the batch size and the number of points, while the box terms do not.

        Under ``DistributedDataParallel`` this sum over the batch gets ``1 / world_size`` of the union
        batch's gradients (DDP averages); multiply ``loss_weight`` by the world size to train as one process
        would (:mod:`kdimpl.distributed`, behaviour ``'sum'``).
    """
    check_shapes(
        student_logits=(student_logits, "N P K"),
        teacher_logits=(teacher_logits, "N P K"),
        student_boxes=(student_boxes, "N P 4"),
        teacher_boxes=(teacher_boxes, "N P 4"),
    )
    check_options(temperature=temperature, class_weight=class_weight, l1_weight=l1_weight,
                  giou_weight=giou_weight, reduction=reduction)
    z_s = upcast(student_logits)
    z_t = teacher_logits.detach().to(z_s.dtype)
    b_s, b_t = student_boxes.to(z_s.dtype), teacher_boxes.detach().to(z_s.dtype)
    weight = z_t.sigmoid().amax(dim=-1)
    cls = _kl_per_row(z_s, z_t, temperature)
    l1 = (b_s - b_t).abs().mean(dim=-1)
    giou = 1 - aligned_box_iou(box_cxcywh_to_xyxy(b_s), box_cxcywh_to_xyxy(b_t), generalized=True)
    if reduction == "mean":
        weights = weight.sum().clamp(min=torch.finfo(z_s.dtype).tiny)
        box = (weight * (l1_weight * l1 + giou_weight * giou)).sum() / weights
        return (class_weight * (weight * cls).sum() + box).to(student_logits.dtype)
    terms = weight * (class_weight * cls + l1_weight * l1 + giou_weight * giou)
    return (terms if reduction == "none" else terms.sum()).to(student_logits.dtype)


@register_loss("kd_detr", function=kd_detr_loss, distributed="sum")
class KDDETRLoss(LossModule):
    """Module twin of :func:`kd_detr_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        temperature: float = 10.0,
        class_weight: float = 1.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(temperature=temperature, class_weight=class_weight, l1_weight=l1_weight,
                         giou_weight=giou_weight, reduction=reduction, loss_weight=loss_weight)


def kd_detr_logits_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    student_match: Tensor,
    teacher_match: Tensor,
    *,
    temperature: float = 10.0,
    class_weight: float = 10.0,
    l1_weight: float = 1.0,
    beta: float = 1.0 / 9.0,
    reduction: str = "mean",
) -> Tensor:
    r"""KD-DETR's optional logits branch: distillation between the queries matched to the same object.

    The student's and the teacher's detection queries are each matched to the ground truth by the
    detector's Hungarian matcher; the student query matched to object :math:`j` learns from the
    teacher query matched to the same object (pairs :math:`j = 1..M`):

    .. math::
        L = \frac{\lambda_{cls}}{M} \sum_j \frac{T^2}{K} \sum_c
                \mathrm{KL}\big(\mathrm{softmax}(z^T_{\pi_T(j)} / T) \,\|\, \mathrm{softmax}(z^S_{\pi_S(j)} / T)\big)_c
            + \frac{\lambda_{L1}}{4M} \sum_j \mathrm{SmoothL1}_\beta\big(b^S_{\pi_S(j)} - b^T_{\pi_T(j)}\big)

    with the Smooth-L1 summed over the four coordinates. The official code applies it to every
    decoder layer with the teacher's same layer (each with its own matching).

    Args:
        student_logits: the student's class logits of its detection queries at one decoder layer.
        teacher_logits: the teacher's logits at the same layer (detached).
        student_boxes: the student's boxes ``cx, cy, w, h`` normalised.
        teacher_boxes: the teacher's boxes (detached).
        student_match: :math:`\pi_S`, ``(N, M)`` long: the student query matched to each ground-truth
            object (``-1`` for padding).
        teacher_match: :math:`\pi_T`, ``(N, M)`` long: the teacher query matched to the same objects.
        temperature: :math:`T` (official 10).
        class_weight: :math:`\lambda_{cls}` (official 10).
        l1_weight: :math:`\lambda_{L1}` (official 1).
        beta: :math:`\beta` of the Smooth-L1 (official 1/9).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the class term
            averaged over pairs, the Smooth-L1 over pairs and coordinates; ``'sum'``: the sums;
            ``'none'``: the ``(N, M)`` per-pair terms (0 on padding; their sum is ``'sum'``).

    Shape:
        - student_logits: :math:`(N, Q, K)`; teacher_logits: :math:`(N, T, K)`
        - student_boxes: :math:`(N, Q, 4)`; teacher_boxes: :math:`(N, T, 4)`
        - student_match, teacher_match: :math:`(N, M)`
        - output: scalar, or :math:`(N, M)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_logits``.

    Reference:
        Yu Wang, Xin Li, Shengzhao Weng, Gang Zhang, Haixiao Yue, Haocheng Feng, Junyu Han, Errui Ding.
        "KD-DETR: Knowledge Distillation for Detection Transformer with Consistent Distillation Points
        Sampling". CVPR 2024. arXiv:2211.08071.
        Official code: wennyuhey/KD-DETR, commit eecf1705 (read through the fork Myleswork/KD-DETR@e7dfccb;
        ``models/DAB_DETR/kd_loss.py::KDCriterion.forward`` with ``loss_kd_logits``, ``get_matched_outputs``,
        ``loss_kl_div``, ``loss_l1_smooth``).

    Example:
        >>> import torch
        >>> s_logits, t_logits = torch.randn(2, 300, 91), torch.randn(2, 300, 91)
        >>> s_boxes, t_boxes = torch.rand(2, 300, 4), torch.rand(2, 300, 4)
        >>> s_match, t_match = torch.tensor([[3, 7], [5, -1]]), torch.tensor([[10, 2], [0, -1]])
        >>> kd_detr_logits_loss(s_logits, t_logits, s_boxes, t_boxes, s_match, t_match).shape
        torch.Size([])

    Notes:
        The released training script leaves this branch off. Both of its terms detach the teacher.
        A pair counts when both matches are ``>= 0``.

        Under ``DistributedDataParallel`` each process divides by its own number of paired queries; inside
        :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_shapes(
        student_logits=(student_logits, "N Q K"),
        teacher_logits=(teacher_logits, "N T K"),
        student_boxes=(student_boxes, "N Q 4"),
        teacher_boxes=(teacher_boxes, "N T 4"),
        student_match=(student_match, "N M int"),
        teacher_match=(teacher_match, "N M int"),
    )
    check_options(temperature=temperature, class_weight=class_weight, l1_weight=l1_weight, reduction=reduction)
    z_s = upcast(student_logits)
    paired = (student_match >= 0) & (teacher_match >= 0)
    s_index, t_index = student_match.clamp(min=0), teacher_match.clamp(min=0)
    s_logits, s_boxes = gather_rows(z_s, s_index), gather_rows(student_boxes.to(z_s.dtype), s_index)
    t_logits = gather_rows(teacher_logits.detach().to(z_s.dtype), t_index)
    t_boxes = gather_rows(teacher_boxes.detach().to(z_s.dtype), t_index)
    zero = z_s.new_zeros(())
    cls = torch.where(paired, _kl_per_row(s_logits, t_logits, temperature), zero)
    smooth = torch.where(paired, F.smooth_l1_loss(s_boxes, t_boxes, beta=beta, reduction="none").sum(dim=-1), zero)
    if reduction == "mean":
        count = reduce_normaliser(paired.sum().to(z_s.dtype)).clamp(min=1)
        return (class_weight * cls.sum() / count + l1_weight * smooth.sum() / (4 * count)).to(student_logits.dtype)
    terms = class_weight * cls + l1_weight * smooth
    return (terms if reduction == "none" else terms.sum()).to(student_logits.dtype)


@register_loss("kd_detr_logits", function=kd_detr_logits_loss, distributed="count")
class KDDETRLogitsLoss(LossModule):
    """Module twin of :func:`kd_detr_logits_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        temperature: float = 10.0,
        class_weight: float = 10.0,
        l1_weight: float = 1.0,
        beta: float = 1.0 / 9.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(temperature=temperature, class_weight=class_weight, l1_weight=l1_weight, beta=beta,
                         reduction=reduction, loss_weight=loss_weight)
