"""D-FINE's Global Optimal Localization Self-Distillation (GO-LSD), Peng et al., ICLR 2025.

D-FINE's decoder predicts each box edge as a distribution over ``R = reg_max + 1`` bins of a
non-uniform grid :math:`W(n)` (:func:`dfine_weighting_function`) and refines it layer by layer.
GO-LSD distils the last layer's refined edge distributions into every earlier layer with the
Decoupled Distillation Focal (DDF) loss, :func:`dfine_ddf_loss`; all layers are also trained on the
ground truth with the Fine-Grained Localization (FGL) loss, :func:`dfine_fgl_loss`. Both use the
union of the Hungarian matches of all layers (:func:`dfine_go_matches`), as a ``(N, Q)`` tensor of
matched GT indices (``-1``: unmatched). The decoder layers play the role of the levels::

    matched_gt = dfine_go_matches(indices_of_every_layer, gt_boxes, num_queries)  # the user's matcher
    ddf = multilevel_loss(DFineDDFLoss(loss_weight=1.5), layer_corners[:-1],
                          [layer_corners[-1]] * (num_layers - 1), layer_boxes[:-1],
                          teacher_logits=layer_logits[-1], matched_gt=matched_gt, gt_boxes=gt_boxes)
    fgl = sum(0.15 * dfine_fgl_loss(c, ref_boxes, b, matched_gt, gt_boxes) for c, b in zip(layer_corners, layer_boxes))
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_shapes, value_checks_enabled
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..distributed import reduce_normaliser
from ..masks import pad_boxes
from ..ops import aligned_box_iou

__all__ = ["dfine_fgl_loss", "dfine_go_matches", "dfine_weighting_function"]


def dfine_weighting_function(
    reg_max: int, up: float = 0.5, reg_scale: float = 4.0, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    r"""D-FINE's non-uniform bin positions :math:`W(n)`, ``n = 0..reg_max``, as the official ``weighting_function``.

    With :math:`a = |up| \cdot |c|` (``c`` = ``reg_scale``) and :math:`s = (a + 1)^{2 / (N - 2)}`, ``N`` = ``reg_max``:

    .. math::
        W(0) = -2a, \quad W(N) = 2a, \quad
        W(n) = -s^{N/2 - n} + 1 \ (0 < n < N/2), \quad W(N/2) = 0, \quad W(n) = s^{n - N/2} - 1 \ (N/2 < n < N)

    Example:
        >>> dfine_weighting_function(4, 0.5, 4.0)
        tensor([-4.,  -2.,  0.,  2.,  4.])
    """
    if reg_max < 4 or reg_max % 2:
        raise ValueError(f"reg_max must be an even integer >= 4, got {reg_max}")
    bound = abs(up) * abs(reg_scale)
    step = torch.tensor(bound + 1, dtype=dtype) ** (2 / (reg_max - 2))
    half = reg_max // 2
    powers = torch.stack([step**i for i in range(1, half)]).to(device)
    ends = powers.new_tensor([2 * bound])
    return torch.cat([-ends, 1 - powers.flip(0), powers.new_zeros(1), powers - 1, ends])


@functools.lru_cache(maxsize=16)
def _grid(reg_max: int, up: float, reg_scale: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`dfine_weighting_function`, built once per setting (the losses call it every step)."""
    return dfine_weighting_function(reg_max, up, reg_scale, dtype=dtype, device=device)


