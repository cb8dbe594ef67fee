"""Box and RoI operations shared by the losses: pooling boxes from a feature map, padding box lists.

Boxes are ``x1, y1, x2, y2`` in pixels of the input tensor whose ``(height, width)`` is
``image_size``; each function maps them to the feature map it receives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import image_hw, pad_boxes

__all__ = [
    "aligned_box_iou",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "cxcywh_box_terms",
    "detr_match_cost",
    "gather_rows",
    "hungarian_match",
    "nms_top_k",
    "roi_align_padded",
    "sigmoid_focal_loss",
]


def padded_boxes(
    gt_boxes: Sequence[Tensor] | Tensor,
    batch_size: int,
    *,
    gt_mask: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device=None,
) -> tuple[Tensor, Tensor]:
    """Checked per-image boxes as one ``(N, M, 4)`` tensor and its ``(N, M)`` bool mask of real boxes.

    ``gt_mask`` marks the real rows of an already padded ``gt_boxes`` tensor (default: all).
    ``dtype`` defaults to the boxes' floating dtype (at least float32). An empty batch (``N = 0``,
    an empty list) gives ``(0, 0, 4)`` boxes.
    """
    boxes, valid = pad_boxes(gt_boxes, gt_mask, batch_size=batch_size)
    dtype = dtype or torch.promote_types(boxes.dtype, torch.float32)
    return boxes.to(device=device or boxes.device, dtype=dtype), valid.to(device or boxes.device)


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """``values[n, index[n, q]]`` for ``(N, T, D)`` values and ``(N, Q)`` indices: each query's matched row."""
    return torch.gather(values, 1, index[..., None].expand(-1, -1, values.shape[-1]))


def cxcywh_box_terms(boxes: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """DETR's box terms of ``(..., 4)`` pairs of normalised ``cx, cy, w, h`` boxes: L1 summed over the
    coordinates, and ``1 - GIoU`` (Carion et al., DETR, Eq. 2 and its L1 term), each ``(...)``."""
    l1 = (boxes - targets).abs().sum(dim=-1)
    giou = aligned_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(targets), generalized=True)
    return l1, 1 - giou


