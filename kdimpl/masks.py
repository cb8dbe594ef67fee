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
from torch import Tensor

from ._checks import check_boxes

__all__ = ["pad_boxes", "scale_boxes_to_feature", "box_cell_bounds", "rasterize_boxes", "foreground_mask", "inverse_area_mask"]

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


def foreground_mask(
    gt_boxes: Sequence[Tensor] | Tensor, image_size: ImageSize, feature_size: Sequence[int], valid: Tensor | None = None
) -> Tensor:
    """Binary ``(N, H, W)`` mask of the cells covered by any box (:func:`box_cell_bounds` covering)."""
    boxes, valid = pad_boxes(gt_boxes, valid)
    check_boxes(boxes, boxes.shape[0])
    masks = rasterize_boxes(box_cell_bounds(boxes, image_size, feature_size), valid, feature_size)
    return masks.any(dim=1).to(boxes.dtype)


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
    masks = rasterize_boxes(bounds, valid, feature_size)
    area = (bounds[..., 2] - bounds[..., 0] + 1).clamp(min=1) * (bounds[..., 3] - bounds[..., 1] + 1).clamp(min=1)
    weights = masks.to(boxes.dtype) / area[..., None, None]  # empty boxes: 0 / 1
    if weights.shape[1] == 0:
        return weights.new_zeros((weights.shape[0], *feature_size))
    return weights.amax(dim=1)
