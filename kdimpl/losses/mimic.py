r"""Mimic, Li, Jin and Yan, CVPR 2017: feature mimicking restricted to region proposals.

No official code exists. Verification level: unverified. No primary copy of the paper's text could
be read here (CVF open access is not reachable; stored pages hold only its title or summaries). The
loss was cross-checked against a third-party LaTeX transcription of Sec. 3 (a Chinese KD-paper
survey note on GitHub), which agrees with the docstring below: total loss
:math:`\lambda_1 L_m + L_{gt}`, first an SPP-pooled :math:`\frac{1}{2N}\sum_i\lVert u^{(i)} - r(v^{(i)})\rVert_2^2`,
then the size-normalised form without SPP that divides each proposal's term by :math:`m_i`.
What :math:`m_i` counts (cells only, or cells x channels) is not settled by the secondary sources.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._base import LossModule
from .._checks import check_boxes, check_feature_pair, check_image_size, check_options
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..masks import pad_boxes, scale_boxes_to_feature

__all__ = ["mimic_region_bounds"]


def mimic_region_bounds(boxes: Tensor, image_size, feature_size: Sequence[int]) -> Tensor:
    """Inclusive cell bounds ``(x0, y0, x1, y1)`` of the cells a box overlaps with positive area.

    Box corners are mapped to continuous feature coordinates (``W / image_width``,
    ``H / image_height``); the region runs from the cell holding the near edge to the cell holding
    the far edge (an edge on a cell boundary does not reach into the next cell), is at least one
    cell, and is clipped to the map.
    """
    height, width = feature_size
    scaled = scale_boxes_to_feature(boxes, image_size, feature_size)
    x0, y0 = scaled[..., 0].floor(), scaled[..., 1].floor()
    x1 = torch.maximum(scaled[..., 2].ceil() - 1, x0)
    y1 = torch.maximum(scaled[..., 3].ceil() - 1, y0)
    return torch.stack(
        [x0.clamp(0, width - 1), y0.clamp(0, height - 1), x1.clamp(0, width - 1), y1.clamp(0, height - 1)], dim=-1
    )


def mimic_loss(
    student: Tensor,
    teacher: Tensor,
    proposals: Sequence[Tensor] | Tensor,
    *,
    image_size: Sequence[int] | Tensor,
    reduction: str = "mean",
) -> Tensor:
    r"""Feature mimic loss over region proposals (Li et al., CVPR 2017, Sec. 3).

    .. math::
        L_m(W) = \frac{1}{2N} \sum_{i=1}^{N} \frac{1}{m_i} \big\lVert u^{(i)} - r\big(v^{(i)}\big) \big\rVert_2^2

    where :math:`u^{(i)}` and :math:`v^{(i)}` are the teacher's and student's features inside the
    :math:`i`-th of :math:`N` proposals, :math:`r` the transform layer mapping the student to the
    teacher's channels, and :math:`m_i` the number of elements (cells x channels) of region
    :math:`i`, so every proposal weighs the same whatever its size.

    Args:
        student: transformed student features :math:`r(v)` (apply e.g. :class:`kdimpl.ChannelAdapter`).
        teacher: teacher features of the same shape (detached inside).
        proposals: one ``(P_i, 4)`` tensor per image of ``x1, y1, x2, y2`` boxes in pixels of the
            input tensor (the RPN's proposals), or a padded ``(N, P, 4)`` tensor.
        image_size: ``(height, width)`` of the input tensor, or an ``(N, 2)`` tensor; the feature
            map covers it, so the same proposals serve every FPN level.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum of the
            per-proposal terms divided by the number of proposals in the batch (at least 1), i.e.
            :math:`L_m` above; ``'sum'`` sums the terms
            :math:`\frac{1}{2 m_i}\lVert\cdot\rVert^2`; ``'none'`` returns them as an
            ``(N, P)`` tensor, 0 for padding, so its ``.mean()`` equals ``'mean'`` only when every
            image has ``P`` proposals.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, P)` with ``reduction='none'``, ``P = max_i P_i``

    Reference:
        Quanquan Li, Sheng Jin, Junjie Yan. "Mimicking Very Efficient Network for Object
        Detection". CVPR 2017, pp. 7341-7349 (no arXiv version). No official code.

    Notes:
        Regions are cropped on the feature grid, not RoI-pooled: proposal :math:`i` covers the
        cells it overlaps (:func:`mimic_region_bounds`), which keeps the paper's variable
        :math:`m_i`. The crop is a per-proposal box mask over the map (no torchvision, no loop
        over proposals), evaluated as two matmuls since a box is a row band times a column band.
        Proposals come from the student's RPN in the paper. :math:`m_i` is taken as cells x channels
        (the element count of the cropped region); a secondary note leaves open whether the paper
        divides by cells only, which would scale every term by :math:`C` (absorbed by ``loss_weight``).

        Under ``DistributedDataParallel`` each process divides by its own number of proposals; inside
        :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8)
        >>> mimic_loss(s, t, [torch.tensor([[0.0, 0.0, 32.0, 24.0]])], image_size=(48, 64)).shape
        torch.Size([])
    """
    check_feature_pair(student, teacher)
    check_options(reduction=reduction)
    check_boxes(proposals, student.shape[0], "proposals")
    check_image_size(image_size, student.shape[0], student)
    boxes, valid = pad_boxes(proposals)
    s = upcast(student)
    t = upcast(teacher.detach())
    feature_size = tuple(s.shape[2:])
    boxes = boxes.to(device=s.device, dtype=torch.promote_types(boxes.dtype, torch.float32))
    bounds = mimic_region_bounds(boxes, image_size, feature_size)
    sq_err = (s - t).pow(2).sum(dim=1)  # (N, H, W)
    # A region is the outer product of a row and a column indicator, so its error sum is
    # rows^T (E cols^T): two small matmuls, no (N, P, H, W) mask.
    height, width = feature_size
    ys = torch.arange(height, device=s.device, dtype=bounds.dtype)
    xs = torch.arange(width, device=s.device, dtype=bounds.dtype)
    rows = ((ys >= bounds[..., 1, None]) & (ys <= bounds[..., 3, None])).to(s.dtype)  # (N, P, H)
    cols = ((xs >= bounds[..., 0, None]) & (xs <= bounds[..., 2, None])).to(s.dtype)  # (N, P, W)
    per_row = torch.bmm(sq_err, cols.transpose(1, 2))  # (N, H, P)
    region_err = (rows * per_row.transpose(1, 2)).sum(dim=2) * valid.to(s.dtype)
    cells = (bounds[..., 2] - bounds[..., 0] + 1) * (bounds[..., 3] - bounds[..., 1] + 1)
    per_proposal = region_err / (2 * s.shape[1] * cells.to(s.dtype))
    return reduce_loss(per_proposal, reduction, avg_factor=valid.sum().clamp(min=1)).to(student.dtype)


@register_loss("mimic", function=mimic_loss, distributed="count")
class MimicLoss(LossModule):
    """Module twin of :func:`mimic_loss`; ``loss_weight`` is the paper's :math:`\\lambda_1`."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
