"""Box-to-mask rasterisation on feature maps, vectorised over images and boxes.

Boxes come per image as ``(M_i, 4)`` tensors of ``x1, y1, x2, y2`` in input-image pixels
(x along the width, y along the height). A feature map of size ``(H, W)`` covers the
image, so box coordinates scale by ``W / image_width`` and ``H / image_height``.
Everything is built on the boxes' device with broadcasting: no Python loop over boxes,
no ``.item()``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_boxes

__all__ = [
    "pad_boxes",
    "scale_boxes_to_feature",
    "box_cell_bounds",
    "rasterize_boxes",
    "cover_counts",
    "max_cover",
    "foreground_mask",
    "inverse_area_mask",
]

ImageSize = Sequence[int] | Tensor


def pad_boxes(gt_boxes: Sequence[Tensor] | Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Stack per-image boxes into one padded tensor.

    Args:
        gt_boxes: ``N`` tensors of shape ``(M_i, 4)``, or an already padded ``(N, M, 4)`` tensor.
        valid: for a padded tensor, an optional ``(N, M)`` bool mask of real boxes (default: all).

    Returns:
        ``(boxes, valid)``: ``(N, M, 4)`` boxes (padding is zeros) and the ``(N, M)`` bool mask,
        with ``M = max(M_i)`` (``M`` may be 0).
    """
    if isinstance(gt_boxes, Tensor):
        if valid is None:
            valid = torch.ones(gt_boxes.shape[:2], dtype=torch.bool, device=gt_boxes.device)
        return gt_boxes, valid
    if len(gt_boxes) == 0:
        raise ValueError("gt_boxes is empty: pass one (M_i, 4) tensor per image (M_i may be 0)")
    check_boxes(gt_boxes, len(gt_boxes))
    counts = [b.shape[0] for b in gt_boxes]
    max_boxes = max(counts)
    ref = gt_boxes[0]
    dtype = torch.promote_types(ref.dtype, torch.float32) if not ref.is_floating_point() else ref.dtype
    padded = ref.new_zeros((len(gt_boxes), max_boxes, 4), dtype=dtype)
    mask = torch.zeros((len(gt_boxes), max_boxes), dtype=torch.bool, device=ref.device)
    for i, (boxes, count) in enumerate(zip(gt_boxes, counts)):  # one loop over images, not boxes
        padded[i, :count] = boxes.to(dtype)
        mask[i, :count] = True
    return padded, mask