@torch.no_grad()
def dfine_go_matches(
    layer_indices: Sequence[Sequence[tuple[Tensor, Tensor]]], gt_boxes: Sequence[Tensor] | Tensor, num_queries: int
) -> Tensor:
    """The global optimal matching: the union of every layer's Hungarian matches, as an ``(N, Q)`` tensor.

    Each query is matched to the GT box it was matched to most often across the layers (ties go
    to the smaller GT index); a query that no layer matched gets ``-1``. With the matches of one
    layer, this is that layer's matching in tensor form.

    Args:
        layer_indices: per layer (D-FINE: the final layer, the auxiliary layers, the pre-decoder
            head and the encoder heads), per image, the ``(query_indices, gt_indices)`` pair that a
            DETR matcher returns (e.g. from ``scipy.optimize.linear_sum_assignment``).
        gt_boxes: the ``N`` images' GT boxes ``(M_i, 4)`` (only their number is used).
        num_queries: ``Q``.

    Returns:
        ``(N, Q)`` int64 tensor of matched GT indices, ``-1`` for unmatched queries.

    Example:
        >>> import torch
        >>> boxes = [torch.tensor([[0.0, 0, 4, 4], [2, 2, 6, 6]])]
        >>> per_layer = [[(torch.tensor([0, 2]), torch.tensor([1, 0]))], [(torch.tensor([0, 3]), torch.tensor([1, 0]))]]
        >>> dfine_go_matches(per_layer, boxes, 4)
        tensor([[ 1, -1,  0,  0]])
    """
    padded, valid = pad_boxes(gt_boxes)
    rows = []
    for image, num_gt in enumerate(valid.sum(dim=1).tolist()):  # one loop over images
        counts = torch.zeros(num_queries, num_gt + 1, dtype=torch.int64)
        for layer in layer_indices:
            queries, gts = (torch.as_tensor(x, dtype=torch.int64).cpu() for x in layer[image])
            counts.index_put_((queries, gts + 1), torch.ones_like(queries), accumulate=True)
        best = counts[:, 1:].argmax(dim=1) if num_gt else torch.zeros(num_queries, dtype=torch.int64)
        matched = counts[:, 1:].amax(dim=1) > 0 if num_gt else torch.zeros(num_queries, dtype=torch.bool)
        rows.append(torch.where(matched, best, -1))
    out = torch.stack(rows) if rows else torch.zeros(0, num_queries, dtype=torch.int64)
    return out.to(padded.device)


def _matched_boxes(
    matched_gt: Tensor, gt_boxes: Sequence[Tensor] | Tensor, like: Tensor
) -> tuple[Tensor, Tensor]:
    """The ``(N, Q, 4)`` GT box of every query (zeros where unmatched) and the ``(N, Q)`` matched mask."""
    boxes, valid = pad_boxes(gt_boxes, batch_size=like.shape[0])
    boxes = boxes.to(device=like.device, dtype=like.dtype)
    if value_checks_enabled() and matched_gt.numel():
        counts = valid.sum(dim=1, keepdim=True).to(matched_gt.device)
        if bool(((matched_gt < -1) | (matched_gt >= counts)).any()):
            raise ValueError("matched_gt must hold -1 (unmatched) or an index into that image's gt_boxes")
    matched = matched_gt >= 0
    if boxes.shape[1] == 0:
        return like.new_zeros(*matched_gt.shape, 4), matched
    index = matched_gt.clamp(min=0)[..., None].expand(*matched_gt.shape, 4)
    return boxes.gather(1, index) * matched[..., None], matched


