r"""Label assignment distillation (LAD), Nguyen et al., WACV 2022.

LAD distils no output: the *teacher's* predictions decide which anchors the student trains on. The
assignment is PAA's (Kim & Lee, ECCV 2020) computed from the teacher: every anchor whose best IoU with a
ground-truth box reaches 0.1 is a candidate of that box; each candidate is scored by the teacher's
detection loss on it (focal loss + weighted GIoU loss); per box and FPN level the ``topk`` lowest-loss
candidates are kept; a two-component 1-D Gaussian mixture fitted to their losses separates positives
from negatives (:func:`lad_fit_gmm`). :func:`lad_assign` returns the student's targets; the student then
trains with its usual dense-head losses on them (LAD's head: focal loss over ``max(num_pos, N)``, GIoU
and IoU-branch losses over ``num_pos``)::

    with torch.no_grad():
        assignment = lad_assign(t_logits, t_boxes, anchors, anchors_per_level, gt_boxes, gt_labels)
    loss_cls = sigmoid_focal_loss(s_logits, one_hot(assignment.labels)) / max(assignment.num_pos, N)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_boxes, check_shapes
from ..ops import aligned_box_iou, box_iou, sigmoid_focal_loss

__all__ = ["LADAssignment", "lad_assign", "lad_fit_gmm", "lad_select"]


class LADAssignment(NamedTuple):
    """The student's targets from the teacher's PAA assignment, per anchor of all levels concatenated."""

    labels: Tensor  #: ``(N, A)`` long: the box's class at positives, ``num_classes`` elsewhere
    pos_mask: Tensor  #: ``(N, A)`` bool, the positives
    gt_index: Tensor  #: ``(N, A)`` long: the positive's ground-truth box index, -1 elsewhere
    bbox_targets: Tensor  #: ``(N, A, 4)`` the positive's ground-truth box (xyxy), zeros elsewhere
    num_pos: Tensor  #: scalar long, the positives of the batch


def lad_fit_gmm(
    losses: Tensor, *, max_iterations: int = 100, tolerance: float = 1e-3, reg_covar: float = 1e-6
) -> tuple[Tensor, Tensor]:
    r"""A two-component 1-D Gaussian mixture fitted by EM, initialised as PAA initialises scikit-learn's.

    Means start at the smallest and the largest value, weights at 1/2, variances at 1; EM runs until the
    mean log-likelihood changes by less than ``tolerance`` (at most ``max_iterations`` steps), as
    ``sklearn.mixture.GaussianMixture(2, covariance_type='diag')`` with its defaults does.

    Args:
        losses: ``(n,)`` values, ``n >= 2``, computed in float64.
        max_iterations: EM steps at most (scikit-learn's ``max_iter``, 100).
        tolerance: the convergence threshold on the mean log-likelihood (``tol``, 1e-3).
        reg_covar: added to each variance (``reg_covar``, 1e-6).

    Returns:
        ``(component, log_density)``: ``(n,)`` long, the component of each value (0: the one started
        at the smallest value; ``GaussianMixture.predict``), and ``(n,)`` float64, the mixture's log
        density at each value (``score_samples``).

    Example:
        >>> import torch
        >>> component, _ = lad_fit_gmm(torch.tensor([0.1, 0.12, 0.11, 2.0, 2.1, 1.9]))
        >>> component.tolist()
        [0, 0, 0, 1, 1, 1]

    Notes:
        The variance is computed as the weighted mean of squared deviations, which is never below
        ``reg_covar``; scikit-learn expands it as :math:`E[x^2] - 2\mu E[x] + \mu^2`, which cancels to
        zero or below on nearly equal large values and then raises "ill-defined empirical covariance"
        (open-mmlab/mmdetection#9390, #4152). Both agree to rounding elsewhere (tested against
        scikit-learn 1.9.1's numbers). Equal values give two equal components; ties go to component 0.
    """
    x = losses.detach().to(torch.float64).flatten()
    if x.numel() < 2:
        raise ValueError(f"losses must hold at least 2 values, got {x.numel()}")
    mean = torch.stack([x.min(), x.max()])
    var = torch.ones(2, dtype=x.dtype, device=x.device)
    weight = torch.full((2,), 0.5, dtype=x.dtype, device=x.device)
    previous = -math.inf
    for _ in range(max_iterations):
        joint = _gmm_log_joint(x, weight, mean, var)  # (n, 2)
        norm = torch.logsumexp(joint, dim=1, keepdim=True)
        resp = (joint - norm).exp()
        nk = resp.sum(dim=0) + 10 * torch.finfo(x.dtype).eps
        mean = (resp * x[:, None]).sum(dim=0) / nk
        var = (resp * (x[:, None] - mean).square()).sum(dim=0) / nk + reg_covar
        weight = nk / x.numel()
        lower_bound = float(norm.mean())
        if abs(lower_bound - previous) < tolerance:
            break
        previous = lower_bound
    joint = _gmm_log_joint(x, weight, mean, var)
    return joint.argmax(dim=1), torch.logsumexp(joint, dim=1)


def _gmm_log_joint(x: Tensor, weight: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """``log w_k + log N(x | mu_k, var_k)``, ``(n, 2)``."""
    return weight.log() - 0.5 * (math.log(2 * math.pi) + var.log() + (x[:, None] - mean).square() / var)


def _max_iou_candidates(overlaps: Tensor, iou_threshold: float) -> Tensor:
    """mmdet's ``MaxIoUAssigner(pos_iou_thr=t, neg_iou_thr=t, min_pos_iou=0)``: ``(A,)`` box index or -1."""
    num_gt = overlaps.shape[0]
    best, best_gt = overlaps.max(dim=0)
    assigned = torch.where(best >= iou_threshold, best_gt, torch.full_like(best_gt, -1))
    # every box also takes the anchors of its highest IoU (all of them on ties; a later box wins)
    is_best = overlaps == overlaps.max(dim=1, keepdim=True).values  # (G, A)
    order = torch.arange(1, num_gt + 1, device=overlaps.device)[:, None]
    last = (is_best * order).max(dim=0).values - 1
    return torch.where(last >= 0, last, assigned)


def _candidate_losses(logits: Tensor, boxes: Tensor, labels: Tensor, targets: Tensor, *, alpha: float,
                      gamma: float, cls_weight: float, bbox_weight: float) -> Tensor:
    """PAA's per-candidate teacher loss: focal loss summed over classes plus weighted ``1 - GIoU``."""
    target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    cls = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma)
    giou = aligned_box_iou(boxes, targets, generalized=True)
    return cls_weight * cls.sum(dim=-1) + bbox_weight * (1 - giou)


@torch.no_grad()
def lad_select(candidate_losses: Tensor, candidate_gt: Tensor, candidate_level: Tensor, *, topk: int = 9) -> Tensor:
    """PAA's reassignment of one image's candidates: per box, the GMM positives among its ``topk`` per level.

    Args:
        candidate_losses: ``(C,)`` the teacher's loss on each candidate anchor (in anchor order).
        candidate_gt: ``(C,)`` long, each candidate's box.
        candidate_level: ``(C,)`` long, each candidate's FPN level.
        topk: candidates kept per box and level (9).

    Returns:
        ``(C,)`` bool, the positives (see :func:`lad_assign`).
    """
    positive = torch.zeros_like(candidate_gt, dtype=torch.bool)
    if candidate_gt.numel() == 0:
        return positive
    position = torch.arange(candidate_gt.numel(), device=candidate_gt.device)
    for g in candidate_gt.unique().tolist():
        kept_index, kept_loss = [], []
        for level in candidate_level.unique().tolist():
            mask = (candidate_gt == g) & (candidate_level == level)
            value, order = candidate_losses[mask].topk(min(int(mask.sum()), topk), largest=False)
            kept_index.append(position[mask][order])
            kept_loss.append(value)
        index, loss = torch.cat(kept_index), torch.cat(kept_loss)
        if index.numel() < 2 or not bool(torch.isfinite(loss).all()):
            continue
        index, order = index.sort()  # ties in loss keep the anchor order
        loss, order = loss[order].sort(stable=True)
        index = index[order]
        component, density = lad_fit_gmm(loss)
        first = component == 0
        if bool(first.any()):
            positive[index[first][: int(density[first].argmax()) + 1]] = True
    return positive


@torch.no_grad()
def lad_assign(
    teacher_logits: Tensor,
    teacher_boxes: Tensor,
    anchors: Tensor,
    anchors_per_level: Sequence[int],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    *,
    topk: int = 9,
    iou_threshold: float = 0.1,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    cls_weight: float = 1.0,
    bbox_weight: float = 1.3,
) -> LADAssignment:
    r"""LAD: PAA's probabilistic anchor assignment computed from the teacher's predictions, for the student.

    Per image: candidates :math:`\mathcal{C}_g` of box :math:`g` are the anchors whose highest IoU is
    with :math:`g` and at least ``iou_threshold`` (plus each box's best anchors); each is scored by the
    teacher's loss

    .. math::
        \ell_a = \lambda_{cls} \sum_{c=1}^{K} \mathrm{FL}(z^t_{a,c}, \mathbb{1}[c = c_g])
            + \lambda_{box} \big(1 - \mathrm{GIoU}(b^t_a, B_g)\big)

    Per box and level the ``topk`` smallest :math:`\ell` are kept (a box with fewer than 2 in all
    is skipped); a 2-component GMM (:func:`lad_fit_gmm`) on them in ascending order, and the candidates
    up to the highest-density one of component 0 are the positives (PAA's Fig. 3c); every other
    candidate is a negative. Nothing is ignored.

    Args:
        teacher_logits: ``(N, A, K)`` the teacher's sigmoid class logits, anchors of all levels
            concatenated (finest first).
        teacher_boxes: ``(N, A, 4)`` the teacher's decoded boxes, xyxy pixels of the input tensor.
        anchors: ``(A, 4)`` the anchors, xyxy pixels, in the same order.
        anchors_per_level: the number of anchors of each level (they sum to ``A``).
        gt_boxes: per image, ``(M_i, 4)`` xyxy boxes in pixels of the input tensor.
        gt_labels: per image, ``(M_i,)`` class indices in ``[0, K)`` (columns of ``teacher_logits``).
        topk: candidates kept per box and level (PAA/LAD: 9).
        iou_threshold: the candidate IoU threshold (0.1, ``MaxIoUAssigner`` of the PAA config).
        focal_alpha: :math:`\alpha` of the focal loss (0.25).
        focal_gamma: :math:`\gamma` of the focal loss (2).
        cls_weight: :math:`\lambda_{cls}`, the focal loss weight (1.0).
        bbox_weight: :math:`\lambda_{box}`, the GIoU loss weight (1.3).

    Returns:
        :class:`LADAssignment`; ``labels`` use ``K = teacher_logits.shape[-1]`` for every non-positive
        anchor (the one-hot of a sigmoid head's target is then all zeros).

    Reference:
        Chuong H. Nguyen, Thuy C. Nguyen, Tuan N. Tang, Nam L. H. Phan. "Improving Object Detection by
        Label Assignment Distillation". WACV 2022. arXiv:2108.10520. Official code:
        cybercore-co-ltd/CoLAD@f21f89e; upstream port open-mmlab/mmdetection ``LADHead.get_la``
        (``mmdet/models/dense_heads/lad_head.py``@053b028) on ``PAAHead.get_pos_loss``,
        ``paa_reassign`` and ``gmm_separation_scheme`` (``paa_head.py``@03dbbbb); matched by the
        parity tests (mmdetection's functions run with scikit-learn's ``GaussianMixture``).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> xy = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy"), -1).reshape(-1, 2)
        >>> anchors = torch.cat([xy * 8 - 12, xy * 8 + 20], dim=1)  # one level, stride 8, 32 px
        >>> out = lad_assign(torch.randn(1, 64, 3, generator=g), anchors[None] + torch.randn(1, 64, 4, generator=g),
        ...                  anchors, [64], [torch.tensor([[10.0, 10.0, 40.0, 44.0]])], [torch.tensor([2])])
        >>> bool(out.pos_mask.any()), out.labels.shape
        (True, torch.Size([1, 64]))

    Notes:
        The GMM is :func:`lad_fit_gmm` (plain torch, float64) instead of scikit-learn: it never fails on
        finite losses (scikit-learn raises on nearly equal large losses, open-mmlab/mmdetection#9390,
        and mmdetection does not catch it). A box whose candidate losses are not all finite is skipped
        like a box with fewer than 2 candidates: its candidates become negatives (CoLAD's handling of a
        failed fit). Ties are broken deterministically: equal losses keep the anchors' order (a stable
        sort) and the first of equal densities is the threshold, so equal losses give one positive, the
        first candidate (mmdetection's unstable ``sort`` and ``topk(1)`` leave both to chance). With ``min_pos_iou = 0`` a box that overlaps no anchor at all takes every anchor
        of IoU 0 as its best (as mmdetection's assigner does); such boxes should not occur.
    """
    check_shapes(teacher_logits=(teacher_logits, "N A K"), teacher_boxes=(teacher_boxes, "N A 4"),
                 anchors=(anchors, "A 4"))
    n, num_anchors, num_classes = teacher_logits.shape
    check_boxes(gt_boxes, n)
    if len(gt_labels) != n:
        raise ValueError(f"gt_labels needs one entry per image ({n}), got {len(gt_labels)}")
    if sum(anchors_per_level) != num_anchors:
        raise ValueError(f"anchors_per_level sums to {sum(anchors_per_level)}, but there are {num_anchors} anchors")
    device = teacher_logits.device
    level_of = torch.repeat_interleave(torch.arange(len(anchors_per_level), device=device),
                                       torch.as_tensor(list(anchors_per_level), device=device))
    labels = torch.full((n, num_anchors), num_classes, dtype=torch.long, device=device)
    gt_index = torch.full((n, num_anchors), -1, dtype=torch.long, device=device)
    bbox_targets = teacher_boxes.new_zeros(n, num_anchors, 4)
    for i, (boxes, classes) in enumerate(zip(gt_boxes, gt_labels)):
        if boxes.shape[0] == 0:
            continue
        if bool(((classes < 0) | (classes >= num_classes)).any()):
            raise ValueError(f"gt_labels[{i}] must lie in [0, {num_classes}), got {classes.tolist()}")
        boxes = boxes.to(teacher_boxes.dtype)
        assigned = _max_iou_candidates(box_iou(boxes, anchors.to(boxes.dtype)), iou_threshold)
        candidates = (assigned >= 0).nonzero().squeeze(1)
        cand_gt = assigned[candidates]
        losses = _candidate_losses(
            teacher_logits[i, candidates].float(), teacher_boxes[i, candidates].float(), classes[cand_gt].long(),
            boxes[cand_gt].float(), alpha=focal_alpha, gamma=focal_gamma, cls_weight=cls_weight,
            bbox_weight=bbox_weight)
        positives = candidates[lad_select(losses, cand_gt, level_of[candidates], topk=topk)]
        if positives.numel():
            pos = positives
            labels[i, pos] = classes[assigned[pos]].long()
            gt_index[i, pos] = assigned[pos]
            bbox_targets[i, pos] = boxes[assigned[pos]]
    pos_mask = gt_index >= 0
    return LADAssignment(labels, pos_mask, gt_index, bbox_targets, pos_mask.sum())