def _image_hw(image_size: ImageSize, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image (height, width) as ``(N, 1)`` tensors."""
    size = torch.as_tensor(image_size, dtype=like.dtype, device=like.device)
    if size.dim() == 1:
        if size.numel() != 2:
            raise ValueError(f"image_size must be (height, width) or an (N, 2) tensor, got {tuple(size.shape)}")
        size = size.expand(batch, 2)
    elif size.shape != (batch, 2):
        raise ValueError(f"image_size must be (height, width) or an (N, 2) tensor with N={batch}, got {tuple(size.shape)}")
    return size[:, :1], size[:, 1:]


def scale_boxes_to_feature(boxes: Tensor, image_size: ImageSize, feature_size: Sequence[int]) -> Tensor:
    """Map ``(N, M, 4)`` pixel boxes to continuous feature-map coordinates (cells)."""
    img_h, img_w = _image_hw(image_size, boxes.shape[0], boxes)
    height, width = feature_size
    # Divide first, then multiply (x / img_w * W): the order of FGD's official code, exact when an edge
    # falls on a cell boundary, where x * (W / img_w) can round up by one ulp and ceil adds a cell.
    image = torch.stack([img_w, img_h, img_w, img_h], dim=-1)  # (N, 1, 4)
    cells = boxes.new_tensor([width, height, width, height])
    return boxes / image * cells


def box_cell_bounds(boxes: Tensor, image_size: ImageSize, feature_size: Sequence[int]) -> Tensor:
    """Inclusive cell ranges ``(x0, y0, x1, y1)`` of each box: floor of the near edge, ceil of the far edge.

    Cells ``x0..x1`` and ``y0..y1`` are covered, so a box inside the map covers at least one cell
    and an edge on a cell boundary reaches one cell further: the rounding of FGD's official code.
    Unlike that code, ranges are clipped to the map, so a box reaching past the border covers
    only its visible cells, and a box outside the map or inverted (``x2 < x1``) gets an empty
    range (``x0 > x1`` or ``y0 > y1``). :mod:`kdimpl.losses.fgd` keeps FGD's exact semantics.
    """
    scaled = scale_boxes_to_feature(boxes, image_size, feature_size)
    height, width = feature_size
    x0, y0 = scaled[..., 0].floor(), scaled[..., 1].floor()
    x1, y1 = scaled[..., 2].ceil(), scaled[..., 3].ceil()
    # Near edges clip to [0, size] and far edges to [-1, size - 1], so invisible boxes stay empty.
    return torch.stack(
        [x0.clamp(0, width), y0.clamp(0, height), x1.clamp(-1, width - 1), y1.clamp(-1, height - 1)], dim=-1
    )


def rasterize_boxes(bounds: Tensor, valid: Tensor, feature_size: Sequence[int]) -> Tensor:
    """Per-box bool masks ``(N, M, H, W)`` from inclusive cell bounds ``(N, M, 4)``; invalid boxes are empty."""
    height, width = feature_size
    ys = torch.arange(height, device=bounds.device, dtype=bounds.dtype).view(1, 1, height, 1)
    xs = torch.arange(width, device=bounds.device, dtype=bounds.dtype).view(1, 1, 1, width)
    x0, y0, x1, y1 = (bounds[..., k, None, None] for k in range(4))
    inside_y = (ys >= y0) & (ys <= y1)
    inside_x = (xs >= x0) & (xs <= x1)
    return inside_y & inside_x & valid[..., None, None]


def _row_col_indicators(bounds: Tensor, valid: Tensor, feature_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(N, M, H)`` rows and ``(N, M, W)`` columns inside each box's inclusive range (invalid boxes: no rows)."""
    height, width = feature_size
    ys = torch.arange(height, device=bounds.device, dtype=bounds.dtype)
    xs = torch.arange(width, device=bounds.device, dtype=bounds.dtype)
    rows = (ys >= bounds[..., 1, None]) & (ys <= bounds[..., 3, None]) & valid[..., None]
    cols = (xs >= bounds[..., 0, None]) & (xs <= bounds[..., 2, None])
    return rows, cols


def cover_counts(bounds: Tensor, valid: Tensor, feature_size: Sequence[int]) -> Tensor:
    """``(N, H, W)`` float32 number of boxes covering each cell, from inclusive cell bounds ``(N, M, 4)``.

    Equals ``rasterize_boxes(bounds, valid, feature_size).sum(1)``, but a rectangle is the outer
    product of a row and a column indicator, so the counts are one batched ``(N, H, M) x (N, M, W)``
    matmul instead of an ``(N, M, H, W)`` tensor. Bounds outside the map are clipped by the
    comparison (a negative start covers from 0).
    """
    rows, cols = _row_col_indicators(bounds, valid, feature_size)
    return torch.bmm(rows.transpose(1, 2).float(), cols.float())


# Sums of distinct 2**k, k < 11, are integers < 2048: exact in float16/bfloat16-input, float32-accumulate matmuls.
_CHUNK = 11


def max_cover(bounds: Tensor, valid: Tensor, weight: Tensor, feature_size: Sequence[int]) -> Tensor:
    """Per cell, the largest ``weight`` ``(N, M)`` of the boxes covering it (0 where none), as ``(N, H, W)``.

    Equals ``(rasterize_boxes(...) * weight[..., None, None]).amax(1)`` for non-negative weights,
    without ``(N, M, H, W)`` tensors: boxes are sorted by weight and, within chunks of ``_CHUNK``
    boxes, the k-th box contributes ``2**k`` to one matmul of row and column indicators, so the
    highest set bit of a cell's sum names its heaviest covering box (exact integer arithmetic).
    """
    height, width = feature_size
    n, m = valid.shape
    if m == 0:
        return weight.new_zeros((n, height, width))
    rows, cols = _row_col_indicators(bounds, valid, feature_size)
    groups = -(-m // _CHUNK)
    pad = groups * _CHUNK - m
    order = weight.argsort(dim=1)
    sorted_weight = weight.gather(1, order)
    code = torch.exp2(torch.arange(groups * _CHUNK, device=rows.device, dtype=torch.float32) % _CHUNK)
    r = F.pad(rows.gather(1, order[..., None].expand(n, m, height)).float(), (0, 0, 0, pad)) * code[:, None]
    c = F.pad(cols.gather(1, order[..., None].expand(n, m, width)).float(), (0, 0, 0, pad))
    sums = r.reshape(n, groups, _CHUNK, height).transpose(-1, -2) @ c.reshape(n, groups, _CHUNK, width)
    # floor(log2(s + 1/2)) is the highest set bit of an integer s < 2048, with a wide float32 margin.
    offset = _CHUNK * torch.arange(groups, device=rows.device, dtype=torch.float32)[:, None, None]
    sums = sums.float()  # under autocast the matmul may return float16, where s + 1/2 rounds
    top = torch.where(sums > 0, (sums + 0.5).log2().floor() + offset, -1.0).amax(dim=1).long()
    picked = sorted_weight.gather(1, top.clamp(min=0).flatten(1)).reshape(n, height, width)
    return torch.where(top >= 0, picked, torch.zeros_like(picked))


def foreground_mask(
    gt_boxes: Sequence[Tensor] | Tensor, image_size: ImageSize, feature_size: Sequence[int], valid: Tensor | None = None
) -> Tensor:
    """Binary ``(N, H, W)`` mask of the cells covered by any box (:func:`box_cell_bounds` covering)."""
    boxes, valid = pad_boxes(gt_boxes, valid)
    check_boxes(boxes, boxes.shape[0])
    counts = cover_counts(box_cell_bounds(boxes, image_size, feature_size), valid, feature_size)
    return counts.clamp_(max=1).to(boxes.dtype)


def inverse_area_mask(
    gt_boxes: Sequence[Tensor] | Tensor, image_size: ImageSize, feature_size: Sequence[int], valid: Tensor | None = None
) -> Tensor:
    """``(N, H, W)`` mask holding, per cell, the largest ``1 / area`` of the boxes covering it (0 elsewhere).

    Areas are counted in visible cells of the :func:`box_cell_bounds` covering, so small boxes
    get large weights (FGD, Eq. 4).
    """
    boxes, valid = pad_boxes(gt_boxes, valid)
    check_boxes(boxes, boxes.shape[0])
    bounds = box_cell_bounds(boxes, image_size, feature_size)
    area = (bounds[..., 2] - bounds[..., 0] + 1).clamp(min=1) * (bounds[..., 3] - bounds[..., 1] + 1).clamp(min=1)
    return max_cover(bounds, valid, area.reciprocal(), feature_size)  # empty boxes cover no cell