def roi_align_padded(
    features: Tensor,
    boxes: Tensor,
    image_size: Sequence[int] | Tensor,
    output_size: int = 3,
    *,
    samples_per_bin: int = -1,
    max_samples_per_bin: int = 8,
) -> Tensor:
    r"""RoIAlign (He et al., Mask R-CNN) of padded per-image boxes, vectorised over images and boxes.

    Follows ``torchvision.ops.roi_align(..., aligned=False)``: a box is scaled to the map, its size is
    clamped to at least one cell, split into ``output_size x output_size`` bins and each bin averages
    ``s_h x s_w`` bilinear samples (samples beyond one cell outside the map count as zero).

    Args:
        features: ``(N, C, H, W)`` feature map.
        boxes: ``(N, M, 4)`` xyxy boxes in input-image pixels (padding rows are computed; the caller
            ignores them).
        image_size: ``(height, width)`` or ``(N, 2)``; the box scale is ``W / width`` along x and
            ``H / height`` along y.
        output_size: bins per side.
        samples_per_bin: samples per bin and axis (torchvision's ``sampling_ratio``); ``<= 0`` picks
            ``ceil(box size / output_size)`` per box like torchvision, capped at ``max_samples_per_bin``.
        max_samples_per_bin: the cap of the adaptive count (fixed so the shape does not depend on data).

    Returns:
        ``(N, M, C, output_size, output_size)`` pooled features in ``features``' dtype.

    Notes:
        Adaptive sampling equals torchvision's exactly while ``ceil(box size in cells / output_size)``
        stays within ``max_samples_per_bin`` (boxes up to 24 cells with the defaults); larger boxes
        average an evenly spread ``8 x 8`` grid per bin instead of a denser one. Boxes and the image
        size are not checked here (the losses check them); a non-finite box or image size gives NaN.

    Example:
        >>> import torch
        >>> roi_align_padded(torch.randn(2, 4, 6, 10), torch.tensor([[[0.0, 0.0, 20.0, 12.0]]] * 2), (24, 40)).shape
        torch.Size([2, 1, 4, 3, 3])
    """
    n, c, height, width = features.shape
    m = boxes.shape[1]
    k = output_size
    img_h, img_w = image_hw(image_size, n, boxes)
    scale = torch.cat([width / img_w, height / img_h], dim=1)[:, None, :]  # (N, 1, 2) as (x, y)
    start = boxes[..., :2] * scale  # (N, M, 2)
    size = (boxes[..., 2:] * scale - start).clamp(min=1.0)
    bin_size = size / k
    if samples_per_bin > 0:
        samples = samples_per_bin
        count = torch.full_like(size, float(samples_per_bin))
    else:
        samples = max_samples_per_bin
        count = torch.ceil(bin_size).clamp(1.0, float(max_samples_per_bin))
    steps = torch.arange(samples, device=boxes.device, dtype=boxes.dtype)
    bins = torch.arange(k, device=boxes.device, dtype=boxes.dtype)
    # Sample coordinates (N, M, k, S, 2): bin start + (i + 0.5) * bin / count, for i < count.
    offset = (steps[:, None] + 0.5) / count[:, :, None, None, :]  # (N, M, 1, S, 2)
    coords = start[:, :, None, None, :] + (bins[:, None, None] + offset) * bin_size[:, :, None, None, :]
    used = (steps[:, None] < count[:, :, None, None, :]).to(features.dtype)  # (N, M, 1, S, 2)
    limit = torch.tensor([width, height], device=boxes.device, dtype=boxes.dtype)
    inside = ((coords >= -1) & (coords <= limit)).to(features.dtype)
    weight = used * inside / count[:, :, None, None, :]  # (N, M, k, S, 2)

    # grid_sample(align_corners=False, padding_mode="border") clamps to [0, size - 1] like RoIAlign.
    norm = (2 * coords + 1) / limit - 1
    gx = norm[..., 0].reshape(n, m, 1, k * samples, 1).expand(n, m, k * samples, k * samples, 1)
    gy = norm[..., 1].reshape(n, m, k * samples, 1, 1).expand(n, m, k * samples, k * samples, 1)
    grid = torch.cat([gx, gy], dim=-1).reshape(n, m * k * samples, k * samples, 2)
    # A non-finite coordinate makes grid_sample index out of bounds; such a sample keeps a NaN weight.
    grid = torch.nan_to_num(grid.to(features.dtype), nan=-2.0, posinf=2.0, neginf=-2.0)
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.reshape(n, c, m, k, samples, k, samples)
    wx = weight[..., 0].reshape(n, 1, m, 1, 1, k, samples)
    wy = weight[..., 1].reshape(n, 1, m, k, samples, 1, 1)
    pooled = (sampled * wy * wx).sum(dim=(4, 6))  # (N, C, M, k, k)
    return pooled.permute(0, 2, 1, 3, 4)


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor, *, generalized: bool = False, eps: float = 1e-6) -> Tensor:
    r"""IoU, or generalized IoU (Rezatofighi et al., CVPR 2019), of aligned pairs of xyxy boxes.

    .. math::
        \mathrm{IoU} = \frac{|A \cap B|}{\max(|A \cup B|, \epsilon)}, \qquad
        \mathrm{GIoU} = \mathrm{IoU} - \frac{\max(|C|, \epsilon) - \max(|A \cup B|, \epsilon)}{\max(|C|, \epsilon)}

    with :math:`C` the smallest box enclosing :math:`A` and :math:`B`; the clamps follow mmdetection's
    ``bbox_overlaps(..., is_aligned=True)``.

    Args:
        boxes1: ``(..., 4)`` boxes ``x1, y1, x2, y2``.
        boxes2: boxes of the same shape, paired element by element with ``boxes1``.
        generalized: return GIoU instead of IoU.
        eps: :math:`\epsilon`, the smallest union (and enclosing) area.

    Returns:
        ``(...)`` IoU (in ``[0, 1]``) or GIoU (in ``(-1, 1]``) per pair.

    Example:
        >>> import torch
        >>> a, b = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]])
        >>> aligned_box_iou(a, b), aligned_box_iou(a, b, generalized=True)
        (tensor([0.3333]), tensor([0.3333]))
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    inter_wh = (torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2]))
    overlap = inter_wh.clamp(min=0).prod(dim=-1)
    union = (area1 + area2 - overlap).clamp(min=eps)
    iou = overlap / union
    if not generalized:
        return iou
    enclose_wh = torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(boxes1[..., :2], boxes2[..., :2])
    enclose = enclose_wh.clamp(min=0).prod(dim=-1).clamp(min=eps)
    return iou - (enclose - union) / enclose


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    r"""Pairwise IoU of two sets of xyxy boxes (``torchvision.ops.box_iou``, batched).

    Args:
        boxes1: ``(..., P, 4)`` boxes ``x1, y1, x2, y2``.
        boxes2: ``(..., Q, 4)`` boxes (leading dimensions broadcast with ``boxes1``'s).

    Returns:
        ``(..., P, Q)`` IoU; 0 for pairs that do not overlap (also when both boxes are empty).

    Example:
        >>> import torch
        >>> box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]]))
        tensor([[0.3333, 0.0000]])
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lower = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    upper = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    inter = (upper - lower).clamp(min=0).prod(dim=-1)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def nms_top_k(boxes: Tensor, scores: Tensor, k: int, iou_threshold: float) -> tuple[Tensor, Tensor]:
    r"""The first ``k`` boxes that greedy non-maximum suppression keeps, per image, in descending score.

    Greedy NMS visits boxes by decreasing score and keeps a box unless a kept box overlaps it with
    IoU above ``iou_threshold``; its first ``k`` survivors are found by ``k`` rounds of "take the best
    live box, kill the live boxes it overlaps". Each round is one ``argmax`` and one IoU row over the
    ``Q`` candidates, so the cost is ``O(k Q)`` per image (no ``Q x Q`` IoU matrix), with fixed
    shapes, no ``.item()`` and no host synchronisation.

    Args:
        boxes: ``(N, Q, 4)`` xyxy boxes.
        scores: ``(N, Q)`` scores; ``-inf`` marks a candidate that is not there. NaN scores are not
            skipped (``argmax`` takes them first), so a diverged input shows in the result.
        k: how many survivors to return per image.
        iou_threshold: a box is suppressed by a kept box when their IoU is strictly above this.

    Returns:
        ``(indices, kept)``: ``(N, k)`` indices into ``Q`` of the survivors in the order NMS keeps
        them (descending score), and an ``(N, k)`` bool mask that is ``False`` for slots past the
        last survivor (their indices are meaningless).

    Example:
        >>> import torch
        >>> boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]]])
        >>> nms_top_k(boxes, torch.tensor([[0.9, 0.8, 0.7]]), 3, 0.5)
        (tensor([[0, 2, 0]]), tensor([[ True,  True, False]]))

    Notes:
        Equal scores are taken in index order (torchvision sorts them in an unspecified order).
    """
    n, q = scores.shape
    rows = torch.arange(n, device=scores.device)
    alive = scores != float("-inf")
    indices, kept = [], []
    for _ in range(k):
        best = scores.masked_fill(~alive, float("-inf")).argmax(dim=1) if q else rows.new_zeros(n)
        kept.append(alive[rows, best] if q else torch.zeros(n, dtype=torch.bool, device=scores.device))
        indices.append(best)
        if q:
            overlap = box_iou(boxes[rows, best][:, None], boxes)[:, 0] > iou_threshold
            alive = alive & ~overlap
            alive[rows, best] = False
    if k == 0:
        return rows.new_zeros(n, 0), torch.zeros(n, 0, dtype=torch.bool, device=scores.device)
    return torch.stack(indices, dim=1), torch.stack(kept, dim=1)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    r"""Sigmoid focal loss per element (Lin et al., ICCV 2017), unreduced.

    :math:`\mathrm{BCE}(z, q)\,\big(\alpha q + (1 - \alpha)(1 - q)\big)\,p_t^\gamma` with
    :math:`p = \sigma(z)` and :math:`p_t = (1 - p) q + p (1 - q)`, the form of mmdetection's and
    Deformable DETR's ``sigmoid_focal_loss`` (soft targets ``q`` allowed).

    Example:
        >>> import torch
        >>> sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """
    p = logits.sigmoid()
    pt = (1 - p) * targets + p * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight * pt.pow(gamma)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` boxes ``cx, cy, w, h`` (DETR's normalised form) to ``x1, y1, x2, y2`` in the same units."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([center - 0.5 * size, center + 0.5 * size], dim=-1)


def detr_match_cost(
    logits: Tensor,
    boxes: Tensor,
    target_probs: Tensor,
    target_boxes: Tensor,
    *,
    class_cost: str = "bce",
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Tensor:
    r"""DETR's matching cost between predictions and (soft) targets, per image.

    .. math::
        C_{pm} = \lambda_{cls} C^{cls}_{pm} + \lambda_{L1} \lVert b_p - \hat b_m \rVert_1
            - \lambda_{GIoU} \mathrm{GIoU}(b_p, \hat b_m)

    with, for sigmoid class logits :math:`z_p` and a target class vector :math:`q_m \in [0, 1]^K`,
    ``class_cost='bce'``: :math:`C^{cls}_{pm} = \sum_c q_{mc}\,\mathrm{BCE}(z_{pc}, 1) +
    (1 - q_{mc})\,\mathrm{BCE}(z_{pc}, 0)` (DETRDistill's soft cost), or ``'focal'``:
    :math:`C^{cls}_{pm} = \sum_c q_{mc} (\mathrm{pos}_{pc} - \mathrm{neg}_{pc})` with
    :math:`\mathrm{pos} = -\alpha (1 - p)^\gamma \log(p + 10^{-12})`,
    :math:`\mathrm{neg} = -(1 - \alpha) p^\gamma \log(1 - p + 10^{-12})`, :math:`p = \sigma(z)`
    (Deformable DETR's focal cost; a one-hot :math:`q_m` picks the ground-truth class).

    Args:
        logits: ``(N, P, K)`` sigmoid class logits of the predictions.
        boxes: ``(N, P, 4)`` predicted boxes ``cx, cy, w, h`` normalised by the image size.
        target_probs: ``(N, M, K)`` target class vectors (one-hot labels or soft probabilities).
        target_boxes: ``(N, M, 4)`` target boxes, same format as ``boxes``.
        class_cost: ``'bce'`` or ``'focal'``.
        class_weight: :math:`\lambda_{cls}`.
        l1_weight: :math:`\lambda_{L1}` (L1 distance of the normalised ``cx, cy, w, h``).
        giou_weight: :math:`\lambda_{GIoU}`.
        focal_alpha: :math:`\alpha` of the focal cost.
        focal_gamma: :math:`\gamma` of the focal cost.

    Returns:
        ``(N, P, M)`` cost in float32 or wider, without gradient.

    Example:
        >>> import torch
        >>> detr_match_cost(torch.randn(2, 5, 3), torch.rand(2, 5, 4), torch.rand(2, 4, 3), torch.rand(2, 4, 4)).shape
        torch.Size([2, 5, 4])
    """
    with torch.no_grad():
        dtype = torch.promote_types(logits.dtype, torch.float32)
        z, q = logits.to(dtype), target_probs.to(dtype)
        if class_cost == "bce":
            pos, neg = F.softplus(-z), F.softplus(z)  # BCE(z, 1) and BCE(z, 0)
            cls = pos @ q.transpose(1, 2) + neg @ (1 - q).transpose(1, 2)
        elif class_cost == "focal":
            p = z.sigmoid()
            pos = -(p + 1e-12).log() * focal_alpha * (1 - p).pow(focal_gamma)
            neg = -(1 - p + 1e-12).log() * (1 - focal_alpha) * p.pow(focal_gamma)
            cls = (pos - neg) @ q.transpose(1, 2)
        else:
            raise ValueError(f"class_cost must be 'bce' or 'focal', got {class_cost!r}")
        b, t = boxes.to(dtype), target_boxes.to(dtype)
        l1 = torch.cdist(b, t, p=1)
        giou = aligned_box_iou(box_cxcywh_to_xyxy(b)[:, :, None], box_cxcywh_to_xyxy(t)[:, None], generalized=True)
        return class_weight * cls + l1_weight * l1 - giou_weight * giou


@torch.library.custom_op("kdimpl::hungarian_match", mutates_args=())
def _hungarian_match(cost: Tensor, valid_mask: Tensor) -> Tensor:
    from scipy.optimize import linear_sum_assignment

    matched = torch.full(cost.shape[:-1], -1, dtype=torch.long)
    # NaN or inf costs (a diverged input) would make SciPy refuse the matrix; the loss shows the NaN instead.
    costs = torch.nan_to_num(cost.detach().to("cpu", torch.float64), nan=1e30, posinf=1e30, neginf=-1e30)
    valid = valid_mask.to("cpu")
    for i in range(costs.shape[0]):
        columns = valid[i].nonzero()[:, 0]
        rows, picked = linear_sum_assignment(costs[i][:, columns].numpy())
        matched[i, torch.from_numpy(rows).long()] = columns[torch.from_numpy(picked).long()]
    return matched.to(cost.device)


@_hungarian_match.register_fake
def _(cost: Tensor, valid_mask: Tensor) -> Tensor:
    return cost.new_empty(cost.shape[:-1], dtype=torch.long)


def hungarian_match(cost: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    r"""Minimum-cost one-to-one matching of rows to columns, per image (Kuhn-Munkres).

    Solved by ``scipy.optimize.linear_sum_assignment`` on the host, one image at a time; wrapped
    as a custom operator, so ``torch.compile(fullgraph=True)`` sees one opaque call. Non-finite
    costs are replaced by :math:`\pm 10^{30}` before solving.

    Args:
        cost: ``(N, P, M)`` cost of assigning row (prediction) ``p`` to column (target) ``m``.
        valid_mask: ``(N, M)`` bool, ``False`` for padding columns that take no part; ``None``:
            every column is real.

    Returns:
        ``(N, P)`` long: the column matched to each row, ``-1`` for rows left unmatched (when
        ``P`` exceeds the number of real columns).

    Example:
        >>> import torch
        >>> hungarian_match(torch.tensor([[[0.0, 1.0], [0.0, 5.0], [3.0, 3.0]]]))
        tensor([[ 1,  0, -1]])
    """
    if valid_mask is None:
        valid_mask = torch.ones(cost.shape[0], cost.shape[-1], dtype=torch.bool, device=cost.device)
    return _hungarian_match(cost, valid_mask.to(torch.bool))
