r"""DetKDS: knowledge distillation search for object detectors, Li et al., ICML 2024.

DetKDS searches, per detector pair, a distiller built from a small vocabulary of primitives: an
input branch (global feature, foreground/background-masked feature, instance (RoI) feature,
classification logits), three cascaded transforms :math:`\tau_1` (attention or masking),
:math:`\tau_2` (scale or locality), :math:`\tau_3` (normalisation or reshaping), a distance
:math:`D` and a weight :math:`\gamma`:

.. math::
    \mathcal{L} = \gamma \cdot \operatorname{mean} D\big(\tau_3\tau_2\tau_1(X^S),\;
        \tau_3\tau_2\tau_1(X^T)\big)

Every primitive here is a plain function named by the official search-space key
(:data:`DETKDS_SEARCH_SPACE`): :func:`detkds_transform` and :func:`detkds_distance` dispatch on
those keys, :func:`detkds_loss` composes them per branch, and :data:`DETKDS_PRESETS` holds the
searched distillers of the official configs.

Reference:
    Lujun Li, Yufan Bao, Peijie Dong, Chuanguang Yang, Anggeng Li, Wenhan Luo, Qifeng Liu, Wei Xue,
    Yike Guo. "DetKDS: Knowledge Distillation Search for Object Detectors". ICML 2024 (PMLR 235),
    no arXiv version. Official code: lliai/DetKDS@a7d2127 (primitives in
    ``mmdet/distillation/losses/operations.py``, branches in ``auto_detkd.py::FeatureLoss``,
    searched configs in ``configs/distillers/detkds/``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_boxes, check_feature_pair, check_image_size, check_options, check_shape
from .._dtypes import upcast
from .._registry import register_loss
from ..adapters.channel import ChannelAdapter
from ..masks import pad_boxes, scale_boxes_to_feature
from .fgd import fgd_masks
from .mgd import mgd_random_mask

__all__ = [
    "DETKDS_PRESETS",
    "DETKDS_SEARCH_SPACE",
    "detkds_batch_attention",
    "detkds_channel_attention",
    "detkds_correlation_distance",
    "detkds_distance",
    "detkds_local_patches",
    "detkds_max_pool",
    "detkds_pearson_distance",
    "detkds_roi_align",
    "detkds_spatial_attention",
    "detkds_transform",
]

#: The official search space: keys of ``_TRANS_FUNC1/2/3`` and ``_DIS_FUNC`` (``'no'`` = identity).
DETKDS_SEARCH_SPACE: dict[str, tuple[str, ...]] = {
    "attention": ("no", "satt", "natt", "catt", "mask"),
    "locality": ("no", "scale_r1", "scale_r2", "multi_scale_r4", "local_s1", "local_s2", "local_s4", "scale"),
    "normalization": (
        "no", "batch", "channel", "norm_HW", "norm_C", "norm_N", "softmax_N", "softmax_C", "softmax_HW",
        "logsoftmax_N", "logsoftmax_C", "logsoftmax_HW", "min_max_normalize", "batchnorm",
    ),
    "distance": ("l1", "l2", "kl", "smooth_l1", "cos", "pear", "cor"),
}

_CATT_POOL_NORM = ("catt", "scale_r2", "norm_N", "l1")

#: The searched distillers of the official configs (per FPN level; teacher -> student, all 256 channels).
DETKDS_PRESETS: dict[str, dict] = {
    "retinanet_r101_r50": dict(global_chain=_CATT_POOL_NORM, global_weight=6.0,
                               fbg_chain=("no", "local_s4", "norm_HW", "l1"), fbg_weight=2.0),
    "retinanet_x101_r50": dict(global_chain=None, instance_chain=("catt", "scale_r1", "norm_C", "l1"),
                               instance_weight=50.0),
    "fcos_r101_r50": dict(global_chain=_CATT_POOL_NORM, global_weight=5.0,
                          fbg_chain=("mask", "scale_r1", "norm_C", "l1"), fbg_weight=2.0),
    "gfl_r101_r50": dict(global_chain=_CATT_POOL_NORM, global_weight=10.0),
    "reppoints_x101_r50": dict(global_chain=_CATT_POOL_NORM, global_weight=10.0),
    "faster_rcnn_r101_r50": dict(global_chain=_CATT_POOL_NORM, global_weight=2.0,
                                 fbg_chain=("mask", "no", "norm_C", "l1"), fbg_weight=2.0,
                                 instance_chain=("mask", "scale_r1", "norm_C", "pear"), instance_weight=0.1),
}


# --------------------------------------------------------------------------------------------- tau_1
def detkds_spatial_attention(x: Tensor, temperature: float = 0.5) -> Tensor:
    r"""``satt``: reweight positions by :math:`\sqrt{HW \operatorname{softmax}_{HW}(\overline{|x|}^C / T)}`.

    Example:
        >>> import torch
        >>> x = torch.full((1, 2, 3, 3), 0.7)
        >>> torch.allclose(detkds_spatial_attention(x), x)  # uniform attention keeps the map
        True
    """
    n, _, h, w = x.shape
    # sqrt(softmax) as exp(log_softmax / 2): the same value, and a finite gradient where the softmax underflows
    root = (0.5 * F.log_softmax((x.abs().mean(dim=1) / temperature).reshape(n, h * w), dim=1)).exp()
    return x * (math.sqrt(h * w) * root).reshape(n, 1, h, w)


def detkds_channel_attention(x: Tensor, temperature: float = 0.5) -> Tensor:
    r"""``catt``: reweight channels by :math:`\sqrt{C \operatorname{softmax}_C(\overline{|x|}^{HW} / T)}`.

    Example:
        >>> import torch
        >>> detkds_channel_attention(torch.randn(2, 4, 3, 5)).shape
        torch.Size([2, 4, 3, 5])
    """
    c = x.shape[1]
    root = (0.5 * F.log_softmax(x.abs().mean(dim=(2, 3)) / temperature, dim=1)).exp()
    return x * (math.sqrt(c) * root)[:, :, None, None]


def detkds_batch_attention(x: Tensor, temperature: float = 0.5) -> Tensor:
    r"""``natt``: :math:`N \operatorname{softmax}_N(x / T)`, a softmax over the images of the batch.

    Example:
        >>> import torch
        >>> float(detkds_batch_attention(torch.zeros(4, 1, 1, 1)).sum())
        4.0
    """
    return x.shape[0] * F.softmax(x / temperature, dim=0)


# --------------------------------------------------------------------------------------------- tau_2
def detkds_max_pool(x: Tensor, ratio: int) -> Tensor:
    """``scale_r1`` / ``scale_r2`` / ``multi_scale_r4``: ``ratio x ratio`` max pooling after zero padding.

    The map is padded with zeros on the right and bottom to a multiple of ``ratio`` first, so a
    window at the border takes the maximum with 0 (the official padding).

    Example:
        >>> import torch
        >>> detkds_max_pool(-torch.ones(1, 1, 3, 3), 2)[0, 0]
        tensor([[-1.,  0.],
                [ 0.,  0.]])
    """
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % ratio, 0, -h % ratio))
    return F.max_pool2d(x, ratio, ratio) if ratio > 1 else x


def detkds_local_patches(x: Tensor, size: int) -> Tensor:
    r"""``local_s1`` / ``local_s2`` / ``local_s4``: cut the map into ``size x size`` patches moved to channels.

    ``(N, C, H, W)`` becomes ``(N, C h w, size, size)`` with :math:`h = \lceil H / size \rceil`,
    :math:`w = \lceil W / size \rceil` (zero padding on the right and bottom), patches ordered
    channel, then patch row, then patch column.

    Example:
        >>> import torch
        >>> detkds_local_patches(torch.randn(2, 3, 5, 8), 4).shape
        torch.Size([2, 12, 4, 4])
    """
    n, c, h, w = x.shape
    x = F.pad(x, (0, -w % size, 0, -h % size))
    rows, cols = x.shape[2] // size, x.shape[3] // size
    x = x.reshape(n, c, rows, size, cols, size).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(n, c * rows * cols, size, size)


# ------------------------------------------------------------------------------------------- tau_1-3
def _l2_normalize(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``F.normalize(x, dim=dims)`` (``eps`` 1e-12) written out: torch's ``vector_norm`` over the batch axis
    measured 6x slower on CPU (6.8 s vs 1.1 s on a (2, 256, 200, 336) map), the sum of squares is not."""
    return x / x.square().sum(dim=dims, keepdim=True).clamp_min(1e-24).sqrt()


