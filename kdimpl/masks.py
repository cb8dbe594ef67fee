"""Box-to-mask rasterisation on feature maps, vectorised over images and boxes.

Boxes come per image as ``(M_i, 4)`` tensors of ``x1, y1, x2, y2`` in input-image pixels
(x along the width, y along the height). A feature map of size ``(H, W)`` covers the
image, so box coordinates scale by ``W / image_width`` and ``H / image_height``.
Everything is built on the boxes' device with broadcasting: no Python loop over boxes,
no ``.item()``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import _tracing, check_boxes

__all__ = [
    "pad_boxes",
    "scale_boxes_to_feature",
    "scale_boxes_to_levels",
    "box_cell_bounds",
    "rasterize_boxes",
    "cover_counts",
    "cover_counts_levels",
    "max_cover",
    "max_cover_levels",
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


def scale_boxes_to_levels(boxes: Tensor, image_size: ImageSize, feature_sizes: Sequence[Sequence[int]]) -> Tensor:
    """Map ``(N, M, 4)`` pixel boxes to the continuous cell coordinates of every level, ``(L, N, M, 4)``."""
    img_h, img_w = _image_hw(image_size, boxes.shape[0], boxes)
    # Divide first, then multiply (x / img_w * W): the order of FGD's official code, exact when an edge
    # falls on a cell boundary, where x * (W / img_w) can round up by one ulp and ceil adds a cell.
    image = torch.stack([img_w, img_h, img_w, img_h], dim=-1)  # (N, 1, 4)
    cells = boxes.new_tensor([[w, h, w, h] for h, w in feature_sizes])[:, None, None]  # (L, 1, 1, 4)
    return boxes / image * cells


def scale_boxes_to_feature(boxes: Tensor, image_size: ImageSize, feature_size: Sequence[int]) -> Tensor:
    """Map ``(N, M, 4)`` pixel boxes to continuous feature-map coordinates (cells)."""
    return scale_boxes_to_levels(boxes, image_size, [feature_size])[0]


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


def _level_index(sizes: Sequence[int], device) -> tuple[Tensor, Tensor]:
    """For levels of ``sizes`` cells laid end to end: each cell's coordinate within its level and its level."""
    coord = [i for size in sizes for i in range(size)]
    level = [l for l, size in enumerate(sizes) for _ in range(size)]
    return torch.tensor(coord, device=device), torch.tensor(level, device=device)


def _level_products(
    row_weight: Tensor, cols: Tensor, feature_sizes: Sequence[Sequence[int]]
) -> Tensor:
    """Per level, ``row_weight^T @ cols`` as ``(N, G, H_l, W_l)`` blocks laid end to end in one 1-D tensor.

    ``row_weight`` is ``(N, G, sum H_l, M)`` (levels' rows end to end), ``cols`` is ``(N, sum W_l, M)``;
    :func:`_level_views` cuts the result. Autocast is off: the products must stay exact float32
    integers. In eager mode each level's product is written straight into its block (fresh memory,
    not arithmetic, is what costs here); dynamo rejects ``out=``, so compiled code concatenates.
    """
    n, groups, _, m = row_weight.shape
    compiling = torch.compiler.is_compiling()
    total = n * groups * sum(int(h) * int(w) for h, w in feature_sizes)
    out = None if compiling else row_weight.new_empty(total)
    products, row, col, start = [], 0, 0, 0
    with torch.autocast(row_weight.device.type, enabled=False):
        for height, width in feature_sizes:
            height, width = int(height), int(width)
            a = row_weight[:, :, row : row + height].reshape(n * groups, height, m)
            b = cols[:, None, col : col + width].transpose(-1, -2).expand(n, groups, m, width)
            b = b.reshape(n * groups, m, width)
            size = n * groups * height * width
            if compiling:
                products.append(torch.bmm(a, b).reshape(-1))
            else:
                torch.bmm(a, b, out=out[start : start + size].view(n * groups, height, width))
            row, col, start = row + height, col + width, start + size
    return out if out is not None else torch.cat(products)


