"""Box-to-mask rasterisation on feature maps, vectorised over images and boxes.

Boxes come per image as ``(M_i, 4)`` tensors of ``x1, y1, x2, y2`` in pixels of the input tensor
(x along the width, y along the height), whose ``(height, width)`` is ``image_size``. A feature
map of size ``(H, W)`` covers that tensor, so box coordinates scale by ``W / width`` and
``H / height``: the same boxes serve every FPN level.

Every mask is written in one plain form: the boxes are padded to ``(N, M, 4)`` with an
``(N, M)`` validity mask (:func:`pad_boxes`), a grid of cell indices is broadcast against them
to give the rows and columns each box covers (:func:`box_rows_cols`), whose product is the
``(N, M, H, W)`` cells of each box (:func:`rasterize_boxes`), and a reduction over the box axis
gives the map: ``sum`` for how many boxes cover a cell (:func:`cover_counts`), ``amax`` for the
largest weight of a covering box (:func:`max_cover`).

Compiling: ``torch.compile`` guards on the per-image box counts of a list (a count of 0 or 1
always gets its own graph, and the longest entry sets ``M``), so a list whose counts change from
batch to batch compiles again and again. Pad the boxes once, outside the compiled loss, to a
fixed capacity (``pad_boxes(gt_boxes, min_boxes=M_max)``) and pass the padded ``(N, M, 4)``
tensor with its mask (the losses' ``gt_mask``); the box axis then has the same size every
batch, and one graph serves any number of boxes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._checks import _tracing, check_boxes, check_labels, check_shape

__all__ = [
    "pad_boxes",
    "pad_box_values",
    "image_hw",
    "scale_boxes_to_feature",
    "box_cell_bounds",
    "box_rows_cols",
    "rasterize_boxes",
    "cover_counts",
    "max_cover",
    "foreground_mask",
    "inverse_area_mask",
]

ImageSize = Sequence[int] | Tensor


def pad_boxes(
    gt_boxes: Sequence[Tensor] | Tensor,
    valid: Tensor | None = None,
    *,
    batch_size: int | None = None,
    name: str = "gt_boxes",
    mask_name: str = "gt_mask",
    min_boxes: int = 0,
) -> tuple[Tensor, Tensor]:
    """Check per-image boxes (count, finite, x1 <= x2 and y1 <= y2) and stack them into one padded tensor.

    Args:
        gt_boxes: ``N`` tensors of shape ``(M_i, 4)``, or an already padded ``(N, M, 4)`` tensor.
        valid: for a padded tensor, an optional ``(N, M)`` bool mask of real boxes (default: all);
            padding rows are not checked and come back as zeros.
        batch_size: the number of images the boxes must cover (default: as many as given).
        name: the argument's name in error messages.
        mask_name: the name of ``valid`` in error messages.
        min_boxes: pad to at least this many rows. A fixed capacity keeps the shapes of
            everything downstream the same from batch to batch, so ``torch.compile`` builds one
            graph whatever the box counts (see the module docstring).

    Returns:
        ``(boxes, valid)``: ``(N, M, 4)`` boxes (padding is zeros) and the ``(N, M)`` bool mask,
        with ``M = max(M_i, min_boxes)`` (``M`` may be 0). An empty list (a batch of no images)
        gives float32 ``(0, min_boxes, 4)`` boxes on the CPU.

    Example:
        >>> import torch
        >>> boxes, valid = pad_boxes([torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)], min_boxes=4)
        >>> boxes.shape, valid.sum(dim=1).tolist()
        (torch.Size([2, 4, 4]), [1, 0])
    """
    check_boxes(gt_boxes, len(gt_boxes) if batch_size is None else batch_size, name, valid, mask_name)
    if isinstance(gt_boxes, Tensor):
        if valid is None:
            valid = torch.ones(gt_boxes.shape[:2], dtype=torch.bool, device=gt_boxes.device)
        else:  # padding rows may hold anything; zeros keep them finite in every product with the mask
            gt_boxes = gt_boxes.masked_fill(~valid[..., None], 0)
        extra = min_boxes - gt_boxes.shape[1]
        if extra > 0:
            gt_boxes = torch.cat([gt_boxes, gt_boxes.new_zeros(gt_boxes.shape[0], extra, 4)], dim=1)
            valid = torch.cat([valid, valid.new_zeros(valid.shape[0], extra)], dim=1)
        return gt_boxes, valid
    if len(gt_boxes) == 0:
        return torch.zeros(0, min_boxes, 4), torch.zeros(0, min_boxes, dtype=torch.bool)
    counts = [b.shape[0] for b in gt_boxes]
    ref = gt_boxes[0]
    dtype = ref.dtype if ref.is_floating_point() else torch.promote_types(ref.dtype, torch.float32)
    size = max(*counts, min_boxes)
    padded = ref.new_zeros((len(gt_boxes), size, 4), dtype=dtype)
    mask = torch.zeros((len(gt_boxes), size), dtype=torch.bool, device=ref.device)
    for i, (boxes, count) in enumerate(zip(gt_boxes, counts)):  # one loop over images, not boxes
        padded[i, :count] = boxes.to(dtype)
        mask[i, :count] = True
    return padded, mask


def pad_box_values(
    values: Sequence[Tensor] | Tensor,
    valid: Tensor,
    *,
    name: str,
    num_classes: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Per-box values (class labels, scores) laid out like the boxes :func:`pad_boxes` returned.

    Args:
        values: ``N`` tensors ``(M_i,)``, one value per box of image ``i`` (the image's real boxes
            come first, as :func:`pad_boxes` lays out a list), or a padded ``(N, M')`` tensor with
            ``M' >= M`` (columns past ``M`` are dropped; padding entries are not read).
        valid: the ``(N, M)`` mask of real boxes that :func:`pad_boxes` returned.
        name: the argument's name in error messages.
        num_classes: given, the values are class labels: integers in ``[0, num_classes)`` (real
            boxes only), returned as int64.
        dtype: the dtype of other values (default: their own).

    Returns:
        ``(N, M)`` values on ``valid``'s device, zero in padding slots.

    Example:
        >>> import torch
        >>> boxes, valid = pad_boxes([torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)])
        >>> pad_box_values([torch.tensor([3]), torch.zeros(0, dtype=torch.long)], valid, name="labels", num_classes=5)
        tensor([[3],
                [0]])
    """
    n, m = valid.shape
    what = "value" if num_classes is None else "label"
    if num_classes is not None:
        dtype = torch.long
    if isinstance(values, Tensor):
        check_shape(values, name, "N M", floating=num_classes is None)
        if not _tracing() and (values.shape[0] != n or values.shape[1] < m):
            raise ValueError(f"{name} must hold one {what} per box: shape {tuple(values.shape)} for boxes padded to "
                             f"({n}, {m})")
        padded = values[:, :m].to(device=valid.device, dtype=dtype or values.dtype).masked_fill(~valid, 0)
        if num_classes is not None:
            check_labels(padded[valid], num_classes, name)
        return padded
    if not _tracing():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} images but the boxes have {n}: pass one {what} per box, "
                             "one (M_i,) tensor per image")
        counts = valid.sum(dim=1).tolist()
        for i, (value, count) in enumerate(zip(values, counts)):
            if not isinstance(value, Tensor) or tuple(value.shape) != (count,):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name}[{i}] must hold one {what} per box: shape {shape} for {count} boxes")
            if num_classes is None:
                check_shape(value, f"{name}[{i}]", "M")
            else:
                check_labels(value, num_classes, f"{name}[{i}]")
            if not bool(valid[i, :count].all()):
                raise ValueError(f"the real boxes of image {i} are not its first rows: pass {name} as an (N, M) tensor "
                                 "laid out like the boxes")
    dtype = dtype or (values[0].dtype if len(values) else torch.float32)
    padded = torch.zeros((n, m), dtype=dtype, device=valid.device)
    for i, value in enumerate(values):  # one loop over images
        padded[i, : value.shape[0]] = value.to(device=valid.device, dtype=dtype)
    return padded


