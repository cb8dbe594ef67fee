"""Prediction-guided distillation (PGD), Yang et al., ECCV 2022.

Three pieces, all taking explicit tensors:

- :func:`pgd_prediction_weights` and :func:`pgd_background_weights` build the per-prior weight
  maps from the teacher's predictions and the GT boxes (the official ``PGWAnchorModule.assign``,
  ``PGWAnchorFreeModule.assign`` and ``get_back_weight``), vectorised over images, boxes and priors;
  :func:`pgd_split_levels` cuts them into per-level ``(N, H, W)`` maps.
- :func:`pgd_cls_loss` distils the first classification-tower features (``PGDClsLoss``).
- :func:`pgd_reg_loss` distils the first regression-tower features (``PGDRegLoss``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import _tracing, check_feature_pair, check_positive, check_reduction, check_unit_interval
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..masks import pad_boxes

__all__ = [
    "PGDClsLoss",
    "PGDRegLoss",
    "pgd_background_weights",
    "pgd_cls_loss",
    "pgd_prediction_weights",
    "pgd_reg_loss",
    "pgd_split_levels",
]

# The official code's margins: strict inside test and the determinant guard of the 2x2 inverse.
_INSIDE_MARGIN = 1e-10
_DET_EPS = 1e-10


def _prior_centres(priors: Tensor, swap_point_axes: bool) -> Tensor:
    """``(P, 2)`` (x, y) centres of anchors ``(P, 4)`` or points ``(P, 2)``."""
    if not _tracing() and (priors.dim() != 2 or priors.shape[-1] not in (2, 4)):
        raise ValueError(
            f"priors must be (P, 4) anchors x1, y1, x2, y2 or (P, 2) points x, y; got {tuple(priors.shape)}"
        )
    if priors.shape[-1] == 4:
        return (priors[:, :2] + priors[:, 2:]) * 0.5
    return priors.flip(-1) if swap_point_axes else priors


def _inside(centres: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
    """``(N, P, M)``: prior centre strictly inside box (official margin), for real boxes only."""
    cx, cy = centres[None, :, None, 0], centres[None, :, None, 1]
    x1, y1, x2, y2 = (boxes[:, None, :, k] for k in range(4))
    inside = ((cx - x1) > _INSIDE_MARGIN) & ((cy - y1) > _INSIDE_MARGIN)
    inside = inside & ((x2 - cx) > _INSIDE_MARGIN) & ((y2 - cy) > _INSIDE_MARGIN)
    return inside & valid[:, None, :]


def _pairwise_iou(pred: Tensor, boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """``(N, P, M)`` IoU between predicted ``(N, P, 4)`` and GT ``(N, M, 4)`` boxes (mmdet ``BboxOverlaps2D``)."""
    area_p = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_g = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lt = torch.maximum(pred[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(pred[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area_p[:, :, None] + area_g[:, None, :] - overlap).clamp(min=eps)
    return overlap / union


def _pad_labels(gt_labels: Sequence[Tensor] | Tensor, num_boxes: int, batch: int, device) -> Tensor:
    if isinstance(gt_labels, Tensor):
        if not _tracing() and (gt_labels.dim() != 2 or gt_labels.shape != (batch, num_boxes)):
            raise ValueError(
                f"gt_labels as one tensor must be (N, M) = ({batch}, {num_boxes}), got {tuple(gt_labels.shape)}"
            )
        return gt_labels.long()
    if not _tracing() and len(gt_labels) != batch:
        raise ValueError(f"gt_labels has {len(gt_labels)} images but gt_boxes has {batch}")
    labels = torch.zeros((batch, num_boxes), dtype=torch.long, device=device)
    for i, lab in enumerate(gt_labels):  # one loop over images
        labels[i, : lab.shape[0]] = lab.long()
    return labels


@torch.no_grad()
def pgd_prediction_weights(
    priors: Tensor,
    teacher_cls_logits: Tensor,
    teacher_boxes: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor,
    gt_labels: Sequence[Tensor] | Tensor,
    *,
    xi: float = 0.8,
    topk: int = 9,
    low_bound: float = 0.0,
    jitter: float = 0.05,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    swap_point_axes: bool = False,
) -> Tensor:
    r"""Key-predictive-region weights of every prior, from the teacher's predictions (PGD).

    For prior :math:`i` and GT :math:`g` of class :math:`c_g` the teacher's prediction quality is

    .. math::
        q_{ig} = \sigma\big(z^T_{i,c_g}\big)^{1-\xi}\;\mathrm{IoU}\big(\hat b^T_i, g\big)^{\xi}

    The top-:math:`k` priors of each GT by :math:`q` (over all levels) are its key predictive
    regions. A 2-D Gaussian is fitted to their centres by maximum likelihood (mean
    :math:`\mu_g`, covariance :math:`\Sigma_g`, from centres jittered by
    :math:`U(-\text{jitter}, \text{jitter})` as in the official code), and each candidate gets

    .. math::
        w_{ig} = \exp\!\big(-\tfrac12 (p_i - \mu_g)^\top \Sigma_g^{-1} (p_i - \mu_g)\big)
            \cdot [\,p_i \in g\,], \qquad I_i = \max_g w_{ig}

    with :math:`w_{ig} = 0` for non-candidates and :math:`I_i < \text{low\_bound}` set to 0.
    With ``topk=1`` the single candidate gets weight 1.

    Args:
        priors: ``(P, 4)`` anchors ``x1, y1, x2, y2`` or ``(P, 2)`` points ``x, y`` in input pixels, all
            levels concatenated (level by level, row-major within a level). One prior per location.
        teacher_cls_logits: ``(N, P, K)`` teacher classification logits per prior.
        teacher_boxes: ``(N, P, 4)`` teacher boxes decoded to ``x1, y1, x2, y2`` pixels.
        gt_boxes: ``N`` tensors ``(M_i, 4)`` of GT boxes in pixels, or a padded ``(N, M, 4)`` tensor.
        gt_labels: ``N`` tensors ``(M_i,)`` of class indices into ``K``, or a padded ``(N, M)`` tensor.
        xi: the IoU exponent :math:`\xi` (official: 0.8 for the classification map, 0.6 for the
            regression map).
        topk: candidates per GT :math:`k` (official: 9 for ATSS, 30 for GFL/FCOS/AutoAssign/DDOD);
            clipped to ``P``.
        low_bound: weights below it become 0 (official 0).
        jitter: half-width of the uniform jitter added to the candidate centres before fitting
            the Gaussian (official 0.05 pixels); 0 disables it.
        noise: optional explicit ``(N, M, k, 2)`` jitter (overrides ``jitter``), for reproducible runs.
        generator: random generator for the jitter.
        swap_point_axes: for points, read them as ``(y, x)`` in the inside test, reproducing the
            official anchor-free code (``pgw_anchor_free.py``), which swaps the axes of mmdet's
            ``(x, y)`` points. Off by default (the correct reading).

    Shape:
        - output: :math:`(N, P)`, no gradient, in float32 for half inputs.

    Returns:
        The weight map :math:`I`; cut it per level with :func:`pgd_split_levels`.

    Reference:
        Chenhongyi Yang, Mateusz Ochal, Amos Storkey, Elliot J. Crowley. "Prediction-Guided
        Distillation for Dense Object Detection". ECCV 2022. arXiv:2203.05469.
        Official code: ChenhongyiYang/PGD@81c54d5
        (``mmdet/models/dense_heads/pgd_heads/utils/pgw_anchor_based.py``, ``PGWAnchorModule.assign``).

    Example:
        >>> import torch
        >>> ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
        >>> points = torch.stack([xs, ys], -1).reshape(-1, 2) * 8 + 4
        >>> anchors = torch.cat([points - 16, points + 16], -1)
        >>> logits, boxes = torch.randn(1, 48, 3), anchors.expand(1, 48, 4)
        >>> w = pgd_prediction_weights(anchors, logits, boxes, [torch.tensor([[10.0, 6.0, 50.0, 40.0]])],
        ...                            [torch.tensor([1])], topk=5, generator=torch.Generator().manual_seed(0))
        >>> w.shape, int((w > 0).sum()) <= 5
        (torch.Size([1, 48]), True)

    Notes:
        Ignored GT boxes (``ignore_iof_thr``) are not supported; every official config disables them.
    """
    check_unit_interval(xi, "xi")
    if not _tracing():
        if teacher_cls_logits.dim() != 3 or teacher_boxes.shape != (*teacher_cls_logits.shape[:2], 4):
            raise ValueError(
                "teacher_cls_logits must be (N, P, K) and teacher_boxes (N, P, 4) with the same N, P; got "
                f"{tuple(teacher_cls_logits.shape)} and {tuple(teacher_boxes.shape)}"
            )
        if teacher_cls_logits.shape[1] != priors.shape[0]:
            raise ValueError(
                f"teacher predictions cover {teacher_cls_logits.shape[1]} priors but priors has {priors.shape[0]}"
            )
    logits = upcast(teacher_cls_logits.detach())
    pred = upcast(teacher_boxes.detach())
    n, p, _ = logits.shape
    boxes, valid = pad_boxes(gt_boxes)
    boxes = boxes.to(pred.dtype)
    m = boxes.shape[1]
    labels = _pad_labels(gt_labels, m, n, logits.device)
    centres = _prior_centres(upcast(priors), False)

    score = torch.sigmoid(logits.gather(2, labels[:, None, :].expand(n, p, m)))
    quality = score.pow(1 - xi) * _pairwise_iou(pred, boxes).pow(xi)  # (N, P, M)
    k = min(topk, p)
    idx = quality.topk(k, dim=1).indices  # (N, k, M)
    cand = centres[idx].permute(0, 2, 1, 3)  # (N, M, k, 2)
    if k > 1:
        if noise is None:
            noise = (torch.rand(cand.shape, generator=generator, device=cand.device, dtype=cand.dtype) - 0.5) * (
                2 * jitter
            )
        data = cand + noise.to(cand.dtype)
        mu = data.mean(dim=2, keepdim=True)
        diff = data - mu
        sigma = torch.einsum("nmki,nmkj->nmij", diff, diff) / k
        s00, s01, s10, s11 = sigma[..., 0, 0], sigma[..., 0, 1], sigma[..., 1, 0], sigma[..., 1, 1]
        det = s00 * s11 - s01 * s10
        inverse = torch.stack([s11, -s01, -s10, s00], dim=-1).reshape(n, m, 2, 2) / (det[..., None, None] + _DET_EPS)
        d = cand - mu  # the un-jittered centres, as in the official code
        cand_w = torch.exp(-0.5 * torch.einsum("nmki,nmij,nmkj->nmk", d, inverse, d))
    else:
        cand_w = cand.new_ones(cand.shape[:3])
    # only candidates can carry weight: test them alone, then keep each prior's best GT
    test_centres = cand.flip(-1) if swap_point_axes and priors.shape[-1] == 2 else cand
    inside = _candidate_inside(test_centres, boxes, valid)
    cand_w = torch.where(inside, cand_w, torch.zeros_like(cand_w))
    best = quality.new_zeros((n, p)).scatter_reduce(
        1, idx.transpose(1, 2).reshape(n, -1), cand_w.reshape(n, -1), "amax"
    )
    return torch.where(best < low_bound, torch.zeros_like(best), best)


def _candidate_inside(cand: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
    """``(N, M, k)``: candidate centre ``(N, M, k, 2)`` strictly inside its own GT box (official margin)."""
    x1, y1, x2, y2 = (boxes[:, :, None, j] for j in range(4))
    cx, cy = cand[..., 0], cand[..., 1]
    inside = ((cx - x1) > _INSIDE_MARGIN) & ((cy - y1) > _INSIDE_MARGIN)
    inside = inside & ((x2 - cx) > _INSIDE_MARGIN) & ((y2 - cy) > _INSIDE_MARGIN)
    return inside & valid[:, :, None]


@torch.no_grad()
def pgd_background_weights(
    priors: Tensor, gt_boxes: Sequence[Tensor] | Tensor, *, swap_point_axes: bool = False
) -> Tensor:
    """``(N, P)`` background map: 1 where a prior's centre lies strictly inside no GT box, else 0.

    Official ``get_back_weight`` / ``get_back_weight_anchorfree`` (ChenhongyiYang/PGD@81c54d5,
    ``background_weight.py``); ``swap_point_axes`` reproduces the latter's (y, x) reading of points.

    Example:
        >>> import torch
        >>> points = torch.tensor([[5.0, 5.0], [50.0, 5.0]])
        >>> pgd_background_weights(points, [torch.tensor([[0.0, 0.0, 10.0, 10.0]])])
        tensor([[0., 1.]])
    """
    boxes, valid = pad_boxes(gt_boxes)
    centres = _prior_centres(upcast(priors), swap_point_axes)
    inside = _inside(centres, boxes.to(centres.dtype), valid)
    return (~inside.any(dim=2)).to(centres.dtype)


def pgd_split_levels(weights: Tensor, feature_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Cut ``(N, P)`` per-prior weights into per-level ``(N, H, W)`` maps (priors level by level, row-major).

    Example:
        >>> import torch
        >>> [m.shape for m in pgd_split_levels(torch.zeros(2, 4 * 6 + 2 * 3), [(4, 6), (2, 3)])]
        [torch.Size([2, 4, 6]), torch.Size([2, 2, 3])]
    """
    counts = [h * w for h, w in feature_sizes]
    if not _tracing() and sum(counts) != weights.shape[-1]:
        raise ValueError(
            f"weights cover {weights.shape[-1]} priors but the feature sizes {list(feature_sizes)} hold {sum(counts)}"
        )
    return [c.reshape(weights.shape[0], h, w) for c, (h, w) in zip(weights.split(counts, dim=-1), feature_sizes)]


