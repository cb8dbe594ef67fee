"""Box and RoI operations shared by the losses: pooling boxes from a feature map, padding box lists.

Boxes are ``x1, y1, x2, y2`` in pixels of the input tensor whose ``(height, width)`` is
``image_size``; each function maps them to the feature map it receives.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import image_hw, pad_boxes

__all__ = ["aligned_box_iou", "box_iou", "nms_top_k", "roi_align_padded"]


def padded_boxes(
    gt_boxes: Sequence[Tensor] | Tensor, batch_size: int, *, dtype: torch.dtype | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """Checked per-image boxes as one ``(N, M, 4)`` tensor and its ``(N, M)`` bool mask of real boxes.

    ``dtype`` defaults to the boxes' floating dtype (at least float32). An empty batch (``N = 0``,
    an empty list) gives ``(0, 0, 4)`` boxes.
    """
    boxes, valid = pad_boxes(gt_boxes, batch_size=batch_size)
    dtype = dtype or torch.promote_types(boxes.dtype, torch.float32)
    return boxes.to(device=device or boxes.device, dtype=dtype), valid.to(device or boxes.device)


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