def image_hw(image_size: ImageSize, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image height and width of ``image_size`` (``(H, W)`` or ``(N, 2)``) as ``(N, 1)`` tensors like ``like``."""
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
    img_h, img_w = image_hw(image_size, boxes.shape[0], boxes)
    height, width = feature_size
    # Divide first, then multiply (x / img_w * W): the order of FGD's official code, exact when an edge
    # falls on a cell boundary, where x * (W / img_w) can round up by one ulp and ceil adds a cell.
    image = torch.stack([img_w, img_h, img_w, img_h], dim=-1)  # (N, 1, 4)
    return boxes / image * boxes.new_tensor([width, height, width, height])


def box_cell_bounds(boxes: Tensor, image_size: ImageSize, feature_size: Sequence[int]) -> Tensor:
    """Inclusive cell ranges ``(x0, y0, x1, y1)`` of each box: floor of the near edge, ceil of the far edge.

    Cells ``x0..x1`` and ``y0..y1`` are covered, so a box inside the map covers at least one cell
    and an edge on a cell boundary reaches one cell further: the rounding of FGD's official code.
    Unlike that code, ranges are clipped to the map, so a box reaching past the border covers
    only its visible cells, and a box outside the map gets an empty range (``x0 > x1`` or
    ``y0 > y1``). :mod:`kdimpl.losses.fgd` keeps FGD's exact semantics.
    """
    scaled = scale_boxes_to_feature(boxes, image_size, feature_size)
    height, width = feature_size
    x0, y0 = scaled[..., 0].floor(), scaled[..., 1].floor()
    x1, y1 = scaled[..., 2].ceil(), scaled[..., 3].ceil()
    # Near edges clip to [0, size] and far edges to [-1, size - 1], so invisible boxes stay empty.
    return torch.stack(
        [x0.clamp(0, width), y0.clamp(0, height), x1.clamp(-1, width - 1), y1.clamp(-1, height - 1)], dim=-1
    )


def box_rows_cols(bounds: Tensor, valid: Tensor, feature_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Float 0/1 indicators of the rows ``(N, M, H, 1)`` and columns ``(N, M, 1, W)`` each box covers.

    Row ``y`` is inside box ``m`` when ``y0 <= y <= y1`` (columns likewise) for inclusive cell bounds
    ``(N, M, 4)``; bounds past the map are clipped by the comparison (a negative start covers from
    cell 0) and invalid boxes have no rows. Cell ``(y, x)`` is inside box ``m`` when
    ``rows[n, m, y] * cols[n, m, x]`` is 1: a rectangle is the product of its rows and columns.
    """
    height, width = feature_size
    ys = torch.arange(height, device=bounds.device, dtype=bounds.dtype).view(height, 1)
    xs = torch.arange(width, device=bounds.device, dtype=bounds.dtype).view(1, width)
    x0, y0, x1, y1 = (bounds[..., k, None, None] for k in range(4))
    rows = (ys >= y0) & (ys <= y1) & valid[..., None, None]
    cols = (xs >= x0) & (xs <= x1)
    dtype = bounds.dtype if bounds.is_floating_point() else torch.float32
    return rows.to(dtype), cols.to(dtype)


def rasterize_boxes(bounds: Tensor, valid: Tensor, feature_size: Sequence[int]) -> Tensor:
    """Per-box bool masks ``(N, M, H, W)`` from inclusive cell bounds ``(N, M, 4)``; invalid boxes are empty."""
    rows, cols = box_rows_cols(bounds, valid, feature_size)
    return (rows * cols).bool()


def cover_counts(bounds: Tensor, valid: Tensor, feature_size: Sequence[int]) -> Tensor:
    """``(N, H, W)`` number of valid boxes covering each cell, from inclusive cell bounds ``(N, M, 4)``.

    Equals ``rasterize_boxes(bounds, valid, feature_size).sum(1)``, in the bounds' floating dtype.
    """
    rows, cols = box_rows_cols(bounds, valid, feature_size)
    return (rows * cols).sum(dim=1)


def max_cover(bounds: Tensor, valid: Tensor, weight: Tensor, feature_size: Sequence[int]) -> Tensor:
    """Per cell, the largest ``weight`` ``(N, M)`` of the valid boxes covering it (0 where none), as ``(N, H, W)``.

    Equals ``(rasterize_boxes(...) * weight[..., None, None]).amax(1)``; weights are expected to
    be non-negative (a cell no box covers holds 0).
    """
    if weight.shape[-1] == 0:  # amax over an empty axis is an error; no box covers anything
        return weight.new_zeros((weight.shape[0], *feature_size))
    rows, cols = box_rows_cols(bounds, valid, feature_size)
    return (rows * weight[..., None, None] * cols).amax(dim=1)


def foreground_mask(
    gt_boxes: Sequence[Tensor] | Tensor, image_size: ImageSize, feature_size: Sequence[int], gt_mask: Tensor | None = None
) -> Tensor:
    """Binary ``(N, H, W)`` mask of the cells covered by any box (:func:`box_cell_bounds` covering)."""
    boxes, valid = pad_boxes(gt_boxes, gt_mask)
    counts = cover_counts(box_cell_bounds(boxes, image_size, feature_size), valid, feature_size)
    return counts.clamp(max=1)


def inverse_area_mask(
    gt_boxes: Sequence[Tensor] | Tensor, image_size: ImageSize, feature_size: Sequence[int], gt_mask: Tensor | None = None
) -> Tensor:
    """``(N, H, W)`` mask holding, per cell, the largest ``1 / area`` of the boxes covering it (0 elsewhere).

    Areas are counted in visible cells of the :func:`box_cell_bounds` covering, so small boxes
    get large weights (FGD, Eq. 4).
    """
    boxes, valid = pad_boxes(gt_boxes, gt_mask)
    bounds = box_cell_bounds(boxes, image_size, feature_size)
    area = (bounds[..., 2] - bounds[..., 0] + 1).clamp(min=1) * (bounds[..., 3] - bounds[..., 1] + 1).clamp(min=1)
    return max_cover(bounds, valid, area.reciprocal(), feature_size)  # empty boxes cover no cell