def _matched_iou(student_boxes: Tensor, matched_gt: Tensor, gt_boxes: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    """Detached ``(N, Q)`` IoU of each query's box with its matched GT box (0 where unmatched), and the mask."""
    boxes = upcast(student_boxes.detach())
    targets, matched = _matched_boxes(matched_gt, gt_boxes, boxes)
    iou = aligned_box_iou(boxes, targets, eps=torch.finfo(boxes.dtype).tiny)
    return torch.where(matched, iou, torch.zeros_like(iou)), matched


def _check_queries(student: Tensor, teacher: Tensor | None, student_boxes: Tensor, matched_gt: Tensor, **more) -> None:
    shapes = {"student": (student, "N Q C"), "student_boxes": (student_boxes, "N Q 4"), "matched_gt": (matched_gt, "N Q int")}
    if teacher is not None:
        shapes["teacher"] = (teacher, "N Q C")
    check_shapes(**shapes, **more)
    if student.shape[-1] % 4:
        raise ValueError(f"student must have 4 * (reg_max + 1) channels (four edge distributions), got {student.shape[-1]}")


def dfine_ddf_loss(
    student: Tensor,
    teacher: Tensor,
    student_boxes: Tensor,
    teacher_logits: Tensor,
    matched_gt: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    *,
    temperature: float = 5.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Decoupled Distillation Focal loss: the last decoder layer's edge distributions taught to an earlier layer.

    For query :math:`q` and edge :math:`e`, with :math:`\mathbf{p}` the last layer's and
    :math:`\mathbf{q}` this layer's distributions (as the official code computes it):

    .. math::
        \ell_{q,e} = \alpha_q \, T^2 \,
            \mathrm{KL}\big(\operatorname{softmax}(\mathbf{p}_{q,e} / T) \,\|\, \operatorname{softmax}(\mathbf{q}_{q,e} / T)\big),
        \qquad
        \mathcal{L}_{DDF} = \frac{\sqrt{K_m}\,\overline{\ell}_{m} + \sqrt{K_u}\,\overline{\ell}_{u}}{\sqrt{K_m} + \sqrt{K_u}}

    where :math:`\alpha_q` is the IoU of this layer's box with the matched GT box for a matched
    query and the last layer's highest class score :math:`\max_c \sigma(z_{q,c})` for an unmatched
    one; :math:`\overline{\ell}_m`, :math:`\overline{\ell}_u` are the means of :math:`\ell_{q,e}`
    over the :math:`K_m` matched and :math:`K_u` unmatched query edges.

    Args:
        student: this layer's edge-distribution logits, the four edges' ``R`` bins in order
            along the last dimension (channel ``e * R + b``, D-FINE's ``pred_corners``).
        teacher: the last layer's edge-distribution logits, same shape (detached inside).
        student_boxes: this layer's boxes ``x1, y1, x2, y2`` (detached; IoU weights), in the unit of
            ``gt_boxes`` (pixels of the input; the IoU does not depend on the unit).
        teacher_logits: the last layer's class logits (detached; their max sigmoid weights the
            unmatched queries).
        matched_gt: ``(N, Q)`` integer index of each query's matched GT box, ``-1`` if unmatched
            (the union over layers in D-FINE: :func:`dfine_go_matches`).
        gt_boxes: the ``N`` images' GT boxes ``(M_i, 4)`` xyxy, or a padded ``(N, M, 4)`` tensor.
        temperature: :math:`T` (official 5).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the matched and
            unmatched means of the per-edge terms, combined with weights :math:`\sqrt{K_m}` and
            :math:`\sqrt{K_u}` as above; use ``reduction='none'`` and ``.mean()`` for the plain
            element mean. ``'sum'`` sums; ``'none'`` returns the ``(N, Q, 4)`` terms :math:`\ell_{q,e}`.

    Shape:
        - student, teacher: :math:`(N, Q, 4R)`
        - student_boxes: :math:`(N, Q, 4)`; teacher_logits: :math:`(N, Q, K)`; matched_gt: :math:`(N, Q)`
        - output: scalar, or :math:`(N, Q, 4)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Yansong Peng, Hebei Li, Peixi Wu, Yueyi Zhang, Xiaoyan Sun, Feng Wu. "D-FINE: Redefine
        Regression Task of DETRs as Fine-grained Distribution Refinement". ICLR 2025. arXiv:2410.13842.
        Official code: Peterande/D-FINE@4a1f73a ``DFINECriterion.loss_local`` (``loss_ddf``, weight
        1.5); matched to float32 rounding by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(1, 3, 4 * 9), torch.randn(1, 3, 4 * 9)
        >>> boxes = torch.tensor([[[10.0, 10, 50, 40], [20, 5, 60, 30], [0, 0, 8, 8]]])
        >>> gt = [torch.tensor([[12.0, 10, 50, 42]])]
        >>> matched = torch.tensor([[0, -1, -1]])  # query 0 matched to GT box 0
        >>> dfine_ddf_loss(s, t, boxes, torch.randn(1, 3, 80), matched, gt).shape
        torch.Size([])
        >>> float(dfine_ddf_loss(t, t, boxes, torch.randn(1, 3, 80), matched, gt))
        0.0

    Notes:
        The counts are those of the local batch, as in the official code (inside
        :func:`kdimpl.distributed.global_normalisers` their means over the processes). The official
        code scales both counts by ``8 / N`` before the square roots; the factor cancels. For the denoising queries it reuses the counts of the regular queries of the
        same call; pass the regular queries' terms through ``reduction='none'`` to reproduce that.
        The official criterion replaces a NaN loss by 0; here NaN propagates.
    """
    check_options(temperature=temperature, reduction=reduction)
    _check_queries(student, teacher, student_boxes, matched_gt, teacher_logits=(teacher_logits, "N Q K"))
    n, q, c = student.shape
    s = upcast(student).reshape(n, q, 4, c // 4)
    t = upcast(teacher.detach()).reshape(n, q, 4, c // 4)
    log_p = torch.log_softmax(t / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - torch.log_softmax(s / temperature, dim=-1))).sum(dim=-1) * temperature**2
    iou, matched = _matched_iou(student_boxes, matched_gt, gt_boxes)
    score = upcast(teacher_logits.detach()).sigmoid().amax(dim=-1)
    weight = torch.where(matched, iou.to(kl.dtype), score.to(kl.dtype))
    terms = weight[..., None] * kl
    if reduction != "mean":
        return reduce_loss(terms, reduction).to(student.dtype)
    edges = matched[..., None].expand_as(terms)
    num_matched = reduce_normaliser(edges.sum().to(terms.dtype))
    num_unmatched = reduce_normaliser((~edges).sum().to(terms.dtype))
    mean_matched = (terms * edges).sum() / num_matched.clamp(min=1)
    mean_unmatched = (terms * ~edges).sum() / num_unmatched.clamp(min=1)
    root_m, root_u = num_matched.sqrt(), num_unmatched.sqrt()
    loss = (root_m * mean_matched + root_u * mean_unmatched) / (root_m + root_u).clamp(min=1)
    return loss.to(student.dtype)


def _edge_distances(ref_boxes: Tensor, targets: Tensor, reg_scale: float) -> Tensor:
    """``(N, Q, 4)`` left/top/right/bottom offsets of the targets from the reference boxes, in D-FINE's units."""
    c = abs(reg_scale)
    centre = (ref_boxes[..., :2] + ref_boxes[..., 2:]) / 2
    size = (ref_boxes[..., 2:] - ref_boxes[..., :2]).repeat(1, 1, 2) / c + 1e-16
    offsets = torch.cat([centre - targets[..., :2], targets[..., 2:] - centre], dim=-1)
    return offsets / size - 0.5 * c


def dfine_fgl_loss(
    student: Tensor,
    ref_boxes: Tensor,
    student_boxes: Tensor,
    matched_gt: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    *,
    up: float = 0.5,
    reg_scale: float = 4.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Fine-Grained Localization loss of one decoder layer: the ground-truth loss GO-LSD builds on.

    Each matched query's edge offset :math:`d` from its reference box (in units of the reference
    box's size over ``reg_scale``, minus ``reg_scale / 2``) falls between two bins of
    :math:`W` (:func:`dfine_weighting_function`), :math:`W(n) \le d < W(n + 1)`; the edge
    distribution is trained on both, with linear-interpolation weights:

    .. math::
        \ell_{q,e} = \mathrm{IoU}_q \big( \omega_\leftarrow \mathrm{CE}(\mathbf{q}_{q,e}, n)
            + \omega_\rightarrow \mathrm{CE}(\mathbf{q}_{q,e}, n + 1) \big), \quad
        \omega_\rightarrow = \frac{d - W(n)}{W(n + 1) - W(n)}, \ \omega_\leftarrow = 1 - \omega_\rightarrow,
        \qquad \mathcal{L}_{FGL} = \frac{1}{|\mathcal{M}|} \sum_{q \in \mathcal{M}} \sum_e \ell_{q,e}

    (an offset below :math:`W(0)` trains bin 0 alone, one at or above :math:`W(N)` bin ``N`` alone).

    Args:
        student: this layer's edge-distribution logits ``(N, Q, 4R)`` (``e * R + b`` layout).
        ref_boxes: the reference boxes the offsets are measured from, xyxy (D-FINE: the boxes of
            the pre-decoder head, shared by all layers), in the unit of ``gt_boxes``.
        student_boxes: this layer's boxes, xyxy (detached; the IoU weights).
        matched_gt: ``(N, Q)`` matched GT index per query, ``-1`` if unmatched.
        gt_boxes: the ``N`` images' GT boxes ``(M_i, 4)`` xyxy or a padded ``(N, M, 4)`` tensor.
        up: the grid's bound parameter (official 0.5).
        reg_scale: :math:`c`, the grid's curvature (official 4; 8 for the X model).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum divided by
            the number of matched queries in the batch (at least 1); ``'sum'`` sums; ``'none'``
            returns the ``(N, Q, 4)`` terms (0 for unmatched queries).

    Returns:
        The loss, in the dtype of ``student``.

    Example:
        >>> import torch
        >>> ref = torch.tensor([[[10.0, 10, 50, 40], [0, 0, 20, 20]]])
        >>> matched = torch.tensor([[0, -1]])
        >>> gt = [torch.tensor([[12.0, 9, 52, 44]])]
        >>> dfine_fgl_loss(torch.randn(1, 2, 4 * 33), ref, ref, matched, gt).shape
        torch.Size([])

    Notes:
        Official code: Peterande/D-FINE@4a1f73a ``DFINECriterion.unimodal_distribution_focal_loss``
        with ``bbox2distance``; matched by the parity tests. The official normaliser is averaged
        over GPUs, as :func:`kdimpl.distributed.global_normalisers` does.
    """
    check_options(reduction=reduction)
    _check_queries(student, None, student_boxes, matched_gt, ref_boxes=(ref_boxes, "N Q 4"))
    n, q, c = student.shape
    bins = c // 4
    ref = upcast(ref_boxes.detach())
    targets, matched = _matched_boxes(matched_gt, gt_boxes, ref)
    rows = matched.nonzero(as_tuple=True)  # the sum runs over the matched queries only
    boxes = upcast(student_boxes.detach())[rows]
    iou = aligned_box_iou(boxes, targets[rows].to(boxes.dtype), eps=torch.finfo(boxes.dtype).tiny)
    logits = upcast(student)[rows].reshape(-1, 4, bins)
    with torch.no_grad():
        distance = _edge_distances(ref[rows][None], targets[rows][None], reg_scale)[0]  # (P, 4)
        grid = _grid(bins - 1, float(up), float(reg_scale), distance.dtype, distance.device)
        index = (grid <= distance[..., None]).sum(dim=-1) - 1
        inside = (index >= 0) & (index < bins - 1)
        left = index.clamp(0, bins - 2)
        w_right = ((distance - grid[left]).abs() / ((distance - grid[left]).abs() + (grid[left + 1] - distance).abs()))
        w_right = torch.where(inside, w_right, (index >= bins - 1).to(distance.dtype))
    log_q = torch.log_softmax(logits, dim=-1)
    ce_left = -log_q.gather(-1, left[..., None])[..., 0]
    ce_right = -log_q.gather(-1, left[..., None] + 1)[..., 0]
    terms = ((1 - w_right) * ce_left + w_right * ce_right) * iou[:, None].to(logits.dtype)
    guard = upcast(student.detach()).sum() * 0  # NaN anywhere in the student gives NaN, as a dense sum would
    if reduction == "none":
        dense = terms.new_zeros(n, q, 4).index_put(rows, terms)
        return (dense + guard).to(student.dtype)
    total = terms.sum() + guard
    if reduction == "mean":
        total = total / reduce_normaliser(matched.sum().to(terms.dtype)).clamp(min=1)
    return total.to(student.dtype)


@register_loss("dfine_ddf", function=dfine_ddf_loss, distributed="count")
class DFineDDFLoss(LossModule):
    """Module twin of :func:`dfine_ddf_loss`; ``loss_weight`` multiplies the result (official 1.5)."""

    def __init__(self, *, temperature: float = 5.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)
