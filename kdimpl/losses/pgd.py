"""Prediction-guided distillation (PGD), Yang et al., ECCV 2022.

The losses take per-level weight maps; the maps come from the teacher's predictions over all
levels at once (the top-k of each GT box is taken over every prior of the image):

- :func:`pgd_prediction_weights` (key predictive regions) and :func:`pgd_background_weights`
  give ``(N, P)`` maps over the priors of all levels; :func:`pgd_split_levels` cuts them into
  per-level ``(N, H, W)`` maps.
- :func:`pgd_cls_loss` distils the first classification-tower features, :func:`pgd_reg_loss`
  the first regression-tower features, one level at a time; :func:`kdimpl.multilevel_loss`
  applies them over the levels with the maps as per-level sequences::

      fg = pgd_split_levels(pgd_prediction_weights(priors, logits, boxes, gt_boxes, gt_labels), sizes)
      bg = pgd_split_levels(pgd_background_weights(priors, gt_boxes), sizes)
      loss = multilevel_loss(pgd_cls_loss, students, teachers, fg, bg)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import _tracing, check_boxes, check_feature_pair, check_options, check_shape
from .._checks import check_unit_interval, value_checks_enabled
from .._dtypes import compute_dtype, upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..masks import pad_box_values, pad_boxes

__all__ = ["pgd_background_weights", "pgd_prediction_weights", "pgd_split_levels"]

# The official code's margins: strict inside test and the determinant guard of the 2x2 inverse.
_INSIDE_MARGIN = 1e-10
_DET_EPS = 1e-10


def _check_priors(priors: Tensor) -> None:
    check_shape(priors, "priors", "P D")
    if not _tracing() and priors.shape[-1] not in (2, 4):
        raise ValueError(
            f"priors must be (P, 4) anchors x1, y1, x2, y2 or (P, 2) points x, y; got {tuple(priors.shape)}"
        )


def _prior_centres(priors: Tensor, swap_point_axes: bool) -> Tensor:
    """``(P, 2)`` (x, y) centres of anchors ``(P, 4)`` or points ``(P, 2)``."""
    if priors.shape[-1] == 4:
        return (priors[:, :2] + priors[:, 2:]) * 0.5
    return priors.flip(-1) if swap_point_axes else priors


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
    rng: torch.Generator | None = None,
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
        priors: ``(P, 4)`` anchors ``x1, y1, x2, y2`` or ``(P, 2)`` points ``x, y`` in pixels of the input
            tensor, all levels concatenated (level by level, row-major within a level), one prior per location.
        teacher_cls_logits: ``(N, P, K)`` teacher classification logits per prior (sigmoid heads: ``K``
            foreground classes, no background column).
        teacher_boxes: ``(N, P, 4)`` teacher boxes decoded to ``x1, y1, x2, y2`` pixels.
        gt_boxes: ``N`` tensors ``(M_i, 4)`` of GT boxes in pixels of the input tensor, or a padded
            ``(N, M, 4)`` tensor.
        gt_labels: ``N`` tensors ``(M_i,)`` of class indices in ``[0, K)``, one per box, or a padded
            ``(N, M)`` tensor.
        xi: the IoU exponent :math:`\xi` (official: 0.8 for the classification map, 0.6 for the
            regression map).
        topk: candidates per GT :math:`k` (official: 9 for ATSS, 30 for GFL/FCOS/AutoAssign/DDOD);
            clipped to ``P``.
        low_bound: weights below it become 0 (official 0).
        jitter: half-width of the uniform jitter added to the candidate centres before fitting
            the Gaussian (official 0.05 pixels); 0 disables it.
        noise: optional explicit ``(N, M, k, 2)`` jitter (overrides ``jitter``), for reproducible runs.
        rng: random generator for the jitter.
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
        ...                            [torch.tensor([1])], topk=5, rng=torch.Generator().manual_seed(0))
        >>> w.shape, int((w > 0).sum()) <= 5
        (torch.Size([1, 48]), True)

    Notes:
        Ignored GT boxes (``ignore_iof_thr``) are not supported; every official config disables them.
    """
    _check_priors(priors)
    check_shape(teacher_cls_logits, "teacher_cls_logits", "N P K")
    check_shape(teacher_boxes, "teacher_boxes", "N P 4")
    check_unit_interval(xi, "xi")
    n, p = teacher_cls_logits.shape[:2]
    if not _tracing() and (teacher_boxes.shape[:2] != (n, p) or priors.shape[0] != p):
        raise ValueError(
            f"teacher_cls_logits {tuple(teacher_cls_logits.shape)}, teacher_boxes {tuple(teacher_boxes.shape)} and "
            f"priors {tuple(priors.shape)} must cover the same N images and P priors"
        )
    check_boxes(gt_boxes, teacher_cls_logits.shape[0])
    logits = upcast(teacher_cls_logits.detach())
    pred = upcast(teacher_boxes.detach())
    num_classes = logits.shape[2]
    boxes, valid = pad_boxes(gt_boxes)
    boxes = boxes.to(pred.dtype)
    m = boxes.shape[1]
    labels = pad_box_values(gt_labels, valid, name="gt_labels", num_classes=num_classes).to(logits.device)
    centres = _prior_centres(upcast(priors), False)

    score = torch.sigmoid(logits.gather(2, labels[:, None, :].expand(n, p, m)))
    quality = score.pow(1 - xi) * _pairwise_iou(pred, boxes).pow(xi)  # (N, P, M)
    k = min(topk, p)
    idx = quality.topk(k, dim=1).indices  # (N, k, M)
    cand = centres[idx].permute(0, 2, 1, 3)  # (N, M, k, 2)
    if k > 1:
        if noise is None:
            noise = (torch.rand(cand.shape, generator=rng, device=cand.device, dtype=cand.dtype) - 0.5) * (2 * jitter)
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
    inside = _inside(test_centres, boxes[:, :, None], valid[:, :, None])
    cand_w = torch.where(inside, cand_w, torch.zeros_like(cand_w))
    best = quality.new_zeros((n, p))
    best = best.scatter_reduce(1, idx.transpose(1, 2).reshape(n, -1), cand_w.reshape(n, -1), "amax")
    return torch.where(best < low_bound, torch.zeros_like(best), best)


