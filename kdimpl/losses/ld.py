"""Localization distillation (LD), Zheng et al., CVPR 2022 (journal version: TPAMI 2023).

A GFL-style head predicts each box edge (left, top, right, bottom) as a distribution over
``R = reg_max + 1`` bins; LD distils the teacher's edge distributions into the student's with a
temperature-softened KL divergence, in two regions of every FPN level:

- the *main distillation region*: the positive locations of the label assignment (ATSS in the
  official configs), weighted by the student's highest class score: :func:`ld_loss`;
- the *valuable localisation region* (VLR): locations whose anchor overlaps a GT box a little
  less than the positives do, weighted by that IoU: :func:`ld_valuable_regions` builds the
  weight maps, :func:`ld_vlr_loss` distils there;

and the official head adds a classification KD on the positives, :func:`ld_cls_loss`. Each loss
takes one level's head outputs, so :func:`kdimpl.multilevel_loss` applies it over the levels
with the per-level maps as positional sequences::

    anchors = ld_grid_anchors(feature_sizes, image_size)
    vlr_maps = ld_valuable_regions(anchors, gt_boxes)
    main_maps = [pos * s.detach().sigmoid().amax(dim=1) for pos, s in zip(pos_masks, student_cls)]
    loss = (multilevel_loss(LDLoss(loss_weight=0.25), student_box, teacher_box, main_maps)
            + multilevel_loss(LDVLRLoss(loss_weight=0.25), student_box, teacher_box, vlr_maps)
            + multilevel_loss(LDClsLoss(loss_weight=10.0), student_cls, teacher_cls, pos_masks))
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor

from .._base import LossModule
from .._checks import (
    _tracing,
    check_boxes,
    check_feature_pair,
    check_image_size,
    check_options,
    check_shape,
    check_shapes,
)
from .._dtypes import compute_dtype, upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["ld_grid_anchors", "ld_valuable_regions"]

# The official head divides the weighted sums by these fixed factors (not by a count of positives).
_MAIN_AVG_FACTOR = 4.0
_VLR_AVG_FACTOR = 16.0


def _level_map(x: Tensor, name: str, features: Tensor) -> Tensor:
    """An ``(N, H, W)`` weight map matching ``features``, detached, in their compute dtype."""
    check_shapes(**{"head output": (features, "N C H W"), name: (x, "N H W any")})
    return x.detach().to(compute_dtype(features))


def _soft_kl(s: Tensor, t: Tensor, dim: int, temperature: float) -> Tensor:
    """``temperature**2 * KL(softmax(t / T) || softmax(s / T))`` along ``dim``, divided by that dimension's size."""
    log_p_t = torch.log_softmax(t / temperature, dim=dim)
    kl = (log_p_t.exp() * (log_p_t - torch.log_softmax(s / temperature, dim=dim))).sum(dim=dim)
    return kl * (temperature**2 / s.shape[dim])


def _box_inputs(student: Tensor, teacher: Tensor, region_map: Tensor, name: str) -> Tensor:
    """Check one level's box-distribution logits and region map; return the map as weights."""
    check_feature_pair(student, teacher)
    if not _tracing() and student.shape[1] % 4:
        raise ValueError(
            f"student must have 4 * (reg_max + 1) channels (four edge distributions), got {student.shape[1]}"
        )
    return _level_map(region_map, name, student)