def _level_views(flat: Tensor, leading: Sequence[int], feature_sizes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Contiguous ``(*leading, H_l, W_l)`` views of the level blocks of a 1-D tensor."""
    views, start = [], 0
    for height, width in feature_sizes:
        shape = (*leading, int(height), int(width))
        size = math.prod(shape)
        views.append(flat[start : start + size].view(shape))
        start += size
    return views


def _row_col_indicators(
    bounds: Tensor, valid: Tensor, feature_sizes: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Row ``(N, sum H_l, M)`` and column ``(N, sum W_l, M)`` indicators of levels' inclusive box ranges.

    ``bounds`` is ``(L, N, M, 4)`` and ``valid`` ``(L, N, M)``; row ``y`` of level ``l`` is inside box
    ``m`` when ``y0 <= y <= y1`` (invalid boxes have no rows). Also returns each row's level
    (``None`` for a single level, where no row needs looking up).
    """
    per_image = bounds.transpose(0, 1)  # (N, L, M, 4)
    if len(feature_sizes) == 1:  # every row is on level 0: broadcast instead of looking rows up
        height, width = (int(size) for size in feature_sizes[0])
        ys = torch.arange(height, device=bounds.device)
        xs = torch.arange(width, device=bounds.device)
        row_level = None
        y_range, x_range = per_image[..., 1::2], per_image[..., 0::2]  # (N, 1, M, 2)
        row_valid = valid.transpose(0, 1)
    else:
        ys, row_level = _level_index([int(size[0]) for size in feature_sizes], bounds.device)
        xs, col_level = _level_index([int(size[1]) for size in feature_sizes], bounds.device)
        y_range = per_image[..., 1::2].index_select(1, row_level)  # (N, sum H, M, 2): y0, y1 of each row's level
        x_range = per_image[..., 0::2].index_select(1, col_level)
        row_valid = valid.transpose(0, 1).index_select(1, row_level)
    ys, xs = ys.to(bounds.dtype)[:, None], xs.to(bounds.dtype)[:, None]
    rows = (ys >= y_range[..., 0]) & (ys <= y_range[..., 1]) & row_valid
    cols = (xs >= x_range[..., 0]) & (xs <= x_range[..., 1])
    return rows, cols, row_level


def _as_levels(bounds: Tensor, valid: Tensor, feature_sizes) -> tuple[Tensor, Tensor]:
    if valid.dim() == 2:
        valid = valid.expand(bounds.shape[0], *valid.shape)
    if not _tracing() and (bounds.shape[0] != len(feature_sizes) or valid.shape != bounds.shape[:3]):
        raise ValueError(
            f"bounds {tuple(bounds.shape)} and valid {tuple(valid.shape)} must be (L, N, M, 4) and (N, M) or "
            f"(L, N, M) with L = {len(feature_sizes)} feature sizes"
        )
    return bounds, valid


def cover_counts_levels(bounds: Tensor, valid: Tensor, feature_sizes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Number of boxes covering each cell, one ``(N, H_l, W_l)`` float32 tensor per level.

    ``bounds`` are inclusive cell bounds ``(L, N, M, 4)`` (one set per level), ``valid`` is ``(N, M)``
    or per level ``(L, N, M)`` (a box may be restricted to some levels). A rectangle is the outer
    product of a row and a column indicator, so each level's counts are one batched
    ``(N, H, M) x (N, M, W)`` matmul instead of an ``(N, M, H, W)`` tensor. Bounds outside the map
    are clipped by the comparison (a negative start covers from 0). The levels are contiguous
    views of one tensor.
    """
    bounds, valid = _as_levels(bounds, valid, feature_sizes)
    rows, cols, _ = _row_col_indicators(bounds, valid, feature_sizes)
    counts = _level_products(rows.float()[:, None], cols.float(), feature_sizes)
    return _level_views(counts, (valid.shape[1],), feature_sizes)


def cover_counts(bounds: Tensor, valid: Tensor, feature_size: Sequence[int]) -> Tensor:
    """``(N, H, W)`` float32 number of boxes covering each cell, from inclusive cell bounds ``(N, M, 4)``.

    Equals ``rasterize_boxes(bounds, valid, feature_size).sum(1)``; one level of
    :func:`cover_counts_levels`.
    """
    return cover_counts_levels(bounds[None], valid, [feature_size])[0]


# Sums of 1 and distinct 2**k, 1 <= k <= 23, are integers < 2**24: exact in float32 matmuls (and in
# TF32, whose inputs here are powers of two and whose accumulation is float32).
_CHUNK = 23


def max_cover_levels(
    bounds: Tensor, valid: Tensor, weight: Tensor, feature_sizes: Sequence[Sequence[int]]
) -> list[Tensor]:
    """Per cell of every level, the largest ``weight`` of the boxes covering it (0 where none).

    Args:
        bounds: inclusive cell bounds ``(L, N, M, 4)``, one set per level.
        valid: ``(N, M)`` or ``(L, N, M)`` bool mask of the boxes that count (on each level).
        weight: non-negative ``(L, N, M)`` box weights, per level.
        feature_sizes: ``(H_l, W_l)`` of the ``L`` levels.

    Returns:
        one ``(N, H_l, W_l)`` tensor per level (contiguous views of one tensor), equal to
        ``(rasterize_boxes(...) * weight[..., None, None]).amax(1)`` level by level.

    Never builds ``(N, M, H, W)`` tensors: within a level, boxes are ranked by weight and, within
    chunks of ``_CHUNK`` ranks, the box of rank ``k`` adds ``2**(k + 1)`` to one matmul of row and
    column indicators, so the float32 exponent of a cell's (exact integer) sum names its heaviest
    covering box.
    """
    bounds, valid = _as_levels(bounds, valid, feature_sizes)
    num_levels, n, m = weight.shape
    if m == 0:
        return [weight.new_zeros((n, int(h), int(w))) for h, w in feature_sizes]
    rows, cols, row_level = _row_col_indicators(bounds, valid, feature_sizes)
    sorted_weight, order = weight.sort(dim=-1)
    rank = order.argsort(dim=-1)  # (L, N, M)
    groups = -(-m // _CHUNK)
    # each row's ranks, (N, sum H, M)
    rank_at = rank[0, :, None].expand_as(rows) if row_level is None else rank.transpose(0, 1).index_select(1, row_level)
    code = (torch.exp2((rank_at % _CHUNK + 1).float()) * rows)[:, None]
    if groups > 1:
        code = code * (rank_at[:, None] // _CHUNK == torch.arange(groups, device=rank.device)[:, None, None])
    # One more column of ones adds 1 to every cell, so an uncovered cell's sum is 1 (highest bit 0).
    code = torch.cat([code, code.new_ones((*code.shape[:-1], 1))], dim=-1)
    cols = torch.cat([cols.float(), cols.new_ones((*cols.shape[:-1], 1), dtype=torch.float32)], dim=-1)
    sums = _level_products(code, cols, feature_sizes)  # each an integer in [1, 2**24)
    # The highest set bit of a float32 integer is its unbiased exponent: the bits above the mantissa,
    # read in place (biased by 127: 127 + rank within the chunk + 1 for a covered cell, else 127).
    exponent = sums.view(torch.int32).bitwise_right_shift_(23)
    if groups > 1:  # the highest chunk with a covering box, per level
        offset = _CHUNK * torch.arange(groups, device=sums.device, dtype=torch.int32)[:, None, None]
        exponent = torch.cat([
            torch.where(part > 127, part + offset, 127).amax(dim=1).reshape(-1)
            for part in _level_views(exponent, (n, groups), feature_sizes)
        ])
    # One table of the levels' sorted weights behind a 0 for "no box", (L * N * (M + 1),), read at
    # (level * N + image) * (M + 1) + rank + 1: each level's block gets its base added in place.
    table = F.pad(sorted_weight, (1, 0)).reshape(-1)
    base = torch.arange(num_levels * n, device=sums.device, dtype=torch.int32).reshape(num_levels, n) * (m + 1) - 127
    for level, part in enumerate(_level_views(exponent, (n,), feature_sizes)):
        part.add_(base[level, :, None, None])
    return _level_views(table.index_select(0, exponent), (n,), feature_sizes)


def max_cover(bounds: Tensor, valid: Tensor, weight: Tensor, feature_size: Sequence[int]) -> Tensor:
    """Per cell, the largest ``weight`` ``(N, M)`` of the boxes covering it (0 where none), as ``(N, H, W)``.

    Equals ``(rasterize_boxes(...) * weight[..., None, None]).amax(1)`` for non-negative weights;
    one level of :func:`max_cover_levels`.
    """
    return max_cover_levels(bounds[None], valid, weight[None], [feature_size])[0]


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