def _inside(centres: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
    """Centres ``(..., 2)`` strictly inside boxes ``(..., 4)`` (official margin), broadcast; False unless ``valid``."""
    cx, cy = centres[..., 0], centres[..., 1]
    x1, y1, x2, y2 = boxes.unbind(-1)
    inside = ((cx - x1) > _INSIDE_MARGIN) & ((cy - y1) > _INSIDE_MARGIN)
    inside = inside & ((x2 - cx) > _INSIDE_MARGIN) & ((y2 - cy) > _INSIDE_MARGIN)
    return inside & valid


@torch.no_grad()
def pgd_background_weights(
    priors: Tensor, gt_boxes: Sequence[Tensor] | Tensor, *, swap_point_axes: bool = False
) -> Tensor:
    """``(N, P)`` background map: 1 where a prior's centre lies strictly inside no GT box, else 0.

    Priors and boxes as in :func:`pgd_prediction_weights`. Official ``get_back_weight`` /
    ``get_back_weight_anchorfree`` (ChenhongyiYang/PGD@81c54d5, ``background_weight.py``);
    ``swap_point_axes`` reproduces the latter's (y, x) reading of points.

    Example:
        >>> import torch
        >>> points = torch.tensor([[5.0, 5.0], [50.0, 5.0]])
        >>> pgd_background_weights(points, [torch.tensor([[0.0, 0.0, 10.0, 10.0]])])
        tensor([[0., 1.]])
    """
    _check_priors(priors)
    check_boxes(gt_boxes, len(gt_boxes))
    boxes, valid = pad_boxes(gt_boxes)
    centres = _prior_centres(upcast(priors), swap_point_axes)
    inside = _inside(centres[None, :, None], boxes.to(centres.dtype)[:, None], valid[:, None])  # (N, P, M)
    return (~inside.any(dim=2)).to(centres.dtype)


def pgd_split_levels(weights: Tensor, feature_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Cut ``(N, P)`` per-prior maps into per-level ``(N, H, W)`` maps (priors level by level, row-major).

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


def _level_map(x: Tensor, name: str, features: Tensor) -> Tensor:
    """An ``(N, H, W)`` (or ``(N, 1, H, W)``) map matching ``features``, detached, in their compute dtype."""
    if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    check_shape(x, name, "N H W", floating=False)
    if not _tracing() and x.shape != (features.shape[0], *features.shape[2:]):
        raise ValueError(f"{name} must be (N, H, W) or (N, 1, H, W) matching the features {tuple(features.shape)}, "
                         f"got {tuple(x.shape)}")
    return x.detach().to(compute_dtype(features))


def _attentions(x: Tensor, spatial_temperature: float, channel_temperature: float) -> tuple[Tensor, Tensor]:
    """Spatial ``(N, H, W)`` (as :func:`kdimpl.attention.spatial_attention`) and per-pixel channel attention."""
    n, c, h, w = x.shape
    magnitude = x.abs()
    spatial = (h * w) * F.softmax(magnitude.mean(dim=1).reshape(n, h * w) / spatial_temperature, dim=1).reshape(n, h, w)
    return spatial, c * F.softmax(magnitude / channel_temperature, dim=1)


def pgd_cls_loss(
    student: Tensor,
    teacher: Tensor,
    fg_map: Tensor,
    bg_map: Tensor,
    *,
    spatial_temperature: float = 0.8,
    channel_temperature: float = 0.8,
    fg_weight: float = 0.08,
    bg_weight: float = 0.04,
    attention_weight: float = 8e-4,
    mix_batch_masks: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""PGD classification-branch feature distillation on one level (``PGDClsLoss``).

    With the teacher's spatial attention :math:`A^S` (softmax over positions of the channel-mean
    :math:`|F^T|`, temperature :math:`T_s`, times :math:`HW`) and per-pixel channel attention
    :math:`A^C = C\,\mathrm{softmax}_c(|F^T| / T_c)`, the key-region map :math:`I` normalised by
    its count of non-zero cells per image, :math:`M^{fg} = I / |\{I \ne 0\}|`, and the background
    map likewise:

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_n \Big[\alpha \sum_{c,h,w} M^{fg}_{hw} A^S_{hw} A^C_{chw}
            (F^S - F^T)^2_{chw} + \beta \sum_{c,h,w} M^{bg}_{hw} A^S_{hw} A^C_{chw} (F^S - F^T)^2_{chw}
            + \delta \Big(\frac{1}{HW}\sum_{c,h,w} |A^C(F^S) - A^C(F^T)| + \sum_{h,w} |A^S(F^S) - A^S(F^T)|\Big)\Big]

    Args:
        student: student features of the first classification-tower conv.
        teacher: teacher features of the same shape (detached inside).
        fg_map: key-predictive-region weights :math:`I^{cls}` of this level
            (:func:`pgd_prediction_weights` with ``xi=0.8``, then :func:`pgd_split_levels`).
        bg_map: background map of this level (:func:`pgd_background_weights`, then :func:`pgd_split_levels`).
        spatial_temperature: :math:`T_s` (official 0.8; 0.4 for AutoAssign).
        channel_temperature: :math:`T_c` (official 0.8; 0.4 for AutoAssign).
        fg_weight: :math:`\alpha`, the foreground feature weight (official 0.08 for ATSS/DDOD, 0.04 for FCOS/GFL).
        bg_weight: :math:`\beta`, the background feature weight (official :math:`\alpha / 2`).
        attention_weight: :math:`\delta`, the attention-imitation weight (official 8e-4).
        mix_batch_masks: reproduce the official broadcasting, where the ``(N, 1, 1, H, W)`` masks meet
            ``(N, C, H, W)`` features so that every image is weighted by the masks of all images
            summed over the batch. Off by default (each image uses its own masks, as the paper states).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over the
            ``N`` images of the per-image losses in the brackets (the maps are already normalised by
            their non-zero counts), which is also the element mean of the ``'none'`` output;
            ``'sum'`` sums them; ``'none'`` returns the ``(N,)`` per-image losses.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`; fg_map, bg_map: :math:`(N, H, W)` or :math:`(N, 1, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss of this level, in the dtype of ``student``.

    Reference:
        Chenhongyi Yang, Mateusz Ochal, Amos Storkey, Elliot J. Crowley. "Prediction-Guided
        Distillation for Dense Object Detection". ECCV 2022. arXiv:2203.05469.
        Official code: ChenhongyiYang/PGD@81c54d5 (``mmdet/distillation/losses/pgd_cls.py``, ``PGDClsLoss``).

    Example:
        >>> import torch
        >>> from kdimpl import multilevel_loss
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> fg = torch.zeros(2, 6, 10); fg[:, 2:4, 3:6] = 0.5
        >>> pgd_cls_loss(s, t, fg, (fg == 0).float()).shape
        torch.Size([])
        >>> students, teachers = [s, s[..., ::2, ::2]], [t, t[..., ::2, ::2]]
        >>> fg_maps, bg_maps = [fg, fg[..., ::2, ::2]], [(fg == 0).float(), (fg[..., ::2, ::2] == 0).float()]
        >>> multilevel_loss(pgd_cls_loss, students, teachers, fg_maps, bg_maps).shape
        torch.Size([])

    Notes:
        The official ``loss_weight`` (per-level 1.0, 1.25, ..., 2.0 for P3-P7) scales only the
        feature terms: pass ``fg_weight`` and ``bg_weight`` times it (one module per level in
        :class:`kdimpl.MultiLevelLoss`). The module's ``loss_weight`` scales everything. The
        official code weights ``sqrt(mask * attention) * (S - T)`` and squares it; the result is
        the same up to rounding.
    """
    check_feature_pair(student, teacher)
    check_options(
        spatial_temperature=spatial_temperature, channel_temperature=channel_temperature, fg_weight=fg_weight,
        bg_weight=bg_weight, attention_weight=attention_weight, reduction=reduction,
    )
    s = upcast(student)
    t = upcast(teacher.detach())
    h, w = s.shape[2:]
    fg = _level_map(fg_map, "fg_map", s)
    bg = _level_map(bg_map, "bg_map", s)
    fg = fg / (fg != 0).sum(dim=(1, 2), keepdim=True).clamp(min=1)
    bg = bg / (bg != 0).sum(dim=(1, 2), keepdim=True).clamp(min=1)
    if mix_batch_masks:
        fg = fg.sum(dim=0, keepdim=True)
        bg = bg.sum(dim=0, keepdim=True)

    spatial_t, channel_t = _attentions(t, spatial_temperature, channel_temperature)
    spatial_s, channel_s = _attentions(s, spatial_temperature, channel_temperature)
    error = ((s - t).square() * channel_t).sum(dim=1) * spatial_t  # (N, H, W)
    feature = (fg_weight * fg + bg_weight * bg) * error

    channel_gap = (channel_s - channel_t).abs().sum(dim=(1, 2, 3)) / (h * w)
    spatial_gap = (spatial_s - spatial_t).abs().sum(dim=(1, 2))
    per_image = feature.sum(dim=(1, 2)) + attention_weight * (channel_gap + spatial_gap)
    return reduce_loss(per_image, reduction).to(student.dtype)


def pgd_reg_loss(
    student: Tensor,
    teacher: Tensor,
    fg_map: Tensor,
    *,
    temperature: float = 0.8,
    fg_weight: float = 0.128,
    attention_weight: float = 8e-4,
    max_positions: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""PGD regression-branch feature distillation on one level (``PGDRegLoss``).

    Over the set :math:`P` of positions with non-zero key-region weight :math:`I^{reg}`, with the
    per-pixel channel attention :math:`A^C(f) = C\,\mathrm{softmax}_c(|f| / T)`:

    .. math::
        \mathcal{L} = \frac{1}{|P|} \sum_{p \in P} \Big[\gamma\, I^{reg}_p \frac{1}{C} \sum_c
            A^C(F^T)_{pc} (F^S_{pc} - F^T_{pc})^2 + \delta \sum_c |A^C(F^S)_{pc} - A^C(F^T)_{pc}|\Big]

    and 0 (still in the autograd graph) when :math:`P` is empty.

    Args:
        student: student features of the first regression-tower conv.
        teacher: teacher features of the same shape (detached inside).
        fg_map: key-predictive-region weights :math:`I^{reg}` of this level
            (:func:`pgd_prediction_weights` with ``xi=0.6``, then :func:`pgd_split_levels`).
        temperature: the channel temperature :math:`T` (official 0.8; 0.4 for AutoAssign).
        fg_weight: :math:`\gamma`, the feature weight (official :math:`1.6 \alpha`, e.g. 0.128).
        attention_weight: :math:`\delta`, the attention-imitation weight (official 8e-4).
        max_positions: a bound on :math:`|P|` per image, for ``torch.compile``: the compiled loss then
            gathers that many positions per image (static shapes) instead of computing every
            position. A safe bound is (boxes per image) x ``topk`` of :func:`pgd_prediction_weights`.
            Eager runs gather exactly :math:`P` without it, and refuse a bound that an image exceeds.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum divided by
            :math:`|P|` over the batch (the official code's), not the element mean of the ``'none'``
            output, which counts the zeros outside :math:`P`; use ``'none'`` and
            ``.sum() / (fg_map != 0).sum()`` to rebuild it. ``'sum'`` sums; ``'none'`` returns the
            ``(N, H, W)`` per-position terms in the brackets (0 outside :math:`P`).

    Shape:
        - student, teacher: :math:`(N, C, H, W)`; fg_map: :math:`(N, H, W)` or :math:`(N, 1, H, W)`
        - output: scalar, or :math:`(N, H, W)` with ``reduction='none'``

    Returns:
        The loss of this level, in the dtype of ``student``.

    Reference:
        Chenhongyi Yang, Mateusz Ochal, Amos Storkey, Elliot J. Crowley. "Prediction-Guided
        Distillation for Dense Object Detection". ECCV 2022. arXiv:2203.05469.
        Official code: ChenhongyiYang/PGD@81c54d5 (``mmdet/distillation/losses/pgd_reg.py``, ``PGDRegLoss``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> fg = torch.zeros(2, 6, 10); fg[0, 2:4, 3:6] = 0.5
        >>> pgd_reg_loss(s, t, fg).shape
        torch.Size([])

    Notes:
        Positions outside :math:`P` do not enter the loss, but as everywhere in kdimpl a NaN or inf
        anywhere in the features gives a NaN loss (as the dense form does).

        Under ``DistributedDataParallel`` each process divides by its own number of selected positions;
        inside :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_feature_pair(student, teacher)
    check_options(temperature=temperature, fg_weight=fg_weight, attention_weight=attention_weight, reduction=reduction)
    if max_positions is not None and not _tracing() and not (isinstance(max_positions, int) and max_positions > 0):
        raise ValueError(f"max_positions must be a positive int, got {max_positions!r}")
    w = _level_map(fg_map, "fg_map", student)
    positive = w != 0
    count = positive.sum()
    dense = reduction == "none" or (torch.compiler.is_compiling() and max_positions is None)
    # Benchmark (benchmarks.losses pgd_reg, five levels, CPU, one thread): gathering P first is 22x faster
    # eager fwd+bwd than the dense form (442 vs 9695 ms, 68% less peak memory) and, compiled with
    # max_positions=180, 8.2x faster (411 vs 3366 ms); compiled without max_positions, the dense form runs.
    terms = _reg_dense if dense else _reg_gathered
    options = (temperature, fg_weight, attention_weight)
    per_position = terms(student, teacher.detach(), w, positive, max_positions, *options)
    return reduce_loss(per_position, reduction, avg_factor=count).to(student.dtype)


def _reg_terms(s: Tensor, t: Tensor, w: Tensor, temperature: float, fg_weight: float, attention_weight: float):
    """Per-position ``gamma * w * mean_c(A_T (S - T)^2) + delta * sum_c |A_S - A_T|`` (channels on dim 1)."""
    channels = s.shape[1]
    channel_t = channels * F.softmax(t.abs() / temperature, dim=1)
    channel_s = channels * F.softmax(s.abs() / temperature, dim=1)
    feature = ((s - t).square() * channel_t).mean(dim=1) * w
    gap = (channel_s - channel_t).abs().sum(dim=1)
    return fg_weight * feature + attention_weight * gap


def _reg_dense(student, teacher, w, positive, max_positions, temperature, fg_weight, attention_weight) -> Tensor:
    """Reference form: the bracket at every position, zero outside P."""
    terms = _reg_terms(upcast(student), upcast(teacher), w, temperature, fg_weight, attention_weight)
    return terms * positive.to(terms.dtype)


def _reg_gathered(student, teacher, w, positive, max_positions, temperature, fg_weight, attention_weight) -> Tensor:
    """Fast form: gather ``k`` positions per image (every position of P first), compute the bracket there only."""
    n, c = student.shape[:2]
    w_flat = w.flatten(1)
    counts = positive.flatten(1).sum(dim=1)
    if max_positions is None:
        k = int(counts.max()) if n else 0  # a host sync, as the official code's nonzero()
    else:
        if value_checks_enabled() and n and int(counts.max()) > max_positions:
            raise ValueError(
                f"fg_map has {int(counts.max())} non-zero cells in one image, more than max_positions={max_positions}"
            )
        k = max_positions
    index = w_flat.abs().topk(min(k, w_flat.shape[1]), dim=1).indices  # (N, k): P first
    gather = index[:, None, :].expand(n, c, index.shape[1])
    s_k = upcast(student.flatten(2).gather(2, gather))
    t_k = upcast(teacher.flatten(2).gather(2, gather))
    w_k = w_flat.gather(1, index)
    terms = _reg_terms(s_k, t_k, w_k, temperature, fg_weight, attention_weight) * (w_k != 0).to(w_k.dtype)
    # positions outside P are not read; a NaN or inf there must still give NaN, as in the dense form
    dtype = terms.dtype
    guard = (student.detach().sum(dtype=dtype) + teacher.sum(dtype=dtype)) * 0
    return torch.cat([terms.flatten(), guard[None]])


@register_loss("pgd_cls", function=pgd_cls_loss)
class PGDClsLoss(LossModule):
    """Module twin of :func:`pgd_cls_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        spatial_temperature: float = 0.8,
        channel_temperature: float = 0.8,
        fg_weight: float = 0.08,
        bg_weight: float = 0.04,
        attention_weight: float = 8e-4,
        mix_batch_masks: bool = False,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            spatial_temperature=spatial_temperature, channel_temperature=channel_temperature, fg_weight=fg_weight,
            bg_weight=bg_weight, attention_weight=attention_weight, mix_batch_masks=mix_batch_masks,
            reduction=reduction, loss_weight=loss_weight,
        )


@register_loss("pgd_reg", function=pgd_reg_loss, distributed="count")
class PGDRegLoss(LossModule):
    """Module twin of :func:`pgd_reg_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        temperature: float = 0.8,
        fg_weight: float = 0.128,
        attention_weight: float = 8e-4,
        max_positions: int | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            temperature=temperature, fg_weight=fg_weight, attention_weight=attention_weight,
            max_positions=max_positions, reduction=reduction, loss_weight=loss_weight,
        )