def _edge_kl(student: Tensor, teacher: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """``(N, 4, H, W)`` region-weighted KL of the four edge distributions at every location."""
    n, c, h, w = student.shape
    s = upcast(student).reshape(n, 4, c // 4, h, w)
    t = upcast(teacher.detach()).reshape(n, 4, c // 4, h, w)
    return _soft_kl(s, t, 2, temperature) * weights[:, None]


def _class_kl(student: Tensor, teacher: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """``(N, H, W)`` weighted KL of the class distributions at every location."""
    return _soft_kl(upcast(student), upcast(teacher.detach()), 1, temperature) * weights


def _weighted_ld(
    student: Tensor, teacher: Tensor, region_map: Tensor, name: str, temperature: float, reduction: str,
    avg_factor: float,
) -> Tensor:
    """:func:`_edge_kl` reduced with the official head's fixed ``avg_factor`` (shared by both LD regions)."""
    check_options(temperature=temperature, reduction=reduction)
    weights = _box_inputs(student, teacher, region_map, name)
    # Benchmark (benchmarks.losses workload, 68 channels, CPU, eager fwd+bwd, one interleaved run): main region
    # dense 1607-1697 ms / gathered 225-264 ms, peak 174 / 70 MiB; VLR 1585-1837 / 412-796 ms, 174 / 73 MiB.
    dense = reduction == "none" or torch.compiler.is_compiling()
    terms = (_edge_kl if dense else _edge_kl_at_region)(student, teacher, weights, temperature)
    return reduce_loss(terms, reduction, avg_factor=avg_factor).to(student.dtype)


def ld_loss(
    student: Tensor, teacher: Tensor, region_map: Tensor, *, temperature: float = 10.0, reduction: str = "mean"
) -> Tensor:
    r"""Localization distillation on the main distillation region of one FPN level.

    Each edge :math:`e \in \{l, t, r, b\}` of location :math:`i` is a distribution over
    :math:`R` bins; the student's is matched to the teacher's (Zheng et al., Eq. 4–5, with the
    official code's mean over bins and region weight :math:`w_i`):

    .. math::
        \ell_{i,e} = \frac{\tau^2}{R} \sum_{b=1}^{R} p^T_{i,e,b}
            \log \frac{p^T_{i,e,b}}{p^S_{i,e,b}}, \quad
        p_{i,e} = \operatorname{softmax}\big(z_{i,e} / \tau\big), \qquad
        \mathcal{L}_{LD} = \frac{1}{4} \sum_{i} w_i \sum_{e} \ell_{i,e}

    In the official head, :math:`w_i = \max_c \sigma(z^S_{i,c})` (the student's detached highest
    class score) on the positive locations of the label assignment and 0 elsewhere.

    Args:
        student: student box-distribution logits of one level, the four edges' ``R`` bins in
            order along the channels (GFL's ``bbox_pred`` layout, channel ``e * R + b``).
        teacher: teacher box-distribution logits of the same shape (detached inside).
        region_map: :math:`w`, ``(N, H, W)`` weights of the locations (0 outside the region; detached).
        temperature: :math:`\tau` (default 10.0, as the official configs).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the official head's
            fixed ``avg_factor`` 4, i.e. the weighted sum over locations of the mean over the four
            edges, *not* divided by the number of positives (so it grows with the number of objects);
            use ``reduction='none'`` and ``.mean()`` for the plain element mean. ``'sum'`` sums;
            ``'none'`` returns the ``(N, 4, H, W)`` weighted per-edge terms :math:`w_i \ell_{i,e}`.

    Shape:
        - student, teacher: :math:`(N, 4R, H, W)`
        - region_map: :math:`(N, H, W)`
        - output: scalar, or :math:`(N, 4, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zhaohui Zheng, Rongguang Ye, Ping Wang, Dongwei Ren, Wangmeng Zuo, Qibin Hou, Ming-Ming Cheng.
        "Localization Distillation for Dense Object Detection". CVPR 2022. arXiv:2102.12252. Journal
        version: "Localization Distillation for Object Detection", TPAMI 2023, arXiv:2204.05957.
        Official code: HikariTJU/LD@4287990 ``knowledge_distillation_kl_div_loss`` called by
        ``LDHead.loss_single`` (``loss_ld``, weight 0.25); matched to float32 rounding by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 4 * 17, 5, 7), torch.randn(2, 4 * 17, 5, 7)
        >>> positives = torch.rand(2, 5, 7) > 0.8
        >>> region = positives * torch.rand(2, 5, 7)  # the student's max class score in the official head
        >>> ld_loss(s, t, region).shape
        torch.Size([])
        >>> float(ld_loss(t, t, region))
        0.0

    Notes:
        The equation above is computed at every location (the reference form, used for
        ``reduction='none'`` and under ``torch.compile``); otherwise only the locations of nonzero
        weight are gathered, as the official head does, with the same value and gradient (tested).
        A NaN anywhere in the inputs gives a NaN loss in both forms. The official loss
        asserts :math:`\tau \ge 1`; any :math:`\tau > 0` is accepted here. mmdetection's
        ``KnowledgeDistillationKLDivLoss`` and its ``LDHead`` compute the same main-region term.

        Under ``DistributedDataParallel`` this sum over the batch gets ``1 / world_size`` of the union
        batch's gradients (DDP averages); multiply ``loss_weight`` by the world size to train as one process
        would (:mod:`kdimpl.distributed`, behaviour ``'sum'``).
    """
    return _weighted_ld(student, teacher, region_map, "region_map", temperature, reduction, _MAIN_AVG_FACTOR)


def ld_vlr_loss(
    student: Tensor, teacher: Tensor, vlr_map: Tensor, *, temperature: float = 10.0, reduction: str = "mean"
) -> Tensor:
    r"""Localization distillation on the valuable localisation region (VLR) of one FPN level.

    The per-edge term :math:`\ell_{i,e}` of :func:`ld_loss`, weighted by the VLR map :math:`v_i`
    of :func:`ld_valuable_regions` (the IoU of location :math:`i`'s anchor with its GT box inside
    the region, 0 outside) and divided by the official head's fixed factor 16:

    .. math::
        \mathcal{L}_{VL} = \frac{1}{16} \sum_{i} v_i \sum_{e \in \{l,t,r,b\}} \ell_{i,e}

    Args:
        student: student box-distribution logits of one level (``e * R + b`` channel layout).
        teacher: teacher box-distribution logits of the same shape (detached inside).
        vlr_map: :math:`v`, ``(N, H, W)`` VLR weights of the level (detached), from
            :func:`ld_valuable_regions`.
        temperature: :math:`\tau` (default 10.0, as the official head).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the official head's
            fixed ``avg_factor`` 16 (the weighted sum over locations and edges divided by 16, not by
            the size of the region); use ``reduction='none'`` and ``.mean()`` for the plain element
            mean. ``'sum'`` sums; ``'none'`` returns the ``(N, 4, H, W)`` weighted per-edge terms.

    Shape:
        - student, teacher: :math:`(N, 4R, H, W)`
        - vlr_map: :math:`(N, H, W)`
        - output: scalar, or :math:`(N, 4, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zhaohui Zheng et al. "Localization Distillation for Dense Object Detection". CVPR 2022.
        arXiv:2102.12252; TPAMI 2023, arXiv:2204.05957.
        Official code: HikariTJU/LD@4287990 ``knowledge_distillation_kl_div_loss`` called by
        ``LDHead.loss_single`` (``loss_ld_vlr``, weight 0.25, on by default in ``LDHead``); matched by
        the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 4 * 17, 5, 7), torch.randn(2, 4 * 17, 5, 7)
        >>> ld_vlr_loss(s, t, torch.rand(2, 5, 7)).shape
        torch.Size([])

    Notes:
        The papers describe the VLR as a region (a mask); the official code weights it by the IoU,
        which is reproduced here (pass a 0/1 map for the mask). The VLR may overlap the positives.

        Under ``DistributedDataParallel`` this sum over the batch gets ``1 / world_size`` of the union
        batch's gradients (DDP averages); multiply ``loss_weight`` by the world size to train as one process
        would (:mod:`kdimpl.distributed`, behaviour ``'sum'``).
    """
    return _weighted_ld(student, teacher, vlr_map, "vlr_map", temperature, reduction, _VLR_AVG_FACTOR)


def ld_cls_loss(
    student: Tensor, teacher: Tensor, pos_mask: Tensor, *, temperature: float = 2.0, reduction: str = "mean"
) -> Tensor:
    r"""The classification KD of the official LD head: softened KL over the classes on the positives.

    .. math::
        \ell_i = \frac{\tau^2}{K} \sum_{c=1}^{K} q^T_{i,c} \log \frac{q^T_{i,c}}{q^S_{i,c}}, \quad
        q_i = \operatorname{softmax}\big(z_i / \tau\big), \qquad
        \mathcal{L}_{KD} = \frac{1}{|\mathcal{P}|} \sum_{i \in \mathcal{P}} \ell_i

    over the positive locations :math:`\mathcal{P}` of one level (the softmax runs over the
    head's :math:`K` sigmoid class logits).

    Args:
        student: student classification logits of one level.
        teacher: teacher classification logits of the same shape (detached inside).
        pos_mask: ``(N, H, W)`` 0/1 (or bool) mask of the positive locations; other values weight
            the locations as the official ``label_weights`` do.
        temperature: :math:`\tau` (default 2.0, as the official head).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the weighted sum
            divided by the number of nonzero entries of ``pos_mask`` on this level (the official
            ``avg_factor``; 0 without positives); use ``reduction='none'`` and ``.mean()`` for the
            plain element mean. ``'sum'`` sums; ``'none'`` returns the ``(N, H, W)`` weighted terms.

    Shape:
        - student, teacher: :math:`(N, K, H, W)`
        - pos_mask: :math:`(N, H, W)`
        - output: scalar, or :math:`(N, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Zhaohui Zheng et al. "Localization Distillation for Object Detection". TPAMI 2023.
        arXiv:2204.05957 (CVPR 2022 version: arXiv:2102.12252).
        Official code: HikariTJU/LD@4287990 ``knowledge_distillation_kl_div_loss`` called by
        ``LDHead.loss_single`` (``loss_kd``, weight 10, on by default in ``LDHead``); matched by the
        parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 80, 5, 7), torch.randn(2, 80, 5, 7)
        >>> ld_cls_loss(s, t, torch.rand(2, 5, 7) > 0.8).shape
        torch.Size([])

    Notes:
        The official head also computes this term on the VLR but multiplies it by 0
        (``loss_kd_neg``); it is not reproduced. The normaliser counts the positives of the
        level on one GPU (not averaged over GPUs), as the official code does.

        Under ``DistributedDataParallel`` each process divides by its own ``avg_factor``; inside
        :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_feature_pair(student, teacher)
    check_options(temperature=temperature, reduction=reduction)
    weights = _level_map(pos_mask, "pos_mask", student)
    # Benchmark (as in _weighted_ld, 80 classes): dense 2064-2174 ms / gathered 285-540 ms, peak 206 / 82 MiB.
    dense = reduction == "none" or torch.compiler.is_compiling()
    terms = (_class_kl if dense else _class_kl_at_region)(student, teacher, weights, temperature)
    return reduce_loss(terms, reduction, avg_factor=(weights != 0).sum()).to(student.dtype)


def _at_region(student: Tensor, teacher: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``(P, C)`` student and teacher vectors and ``(P,)`` weights of the locations of nonzero weight.

    Also returns a zero that is NaN when any input element is NaN (the reference form's NaN
    propagation); :func:`_region_terms` appends it to the terms.
    """
    n_idx, y_idx, x_idx = weights.nonzero(as_tuple=True)
    dtype = compute_dtype(student)
    guard = (student.detach().sum(dtype=dtype) + teacher.detach().sum(dtype=dtype)) * 0
    s = upcast(student[n_idx, :, y_idx, x_idx])
    t = upcast(teacher.detach()[n_idx, :, y_idx, x_idx])
    return s, t, weights[n_idx, y_idx, x_idx], guard


def _edge_kl_at_region(student: Tensor, teacher: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """:func:`_edge_kl` computed only where the weight is nonzero: the flat terms plus the NaN guard."""
    s, t, w, guard = _at_region(student, teacher, weights)
    terms = _soft_kl(s.reshape(-1, 4, s.shape[1] // 4), t.reshape(-1, 4, t.shape[1] // 4), 2, temperature) * w[:, None]
    return torch.cat([terms.flatten(), guard[None]])


def _class_kl_at_region(student: Tensor, teacher: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """The class KL of :func:`ld_cls_loss` computed only where the weight is nonzero, plus the NaN guard."""
    s, t, w, guard = _at_region(student, teacher, weights)
    return torch.cat([_soft_kl(s, t, 1, temperature) * w, guard[None]])


def ld_grid_anchors(
    feature_sizes: Sequence[Sequence[int]],
    image_size: Sequence[int],
    *,
    scale: float = 8.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """One square anchor per location of every level, as GFL/ATSS heads place them: ``(H, W, 4)`` each.

    The stride of a level is ``image_size / (H, W)``; the anchor at cell ``(y, x)`` is centred at
    ``(x * stride_x, y * stride_y)`` (mmdetection's ``AnchorGenerator`` with ``center_offset=0``)
    with sides ``scale * stride`` (``octave_base_scale=8`` in the official LD configs).

    Example:
        >>> [a.shape for a in ld_grid_anchors([(4, 6), (2, 3)], (32, 48))]
        [torch.Size([4, 6, 4]), torch.Size([2, 3, 4])]
    """
    check_image_size(image_size, 1)
    img_h, img_w = (float(v) for v in image_size)
    anchors = []
    for height, width in feature_sizes:
        stride_y, stride_x = img_h / height, img_w / width
        ys = torch.arange(height, device=device, dtype=dtype) * stride_y
        xs = torch.arange(width, device=device, dtype=dtype) * stride_x
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        half_x, half_y = 0.5 * scale * stride_x, 0.5 * scale * stride_y
        anchors.append(torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], dim=-1))
    return anchors


def _overlaps(anchors: Tensor, boxes: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """``(P, M)`` IoU and the official head's "DIoU" (overlap over the anchor's area, minus the centre term)."""
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.maximum(anchors[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(anchors[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    iou = overlap / (area_a[:, None] + area_b[None, :] - overlap).clamp(min=eps)
    enclose = torch.maximum(anchors[:, None, 2:], boxes[None, :, 2:]) - torch.minimum(
        anchors[:, None, :2], boxes[None, :, :2]
    )
    diagonal = enclose.clamp(min=0).pow(2).sum(dim=-1).clamp(min=eps)
    centre_a = anchors[:, None, :2] + anchors[:, None, 2:]
    centre_b = boxes[None, :, :2] + boxes[None, :, 2:]
    rho2 = (centre_b - centre_a).pow(2).sum(dim=-1) / 4
    return iou, overlap / area_a[:, None].clamp(min=eps) - rho2 / diagonal


@torch.no_grad()
def ld_valuable_regions(
    anchors: Sequence[Tensor], gt_boxes: Sequence[Tensor] | Tensor, *, topk: int = 9, lower_ratio: float = 0.25
) -> list[Tensor]:
    r"""Valuable-localisation-region weight maps of every level (LD, Sec. 3.3; ``get_vlr_region``).

    For each GT box :math:`g`, the ATSS threshold :math:`\theta_g = \mu_g + \sigma_g` is the mean
    plus the (unbiased) standard deviation of the IoUs of the ``topk`` anchors per level whose
    centres are closest to :math:`g`'s centre. Anchor :math:`i` is in :math:`g`'s VLR when

    .. math::
        \alpha\,\theta_g \le \mathrm{DIoU}(a_i, g) < \theta_g, \qquad
        v_i = \max_{g:\, i \in \mathrm{VLR}_g} \mathrm{IoU}(a_i, g) \quad (0 \text{ if none})

    with :math:`\alpha` = ``lower_ratio``.

    Args:
        anchors: one ``(H_l, W_l, 4)`` tensor per level: the anchor of every location, ``x1, y1, x2, y2``
            in pixels of the input tensor (:func:`ld_grid_anchors`).
        gt_boxes: ``N`` tensors ``(M_i, 4)`` of GT boxes in the same pixels, or a padded
            ``(N, M, 4)`` tensor.
        topk: anchors per level and GT that set the threshold (official: 9, the ATSS ``topk``).
        lower_ratio: :math:`\alpha` (official 0.25).

    Returns:
        One ``(N, H_l, W_l)`` weight map per level, without gradient, for :func:`ld_vlr_loss`.

    Example:
        >>> import torch
        >>> anchors = ld_grid_anchors([(8, 12), (4, 6)], (64, 96))
        >>> maps = ld_valuable_regions(anchors, [torch.tensor([[10.0, 8.0, 50.0, 40.0]])])
        >>> [m.shape for m in maps]
        [torch.Size([1, 8, 12]), torch.Size([1, 4, 6])]

    Notes:
        Reproduces the official code, including two quirks: its "DIoU" divides the overlap by the
        anchor's area (mmdetection 2.x ``bbox_overlaps`` takes the IoF branch for ``mode='diou'``),
        and every anchor of the image is a candidate. Ignored boxes (``gt_bboxes_ignore``) are not
        supported; the official code returns an ``AssignResult`` instead of a map for an image
        without boxes, here such an image gets zeros. Anchors outside the image are kept
        (``allowed_border=-1`` in the official configs).
    """
    for i, a in enumerate(anchors):
        check_shape(a, f"anchors[{i}]", "H W 4")
    check_boxes(gt_boxes, len(gt_boxes))
    sizes = [tuple(a.shape[:2]) for a in anchors]
    counts = [h * w for h, w in sizes]
    flat = torch.cat([a.reshape(-1, 4) for a in anchors])
    centres = (flat[:, :2] + flat[:, 2:]) / 2
    starts = [0, *accumulate(counts)][:-1]
    maps = []
    for boxes in gt_boxes:  # one loop over images
        boxes = boxes.to(flat)
        if boxes.shape[0] == 0:
            maps.append(flat.new_zeros(flat.shape[0]))
            continue
        iou, diou = _overlaps(flat, boxes)
        distances = (centres[:, None, :] - ((boxes[:, :2] + boxes[:, 2:]) / 2)[None]).pow(2).sum(-1).sqrt()
        closest = [d.topk(min(topk, d.shape[0]), dim=0, largest=False)[1] + start
                   for d, start in zip(distances.split(counts), starts)]
        candidates = iou.gather(0, torch.cat(closest))  # (sum_l k_l, M)
        threshold = candidates.mean(dim=0) + candidates.std(dim=0)
        inside = (diou < threshold) & (diou >= lower_ratio * threshold)
        maps.append((iou * inside).amax(dim=1))
    weights = torch.stack(maps) if maps else flat.new_zeros(0, flat.shape[0])
    return [w.reshape(-1, h, wd) for w, (h, wd) in zip(weights.split(counts, dim=1), sizes)]


@register_loss("ld", function=ld_loss, distributed="sum")
class LDLoss(LossModule):
    """Module twin of :func:`ld_loss`; ``loss_weight`` multiplies the result (official 0.25)."""

    def __init__(self, *, temperature: float = 10.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)


@register_loss("ld_vlr", function=ld_vlr_loss, distributed="sum")
class LDVLRLoss(LossModule):
    """Module twin of :func:`ld_vlr_loss`; ``loss_weight`` multiplies the result (official 0.25)."""

    def __init__(self, *, temperature: float = 10.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)


@register_loss("ld_cls", function=ld_cls_loss, distributed="count")
class LDClsLoss(LossModule):
    """Module twin of :func:`ld_cls_loss`; ``loss_weight`` multiplies the result (official 10)."""

    def __init__(self, *, temperature: float = 2.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)