def _as_map(weight: Tensor, name: str, like: Tensor) -> Tensor:
    """Accept ``(N, H, W)`` or ``(N, 1, H, W)`` weight maps matching ``like`` ``(N, C, H, W)``."""
    if weight.dim() == 4 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if not _tracing() and weight.shape != (like.shape[0], *like.shape[2:]):
        raise ValueError(
            f"{name} must be (N, H, W) or (N, 1, H, W) matching the features {tuple(like.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    return upcast(weight.detach())


def _attentions(x: Tensor, temp_s: float, temp_c: float) -> tuple[Tensor, Tensor]:
    """Spatial ``(N, H, W)`` (as :func:`kdimpl.attention.spatial_attention`) and per-pixel channel attention.

    Both share one ``|x|`` pass.
    """
    n, c, h, w = x.shape
    magnitude = x.abs()
    spatial = (h * w) * F.softmax(magnitude.mean(dim=1).reshape(n, h * w) / temp_s, dim=1).reshape(n, h, w)
    return spatial, c * F.softmax(magnitude / temp_c, dim=1)


def pgd_cls_loss(
    student: Tensor,
    teacher: Tensor,
    fg_weight: Tensor,
    bg_weight: Tensor,
    *,
    temp_s: float = 0.8,
    temp_c: float = 0.8,
    alpha: float = 0.08,
    beta: float = 0.04,
    delta: float = 8e-4,
    mix_batch_masks: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""PGD classification-branch feature distillation on one level (``PGDClsLoss``).

    With the teacher's spatial attention :math:`A^S` (softmax over positions of the channel-mean
    :math:`|F^T|`, temperature :math:`T_s`, times :math:`HW`) and per-pixel channel attention
    :math:`A^C = C\,\mathrm{softmax}_c(|F^T| / T_c)`, foreground weights :math:`I` normalised by
    their count of non-zero cells per image, :math:`M^{fg} = I / |\{I \ne 0\}|`, and background
    weights likewise:

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_n \Big[\alpha \sum_{c,h,w} M^{fg}_{hw} A^S_{hw} A^C_{chw}
            (F^S - F^T)^2_{chw} + \beta \sum_{c,h,w} M^{bg}_{hw} A^S_{hw} A^C_{chw} (F^S - F^T)^2_{chw}
            + \delta \Big(\frac{1}{HW}\sum_{c,h,w} |A^C(F^S) - A^C(F^T)| + \sum_{h,w} |A^S(F^S) - A^S(F^T)|\Big)\Big]

    Args:
        student: student features of the first classification-tower conv.
        teacher: teacher features of the same shape (detached inside).
        fg_weight: key-predictive-region weights :math:`I^{cls}` of this level
            (:func:`pgd_prediction_weights` with ``xi=0.8``, then :func:`pgd_split_levels`).
        bg_weight: background map of this level (:func:`pgd_background_weights`).
        temp_s: spatial temperature :math:`T_s` (official 0.8; 0.4 for AutoAssign).
        temp_c: channel temperature :math:`T_c` (official 0.8; 0.4 for AutoAssign).
        alpha: foreground weight :math:`\alpha` (official 0.08 for ATSS/DDOD, 0.04 for FCOS/GFL).
        beta: background weight :math:`\beta` (official :math:`\alpha / 2`).
        delta: attention-imitation weight :math:`\delta` (official 8e-4).
        mix_batch_masks: reproduce the official broadcasting, where the ``(N, 1, 1, H, W)`` masks meet
            ``(N, C, H, W)`` features so that every image is weighted by the masks of all images
            summed over the batch. Off by default (each image uses its own masks, as the paper states).
        reduction: ``'none'``: the ``(N,)`` per-image losses in the brackets; ``'sum'``: their sum;
            ``'mean'``: their mean over the ``N`` images, which is the official normalisation.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`; fg_weight, bg_weight: :math:`(N, H, W)` or :math:`(N, 1, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss of this level.

    Reference:
        Chenhongyi Yang, Mateusz Ochal, Amos Storkey, Elliot J. Crowley. "Prediction-Guided
        Distillation for Dense Object Detection". ECCV 2022. arXiv:2203.05469.
        Official code: ChenhongyiYang/PGD@81c54d5 (``mmdet/distillation/losses/pgd_cls.py``, ``PGDClsLoss``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> fg = torch.zeros(2, 6, 10); fg[:, 2:4, 3:6] = 0.5
        >>> pgd_cls_loss(s, t, fg, (fg == 0).float()).shape
        torch.Size([])

    Notes:
        The official ``loss_weight`` (per-level 1.0, 1.25, ..., 2.0 for P3-P7) scales only the
        feature terms: pass ``alpha * w_l`` and ``beta * w_l``. The module's ``loss_weight`` scales
        everything. The official code weights ``sqrt(mask * attention) * (S - T)`` and squares it;
        the result is the same up to rounding.
    """
    check_feature_pair(student, teacher)
    check_positive(temp_s, "temp_s")
    check_positive(temp_c, "temp_c")
    check_reduction(reduction)
    s = upcast(student)
    t = upcast(teacher.detach())
    h, w = s.shape[2:]
    fg = _as_map(fg_weight, "fg_weight", s)
    bg = _as_map(bg_weight, "bg_weight", s)
    fg = fg / (fg != 0).sum(dim=(1, 2), keepdim=True).to(fg.dtype).clamp(min=1e-10)
    bg = bg / (bg != 0).sum(dim=(1, 2), keepdim=True).to(bg.dtype).clamp(min=1e-10)
    if mix_batch_masks:
        fg = fg.sum(dim=0, keepdim=True)
        bg = bg.sum(dim=0, keepdim=True)

    spatial_t, channel_t = _attentions(t, temp_s, temp_c)
    spatial_s, channel_s = _attentions(s, temp_s, temp_c)
    error = ((s - t).square() * channel_t).sum(dim=1) * spatial_t  # (N, H, W)
    feature = (alpha * fg + beta * bg) * error

    channel_gap = (channel_s - channel_t).abs().sum(dim=(1, 2, 3)) / (h * w)
    spatial_gap = (spatial_s - spatial_t).abs().sum(dim=(1, 2))
    per_image = feature.sum(dim=(1, 2)) + delta * (channel_gap + spatial_gap)
    return reduce_loss(per_image, reduction).to(student.dtype)


def pgd_reg_loss(
    student: Tensor,
    teacher: Tensor,
    weight: Tensor,
    *,
    temp: float = 0.8,
    gamma: float = 0.128,
    delta: float = 8e-4,
    max_positions: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""PGD regression-branch feature distillation on one level (``PGDRegLoss``).

    Over the set :math:`P` of positions with non-zero weight :math:`I^{reg}`, with the per-pixel
    channel attention :math:`A^C(f) = C\,\mathrm{softmax}_c(|f| / T)`:

    .. math::
        \mathcal{L} = \frac{1}{|P|} \sum_{p \in P} \Big[\gamma\, I^{reg}_p \frac{1}{C} \sum_c
            A^C(F^T)_{pc} (F^S_{pc} - F^T_{pc})^2 + \delta \sum_c |A^C(F^S)_{pc} - A^C(F^T)_{pc}|\Big]

    and 0 (still in the autograd graph) when :math:`P` is empty.

    Args:
        student: student features of the first regression-tower conv.
        teacher: teacher features of the same shape (detached inside).
        weight: key-predictive-region weights :math:`I^{reg}` of this level
            (:func:`pgd_prediction_weights` with ``xi=0.6``, then :func:`pgd_split_levels`).
        temp: channel temperature :math:`T` (official 0.8; 0.4 for AutoAssign).
        gamma: feature weight :math:`\gamma` (official :math:`1.6 \alpha`, e.g. 0.128).
        delta: attention-imitation weight :math:`\delta` (official 8e-4).
        max_positions: optional bound on :math:`|P|` per image. When given (and ``reduction`` is not
            ``'none'``), only the ``max_positions`` cells of largest weight per image are computed, with
            static shapes, so ``torch.compile`` need not touch every position. Exact when no image has
            more non-zero weights on this level; a safe bound is (boxes per image) x ``topk`` of
            :func:`pgd_prediction_weights`, since each box marks at most ``topk`` priors.
        reduction: ``'none'``: the ``(N, H, W)`` per-position terms in the brackets (0 outside
            :math:`P`); ``'sum'``: their sum; ``'mean'``: the sum divided by :math:`|P|` over the
            batch, which is the official normalisation.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`; weight: :math:`(N, H, W)` or :math:`(N, 1, H, W)`
        - output: scalar, or :math:`(N, H, W)` with ``reduction='none'``

    Returns:
        The loss of this level.

    Reference:
        Chenhongyi Yang, Mateusz Ochal, Amos Storkey, Elliot J. Crowley. "Prediction-Guided
        Distillation for Dense Object Detection". ECCV 2022. arXiv:2203.05469.
        Official code: ChenhongyiYang/PGD@81c54d5 (``mmdet/distillation/losses/pgd_reg.py``, ``PGDRegLoss``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> w = torch.zeros(2, 6, 10); w[0, 2:4, 3:6] = 0.5
        >>> pgd_reg_loss(s, t, w).shape
        torch.Size([])

    Notes:
        In eager mode with ``'mean'``/``'sum'`` the positions of :math:`P` are gathered first, as the
        official code does (cheap when key regions are sparse; a host sync on GPU). Under
        ``torch.compile`` and for ``'none'`` every position is computed and masked, which gives the
        same value with static shapes but costs a dense pass (on the benchmark workload, sparse key
        regions on five FPN levels, about 10x the eager time on CPU): pass ``max_positions`` when
        compiling.
    """
    check_feature_pair(student, teacher)
    check_positive(temp, "temp")
    check_reduction(reduction)
    if max_positions is not None and not _tracing():
        check_positive(max_positions, "max_positions")
    s = upcast(student)
    t = upcast(teacher.detach())
    w = _as_map(weight, "weight", s)
    positive = w != 0
    count = positive.sum().to(s.dtype)
    n, c = s.shape[:2]
    if reduction != "none" and max_positions is not None:
        # static-shaped gather of the max_positions largest weights per image (exact when P fits)
        k = min(max_positions, w[0].numel())
        index = w.flatten(1).abs().topk(k, dim=1).indices  # (N, k)
        w_k = w.flatten(1).gather(1, index)
        gather = index[:, None, :].expand(n, c, k)
        s_k = s.reshape(n, c, -1).gather(2, gather)
        t_k = t.reshape(n, c, -1).gather(2, gather)
        per_position = _reg_terms(s_k, t_k, w_k, temp, gamma, delta) * (w_k != 0).to(s.dtype)
        return reduce_loss(per_position, reduction, avg_factor=count).to(student.dtype)
    if reduction == "none" or _tracing():
        # dense and static-shaped: every position, zero outside P (what torch.compile sees)
        per_position = _reg_terms(s, t, w, temp, gamma, delta) * positive.to(s.dtype)
        return reduce_loss(per_position, reduction, avg_factor=count).to(student.dtype)
    # eager: gather the (usually few) positions of P first, as the official code does
    image, pos = positive.flatten(1).nonzero(as_tuple=True)
    s_p = s.reshape(n, c, -1)[image, :, pos]  # (|P|, C)
    t_p = t.reshape(n, c, -1)[image, :, pos]
    per_position = _reg_terms(s_p, t_p, w.flatten(1)[image, pos], temp, gamma, delta)
    return reduce_loss(per_position, reduction, avg_factor=count).to(student.dtype)


def _reg_terms(s: Tensor, t: Tensor, w: Tensor, temp: float, gamma: float, delta: float) -> Tensor:
    """Per-position ``gamma * w * mean_c(A_T (S - T)^2) + delta * sum_c |A_S - A_T|`` (channels on dim 1)."""
    channels = s.shape[1]
    channel_t = channels * F.softmax(t.abs() / temp, dim=1)
    channel_s = channels * F.softmax(s.abs() / temp, dim=1)
    feature = ((s - t).square() * channel_t).mean(dim=1) * w
    gap = (channel_s - channel_t).abs().sum(dim=1)
    return gamma * feature + delta * gap


@register_loss("pgd_cls", function=pgd_cls_loss)
class PGDClsLoss(nn.Module):
    """Module twin of :func:`pgd_cls_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        temp_s: float = 0.8,
        temp_c: float = 0.8,
        alpha: float = 0.08,
        beta: float = 0.04,
        delta: float = 8e-4,
        mix_batch_masks: bool = False,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive(temp_s, "temp_s")
        check_positive(temp_c, "temp_c")
        check_reduction(reduction)
        self.temp_s, self.temp_c = temp_s, temp_c
        self.alpha, self.beta, self.delta = alpha, beta, delta
        self.mix_batch_masks = mix_batch_masks
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student: Tensor, teacher: Tensor, fg_weight: Tensor, bg_weight: Tensor) -> Tensor:
        return self.loss_weight * pgd_cls_loss(
            student,
            teacher,
            fg_weight,
            bg_weight,
            temp_s=self.temp_s,
            temp_c=self.temp_c,
            alpha=self.alpha,
            beta=self.beta,
            delta=self.delta,
            mix_batch_masks=self.mix_batch_masks,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"temp_s={self.temp_s}, temp_c={self.temp_c}, alpha={self.alpha}, beta={self.beta}, delta={self.delta}, "
            f"mix_batch_masks={self.mix_batch_masks}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
        )


@register_loss("pgd_reg", function=pgd_reg_loss)
class PGDRegLoss(nn.Module):
    """Module twin of :func:`pgd_reg_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        temp: float = 0.8,
        gamma: float = 0.128,
        delta: float = 8e-4,
        max_positions: int | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive(temp, "temp")
        check_reduction(reduction)
        if max_positions is not None:
            check_positive(max_positions, "max_positions")
        self.temp, self.gamma, self.delta = temp, gamma, delta
        self.max_positions = max_positions
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, student: Tensor, teacher: Tensor, weight: Tensor) -> Tensor:
        return self.loss_weight * pgd_reg_loss(
            student,
            teacher,
            weight,
            temp=self.temp,
            gamma=self.gamma,
            delta=self.delta,
            max_positions=self.max_positions,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"temp={self.temp}, gamma={self.gamma}, delta={self.delta}, max_positions={self.max_positions}, "
            f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
        )