def _over_positions(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` over the last axis of ``(N, C, HW)`` (4-D maps flattened); 2-D inputs unchanged."""
    if x.dim() == 2:
        return x
    return fn(x.flatten(2) if x.dim() == 4 else x)


def detkds_transform(
    x: Tensor,
    name: str,
    *,
    temperature: float = 0.5,
    mask_ratio: float = 0.65,
    rng: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Apply the search-space transform ``name`` (any key of :data:`DETKDS_SEARCH_SPACE` but distances).

    Attention (:math:`\tau_1`, on :math:`(N, C, H, W)` maps): ``satt``
    (:func:`detkds_spatial_attention`), ``catt`` (:func:`detkds_channel_attention`), ``natt``
    (:func:`detkds_batch_attention`), ``mask`` (zero whole positions with probability
    ``mask_ratio``, :func:`kdimpl.mgd_random_mask`). Locality (:math:`\tau_2`, on maps):
    ``scale_r1|r2``, ``multi_scale_r4`` (:func:`detkds_max_pool`), ``local_s1|s2|s4``
    (:func:`detkds_local_patches`), ``scale`` (:math:`(x + 1) / 2`). Normalisation
    (:math:`\tau_3`, on 2-, 3- or 4-D tensors): ``batch`` (flatten to :math:`(N, -1)`),
    ``channel`` (4-D to :math:`(N, C, HW)`), ``norm_HW|C|N`` (L2 normalisation over positions,
    channels or images), ``softmax_N|C|HW`` and ``logsoftmax_N|C|HW``, ``min_max_normalize``
    (:math:`(x - \min x) / (\max x - \min x + 10^{-9})` over the whole tensor), ``batchnorm``
    (standardise each channel over the batch and positions with the batch statistics,
    :math:`\epsilon = 10^{-5}`, no affine part: a freshly built BatchNorm in training mode).
    ``no`` returns ``x``.

    Args:
        x: the tensor to transform.
        name: the search-space key.
        temperature: :math:`T` of ``satt``, ``catt`` and ``natt`` (official: 0.5).
        mask_ratio: drop probability of ``mask`` (official: 0.65).
        rng: ``torch.Generator`` for ``mask``; a CPU generator seeded with ``s`` reproduces the
            official draw after ``torch.manual_seed(s)``.
        mask: an explicit :math:`(N, 1, H, W)` keep-mask for ``mask`` instead of a random one.

    Returns:
        The transformed tensor.

    Example:
        >>> import torch
        >>> detkds_transform(torch.randn(2, 4, 6, 6), "scale_r2").shape
        torch.Size([2, 4, 3, 3])
    """
    if name == "no":
        return x
    if name in DETKDS_SEARCH_SPACE["attention"] or name in DETKDS_SEARCH_SPACE["locality"]:
        check_shape(x, "x", "N C H W")
    if name == "satt":
        return detkds_spatial_attention(x, temperature)
    if name == "catt":
        return detkds_channel_attention(x, temperature)
    if name == "natt":
        return detkds_batch_attention(x, temperature)
    if name == "mask":
        keep = mgd_random_mask(x, mask_ratio, rng=rng) if mask is None else mask.to(x.dtype)
        return x * keep
    if name in ("scale_r1", "scale_r2", "multi_scale_r4"):
        return detkds_max_pool(x, int(name[-1]))
    if name in ("local_s1", "local_s2", "local_s4"):
        return detkds_local_patches(x, int(name[-1]))
    if name == "scale":
        return (x + 1.0) / 2.0
    if name == "batch":
        return x.flatten(1)
    if name == "channel":
        return x.flatten(2) if x.dim() == 4 else x
    if name == "norm_HW":
        return _l2_normalize(x, tuple(range(2, x.dim()))) if x.dim() > 2 else x
    if name in ("norm_C", "norm_N"):
        return _l2_normalize(x, (1,) if name == "norm_C" else (0,))
    if name in ("softmax_N", "softmax_C", "logsoftmax_N", "logsoftmax_C"):
        dim = 0 if name.endswith("_N") else 1
        return F.log_softmax(x, dim=dim) if name.startswith("log") else F.softmax(x, dim=dim)
    if name in ("softmax_HW", "logsoftmax_HW"):
        fn = F.log_softmax if name.startswith("log") else F.softmax
        return _over_positions(x, lambda v: fn(v, dim=2))
    if name == "min_max_normalize":
        if x.numel() == 0:
            return x
        low, high = x.min(), x.max()
        return (x - low) / (high - low + 1e-9)
    if name == "batchnorm":
        return F.batch_norm(x, None, None, training=True, eps=1e-5) if x.numel() else x
    raise ValueError(f"unknown DetKDS transform {name!r}; the search space: {DETKDS_SEARCH_SPACE}")


# ------------------------------------------------------------------------------------------- D
def detkds_pearson_distance(student: Tensor, teacher: Tensor) -> Tensor:
    r"""``pear``: :math:`1 - \rho` per row, the Pearson correlation over axis 1 (``eps`` 1e-8 in the denominator).

    Example:
        >>> import torch
        >>> x = torch.randn(3, 5)
        >>> detkds_pearson_distance(x, 2 * x + 1).abs().max() < 1e-6
        tensor(True)
    """
    s = student - student.mean(dim=1, keepdim=True)
    t = teacher - teacher.mean(dim=1, keepdim=True)
    return 1 - (s * t).sum(dim=1) / (s.norm(dim=1) * t.norm(dim=1) + 1e-8)


def detkds_correlation_distance(student: Tensor, teacher: Tensor) -> Tensor:
    r"""``cor``: :math:`\log_2 \sum_x \big(|c_x - 1|^2\big)^{1.01}` of the batch correlation of standardised features.

    Each feature :math:`x` (everything but the batch axis) is standardised over the batch
    (unbiased standard deviation) and :math:`c_x = \frac{1}{N}\sum_n \hat s_{n,x} \hat t_{n,x}`.
    Needs at least two images.

    Example:
        >>> import torch
        >>> detkds_correlation_distance(torch.randn(4, 3), torch.randn(4, 3)).shape
        torch.Size([])
    """
    n = student.shape[0]
    s = ((student - student.mean(dim=0)) / student.std(dim=0)).reshape(n, -1)
    t = ((teacher - teacher.mean(dim=0)) / teacher.std(dim=0)).reshape(n, -1)
    c = (s * t).sum(dim=0) / n
    return torch.log2((c - 1).abs().pow(2.0).pow(1.01).sum())


def detkds_distance(student: Tensor, teacher: Tensor, name: str) -> Tensor:
    """The search-space distance ``name`` between transformed student and teacher tensors.

    ``l1``, ``l2``, ``smooth_l1`` (:math:`\\beta = 1`) and ``kl`` (``F.kl_div(student,
    teacher)``: the student must be log-probabilities, the teacher probabilities) are
    elementwise; ``cos`` is the cosine *similarity* over axis 1 (as in the official search
    space, minimising it pushes the two apart), ``pear`` is :func:`detkds_pearson_distance`
    (per row), ``cor`` is :func:`detkds_correlation_distance` (a scalar).

    Example:
        >>> import torch
        >>> detkds_distance(torch.zeros(2, 3), torch.ones(2, 3), "l2").sum()
        tensor(6.)
    """
    if name == "l1":
        return (student - teacher).abs()
    if name == "l2":
        return (student - teacher).square()
    if name == "smooth_l1":
        return F.smooth_l1_loss(student, teacher, reduction="none", beta=1.0)
    if name == "kl":
        return F.kl_div(student, teacher, reduction="none")
    if name == "cos":
        return F.cosine_similarity(student, teacher, dim=1, eps=1e-8)
    if name == "pear":
        return detkds_pearson_distance(student, teacher)
    if name == "cor":
        return detkds_correlation_distance(student, teacher)
    raise ValueError(f"unknown DetKDS distance {name!r}; one of {DETKDS_SEARCH_SPACE['distance']}")


# ------------------------------------------------------------------------------------------- RoIs
def _roi_axis_weights(start: Tensor, end: Tensor, length: int, bins: int, samples: int) -> Tensor:
    """``(N, M, bins, length)`` bilinear RoIAlign weights along one axis (torchvision, ``aligned=False``)."""
    size = (end - start).clamp(min=1.0)
    bin_size = size / bins
    count = torch.ceil(bin_size).clamp(1.0, float(samples))  # adaptive sampling (sampling_ratio <= 0)
    steps = torch.arange(samples, dtype=start.dtype, device=start.device)
    index = torch.arange(bins, dtype=start.dtype, device=start.device)
    # sample positions (N, M, bins, samples)
    pos = (start[..., None, None] + index[:, None] * bin_size[..., None, None]
           + (steps + 0.5) * (bin_size / count)[..., None, None])
    used = (steps < count[..., None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0.0)
    low = pos.floor().clamp(max=length - 1)
    pos = torch.where(low >= length - 1, low, pos)
    high = (low + 1).clamp(max=length - 1)
    frac = pos - low
    cells = torch.arange(length, dtype=start.dtype, device=start.device)
    weight = ((1 - frac)[..., None] * (cells == low[..., None]) + frac[..., None] * (cells == high[..., None]))
    return (weight * (used / count[..., None, None])[..., None]).sum(dim=3)


def detkds_roi_align(features: Tensor, boxes: Tensor, output_size: int = 14) -> Tensor:
    r"""RoIAlign of ``(N, M, 4)`` boxes given in cells of ``features`` (``spatial_scale=1``, ``aligned=False``).

    Equals ``torchvision.ops.roi_align(features, rois, output_size, 1.0, 0, False)`` (adaptive
    sampling: :math:`\lceil \text{box size} / \text{output\_size} \rceil` samples per bin and
    axis), computed as two matrix products with per-box bilinear weight matrices, so memory
    does not grow with the box size. The sample count per bin is capped at
    :math:`\lceil \max(H, W) / \text{output\_size} \rceil`, which only a box longer than the
    map reaches (such a box is sampled less densely than by torchvision).

    Args:
        features: ``(N, C, H, W)`` map.
        boxes: ``(N, M, 4)`` xyxy boxes in cell units of ``features``.
        output_size: bins per side (DetKDS: 14).

    Returns:
        ``(N, M, C, output_size, output_size)``.

    Example:
        >>> import torch
        >>> detkds_roi_align(torch.randn(2, 3, 8, 10), torch.tensor([[[0.0, 0.0, 4.0, 4.0]]] * 2), 2).shape
        torch.Size([2, 1, 3, 2, 2])
    """
    _, _, h, w = features.shape
    # The largest box inside the map needs ceil(side / output_size) samples per bin.
    samples = max(1, math.ceil(max(h, w) / output_size))
    boxes = boxes.to(features.dtype)
    wy = _roi_axis_weights(boxes[..., 1], boxes[..., 3], h, output_size, samples)  # (N, M, k, H)
    wx = _roi_axis_weights(boxes[..., 0], boxes[..., 2], w, output_size, samples)  # (N, M, k, W)
    rows = torch.einsum("nchw,nmxw->nmchx", features, wx)
    return torch.einsum("nmyh,nmchx->nmcyx", wy, rows)


# ------------------------------------------------------------------------------------------- loss
def _chain(student: Tensor, teacher: Tensor, chain: Sequence[str], options: dict) -> tuple[Tensor, Tensor]:
    """``tau_3 tau_2 tau_1`` of student and teacher, each with its own mask unless ``shared_mask``."""
    first, second, third = chain[:3]
    mask = None
    if first == "mask" and options["shared_mask"]:
        mask = mgd_random_mask(student, options["mask_ratio"], rng=options["rng"])
    kwargs = dict(temperature=options["temperature"], mask_ratio=options["mask_ratio"], rng=options["rng"], mask=mask)
    out = []
    for x in (student, teacher):
        for name in (first, second, third):
            x = detkds_transform(x, name, **kwargs)
        out.append(x)
    return out[0], out[1]


def _mean(x: Tensor) -> Tensor:
    return x.sum() / x.numel() if x.numel() else x.sum()


def _check_chain(chain: Sequence[str] | None, name: str) -> None:
    if chain is None:
        return
    if isinstance(chain, str) or len(chain) != 4:
        raise ValueError(f"{name} must be (attention, locality, normalization, distance) names, got {chain!r}")
    for value, stage in zip(chain, ("attention", "locality", "normalization", "distance")):
        if value not in DETKDS_SEARCH_SPACE[stage]:
            raise ValueError(f"{name}: {value!r} is not a DetKDS {stage}; one of {DETKDS_SEARCH_SPACE[stage]}")


def detkds_loss(
    student: Tensor,
    teacher: Tensor,
    gt_boxes: Sequence[Tensor] | Tensor | None = None,
    image_size: Sequence[int] | Tensor | None = None,
    *,
    gt_mask: Tensor | None = None,
    global_chain: Sequence[str] | None = _CATT_POOL_NORM,
    fbg_chain: Sequence[str] | None = None,
    instance_chain: Sequence[str] | None = None,
    global_weight: float = 1.0,
    fbg_weight: float = 1.0,
    instance_weight: float = 1.0,
    adapter_student: Callable[[Tensor], Tensor] | None = None,
    temperature: float = 0.5,
    mask_ratio: float = 0.65,
    shared_mask: bool = False,
    rng: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""A searched DetKDS feature distiller for one FPN level: global, foreground/background and instance branches.

    Each enabled branch applies its chain :math:`(\tau_1, \tau_2, \tau_3, D)` to student and
    teacher and averages the distance (official ``FeatureLoss``):

    .. math::
        \mathcal{L} = \gamma_g\, \overline{D_g}\big(\tau(S), \tau(T)\big)
            + \gamma_f\, \overline{D_f}\big(\tau(S \odot M^{fg}), \tau(T \odot M^{fg})\big)
            + \tfrac{\gamma_f}{2}\, \overline{D_f}\big(\tau(S \odot M^{bg}), \tau(T \odot M^{bg})\big)
            + \gamma_i\, \overline{D_i}\big(\mathrm{RoIAlign}(\tau(S), B),
                \mathrm{RoIAlign}(\tau(T), B)\big)

    with :math:`M^{fg}` FGD's foreground mask (the largest :math:`1/\text{area}` of the boxes
    covering a cell) and :math:`M^{bg}` its normalised background mask (:func:`kdimpl.fgd_masks`),
    and :math:`B` the ground-truth boxes on the level's grid (near edges floored, far edges
    ceiled) pooled to :math:`14 \times 14` (:func:`detkds_roi_align`).

    Args:
        student: student features :math:`S` (teacher's width unless ``adapter_student`` is given).
        teacher: teacher features :math:`T` (detached inside).
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in pixels of the input tensor, or a padded
            ``(N, M, 4)`` tensor; needed by the fg/bg and instance branches.
        image_size: ``(height, width)`` of the input tensor the boxes refer to (or ``(N, 2)``).
        gt_mask: ``(N, M)`` bool, the real rows of a padded ``gt_boxes`` tensor (default: all).
        global_chain: ``(tau_1, tau_2, tau_3, D)`` names of the global branch, ``None`` to skip it.
        fbg_chain: chain of the foreground/background branch (``None``: off).
        instance_chain: chain of the instance branch (``None``: off); its transforms must keep
            a 4-D map.
        global_weight: :math:`\gamma_g` (``gamma_global``).
        fbg_weight: :math:`\gamma_f` (``gamma_fbg``); the background term gets :math:`\gamma_f / 2`.
        instance_weight: :math:`\gamma_i` (``gamma_instances``).
        adapter_student: optional 1x1 ``align`` convolution for a student of another width
            (:class:`kdimpl.ChannelAdapter`).
        temperature: :math:`T` of the ``satt``/``catt``/``natt`` transforms (official: 0.5).
        mask_ratio: drop probability of the ``mask`` transform (official: 0.65).
        shared_mask: draw one ``mask`` per branch for student and teacher; the official code
            draws them independently (``False``).
        rng: ``torch.Generator`` for the ``mask`` transform; draws follow the official order
            (global student, teacher; fg student, teacher; bg student, teacher; instance
            student, teacher).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: each branch's
            distance averaged over its elements (over the real boxes for the instance branch),
            weighted and summed; ``'sum'`` sums the weighted distances; ``'none'`` returns the
            weighted distance elements of the enabled branches, flattened and concatenated
            (global, fg, bg, instance; padding boxes as zeros), whose ``.sum()`` is ``'sum'``.
            The element mean of ``'none'`` is not a DetKDS normalisation.

    Shape:
        - student: :math:`(N, C_s, H, W)`, teacher: :math:`(N, C, H, W)`
        - output: scalar, or 1-D with ``reduction='none'``

    Returns:
        The loss for one feature level, in the dtype of ``student``.

    Reference:
        Lujun Li, Yufan Bao, Peijie Dong, Chuanguang Yang, Anggeng Li, Wenhan Luo, Qifeng Liu, Wei
        Xue, Yike Guo. "DetKDS: Knowledge Distillation Search for Object Detectors". ICML 2024,
        no arXiv version. Official code: lliai/DetKDS@a7d2127
        ``mmdet/distillation/losses/auto_detkd.py::FeatureLoss`` with the primitives of
        ``operations.py``; matched by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 12, 20), torch.randn(2, 8, 12, 20)
        >>> boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.zeros(0, 4)]
        >>> detkds_loss(s, t, boxes, (48, 80), **DETKDS_PRESETS["retinanet_r101_r50"]).shape
        torch.Size([])

    Notes:
        Official quirks kept: the fg/bg branch always uses L1 whatever ``fbg_dis`` says (the
        presets therefore say ``'l1'``); the instance boxes are placed on the grid of the
        *untransformed* map, so a pooling ``tau_2`` shifts them; ``cos`` is a similarity.
        Departures: the attention transforms take the square root of a softmax as
        :math:`\exp(\tfrac12 \log\operatorname{softmax})` (same values; the official
        ``sqrt`` of an underflowed softmax gives NaN gradients on large features); an instance
        branch without any box gives 0 (official: the mean of an empty tensor, NaN); ``tau_1``/``tau_2`` accept only 4-D maps (the official 2-/3-D cases of
        ``catt``/``natt`` concern logits, which the feature branches never see). The presets
        hold the branches each official config enables; the released distillers do not always
        train with all of them: the GFL, RepPoints and Faster R-CNN distillers add only the
        global term, the Faster R-CNN config cannot be built (it passes ``gamma_ins``, which
        ``FeatureLoss`` does not take), and the RetinaNet distiller reads the global and fg/bg
        outputs, so the X101 RetinaNet config (instance branch only) fails on ``None``.

        Under ``DistributedDataParallel`` chains that normalise over the batch (``norm_N``, ``batchnorm``)
        use the statistics of the process's own images only, so no normaliser makes the gradients equal
        those of one process on the union batch (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    check_options(reduction=reduction, temperature=temperature, mask_ratio=mask_ratio, global_weight=global_weight,
                  fbg_weight=fbg_weight, instance_weight=instance_weight)
    for chain, chain_name in ((global_chain, "global_chain"), (fbg_chain, "fbg_chain"), (instance_chain, "instance_chain")):
        _check_chain(chain, chain_name)
    check_shape(student, "student", "N C H W")
    s = upcast(student)
    if adapter_student is not None:
        s = adapter_student(s)
    check_feature_pair(s, teacher)
    t = upcast(teacher.detach())
    n, _, h, w = t.shape
    uses_boxes = fbg_chain is not None or instance_chain is not None
    if uses_boxes:
        if gt_boxes is None or image_size is None:
            raise ValueError("fbg_chain and instance_chain need gt_boxes and image_size")
        check_boxes(gt_boxes, n, mask=gt_mask)
        check_image_size(image_size, n, t)
    options = dict(temperature=temperature, mask_ratio=mask_ratio, rng=rng, shared_mask=shared_mask)
    terms: list[tuple[Tensor, Tensor | int]] = []  # (weighted distance, its element count)

    if global_chain is not None:
        a, b = _chain(s, t, global_chain, options)
        d = global_weight * detkds_distance(a, b, global_chain[3])
        terms.append((d, d.numel()))
    if fbg_chain is not None:
        fg, bg = fgd_masks(gt_boxes, image_size, (h, w), gt_mask)
        fg, bg = fg.to(s.dtype)[:, None], bg.to(s.dtype)[:, None]
        for mask, weight in ((fg, fbg_weight), (bg, fbg_weight / 2)):
            a, b = _chain(s * mask, t * mask, fbg_chain, options)
            d = weight * detkds_distance(a, b, fbg_chain[3])
            terms.append((d, d.numel()))
    if instance_chain is not None:
        boxes, valid = pad_boxes(gt_boxes, gt_mask, batch_size=n)
        scaled = scale_boxes_to_feature(boxes.to(device=s.device, dtype=s.dtype), image_size, (h, w))
        cells = torch.cat([scaled[..., :2].floor(), scaled[..., 2:].ceil()], dim=-1)
        a, b = _chain(s, t, instance_chain, options)
        if a.dim() != 4:
            raise ValueError(f"instance_chain {tuple(instance_chain)} must keep a 4-D map for RoIAlign")
        rois_s, rois_t = (detkds_roi_align(x, cells).flatten(0, 1) for x in (a, b))
        valid = valid.to(s.device).reshape(-1)
        if instance_chain[3] == "cor":  # a batch statistic over the real boxes only
            d = detkds_distance(rois_s[valid], rois_t[valid], "cor").reshape(1)
            count = 1
        else:
            d = detkds_distance(rois_s, rois_t, instance_chain[3])
            d = d * valid.reshape(-1, *([1] * (d.dim() - 1))).to(d.dtype)
            count = valid.sum() * math.prod(d.shape[1:])
        terms.append((instance_weight * d, count))

    if not terms:
        raise ValueError("every branch is off: give global_chain, fbg_chain or instance_chain")
    if reduction == "none":
        return torch.cat([d.reshape(-1) for d, _ in terms]).to(student.dtype)
    if reduction == "sum":
        return sum(d.sum() for d, _ in terms).to(student.dtype)
    total = sum(_mean(d) if isinstance(count, int) else d.sum() / count.clamp(min=1) for d, count in terms)
    return total.to(student.dtype)


@register_loss("detkds", function=detkds_loss, distributed="batch")
class DetKDSLoss(LossModule):
    """Module twin of :func:`detkds_loss`; ``loss_weight`` multiplies the result.

    With ``student_channels`` different from ``teacher_channels`` the loss owns the official
    1x1 ``align`` convolution as ``adapter_student``. :meth:`from_preset` builds a searched
    distiller of :data:`DETKDS_PRESETS`; one loss serves every FPN level
    (``MultiLevelLoss(DetKDSLoss.from_preset(...))``).

    Args:
        student_channels: student width (with ``teacher_channels``, builds ``adapter_student``
            when they differ).
        teacher_channels: teacher width.
    """

    def __init__(
        self,
        *,
        global_chain: Sequence[str] | None = _CATT_POOL_NORM,
        fbg_chain: Sequence[str] | None = None,
        instance_chain: Sequence[str] | None = None,
        global_weight: float = 1.0,
        fbg_weight: float = 1.0,
        instance_weight: float = 1.0,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        temperature: float = 0.5,
        mask_ratio: float = 0.65,
        shared_mask: bool = False,
        rng: torch.Generator | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        pieces = {}
        if student_channels is not None and teacher_channels is not None and student_channels != teacher_channels:
            pieces["adapter_student"] = ChannelAdapter(student_channels, teacher_channels)
        super().__init__(
            global_chain=None if global_chain is None else tuple(global_chain),
            fbg_chain=None if fbg_chain is None else tuple(fbg_chain),
            instance_chain=None if instance_chain is None else tuple(instance_chain),
            global_weight=global_weight, fbg_weight=fbg_weight, instance_weight=instance_weight,
            temperature=temperature, mask_ratio=mask_ratio, shared_mask=shared_mask, rng=rng,
            reduction=reduction, loss_weight=loss_weight, **pieces,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DetKDSLoss:
        """The searched distiller ``name`` of :data:`DETKDS_PRESETS`; ``overrides`` replace its options."""
        if name not in DETKDS_PRESETS:
            raise KeyError(f"unknown DetKDS preset {name!r}; presets: {', '.join(DETKDS_PRESETS)}")
        return cls(**{**DETKDS_PRESETS[name], **overrides})


def detkds_logit_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    normalization: str = "softmax_C",
    distance: str = "pear",
    reduction: str = "mean",
) -> Tensor:
    r"""DetKDS's logits branch: a normalisation and a distance on sigmoid classification scores.

    .. math::
        \mathcal{L} = \overline{D}\big(\tau_3(\sigma(z^S)), \tau_3(\sigma(z^T))\big)

    Args:
        student: student logits :math:`z^S` (e.g. a dense head's or RPN's :math:`(N, A, H, W)` map).
        teacher: teacher logits of the same shape (detached inside).
        normalization: :math:`\tau_3`, a key of ``DETKDS_SEARCH_SPACE['normalization']``
            (searched for Faster R-CNN: ``'softmax_C'``).
        distance: :math:`D` (searched for Faster R-CNN: ``'pear'``).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean of the
            distance's elements (of the per-row values for ``pear``/``cos``, which
            ``reduction='none'`` returns; its ``.mean()`` is ``'mean'``); ``'sum'`` sums them.

    Shape:
        - student, teacher: :math:`(N, C, \ldots)`
        - output: scalar, or the distance's shape with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``; the paper multiplies it by :math:`\gamma_{logits}`
        (``loss_weight``; Faster R-CNN config: 0.1).

    Reference:
        Lujun Li, Yufan Bao, Peijie Dong, Chuanguang Yang, Anggeng Li, Wenhan Luo, Qifeng Liu, Wei
        Xue, Yike Guo. "DetKDS: Knowledge Distillation Search for Object Detectors". ICML 2024,
        no arXiv version. Official code: lliai/DetKDS@a7d2127
        ``auto_detkd.py::FeatureLoss.get_logit_loss``; matched by the parity tests.

    Example:
        >>> import torch
        >>> detkds_logit_loss(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)).shape
        torch.Size([])

    Notes:
        The Faster R-CNN config enables this branch, but the released Faster R-CNN distiller
        never adds it to the training loss.
    """
    check_options(reduction=reduction)
    if normalization not in DETKDS_SEARCH_SPACE["normalization"]:
        raise ValueError(f"normalization {normalization!r} is not one of {DETKDS_SEARCH_SPACE['normalization']}")
    if distance not in DETKDS_SEARCH_SPACE["distance"]:
        raise ValueError(f"distance {distance!r} is not one of {DETKDS_SEARCH_SPACE['distance']}")
    check_feature_pair(student, teacher, "* C")
    if student.dim() < 2:
        raise ValueError(f"student must have shape (N, C, ...), got {tuple(student.shape)}")
    s, t = upcast(student).sigmoid(), upcast(teacher.detach()).sigmoid()
    d = detkds_distance(detkds_transform(s, normalization), detkds_transform(t, normalization), distance)
    if reduction == "none":
        return d.to(student.dtype)
    return (d.sum() if reduction == "sum" else _mean(d)).to(student.dtype)


@register_loss("detkds_logits", function=detkds_logit_loss)
class DetKDSLogitLoss(LossModule):
    """Module twin of :func:`detkds_logit_loss`; ``loss_weight`` is :math:`\\gamma_{logits}`."""

    def __init__(
        self, *, normalization: str = "softmax_C", distance: str = "pear", reduction: str = "mean", loss_weight: float = 1.0
    ) -> None:
        super().__init__(normalization=normalization, distance=distance, reduction=reduction, loss_weight=loss_weight)
