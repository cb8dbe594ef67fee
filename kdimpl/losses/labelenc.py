"""LabelEnc: label encodings as intermediate supervision of a detector's features, Hao et al., ECCV 2020.

LabelEnc is a two-step training framework, not a single loss. This file ships its self-contained
pieces: the label map the label-encoding network reads (:func:`labelenc_label_map`), the
normalised squared error between the detector's adapted features and the label encodings
(:func:`labelenc_loss`, the step-1 "distance" and step-2 "auxiliary" loss), the level weights
that reproduce its normalisation over concatenated FPN levels (:func:`labelenc_level_weights`),
and the iteration gates of both steps (:func:`labelenc_loss_gate`). The label-encoding network's
body is :class:`kdimpl.LabelEncEncoder`; its FPN (of the detector's own type) and the two-step
training through the detector's shared heads stay with the detector code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import (
    _tracing,
    check_background_index,
    check_feature_pair,
    check_modules,
    check_options,
    check_shape,
)
from .._dtypes import upcast
from .._registry import register_loss
from ..adapters.labelenc import LabelEncAdapter
from ..masks import pad_box_values, pad_boxes

__all__ = ["labelenc_label_map", "labelenc_random_intensity", "labelenc_level_weights", "labelenc_loss_gate"]


def _map_size(image_size: Sequence[int] | Tensor) -> tuple[int, int]:
    """One ``(height, width)`` of the padded input tensor, as Python ints."""
    size = image_size.tolist() if isinstance(image_size, Tensor) else list(image_size)
    if len(size) != 2 or not all(isinstance(v, (int, float)) for v in size):
        raise ValueError(
            f"image_size must be one (height, width) of the padded input tensor (the label map covers the "
            f"whole batch tensor), got {image_size!r}"
        )
    height, width = (int(round(v)) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be > 0 (height, width), got {size}")
    return height, width


def labelenc_random_intensity(gt_boxes: Sequence[Tensor] | Tensor, *, rng: torch.Generator | None = None) -> Tensor:
    r"""Step 1's label-intensity augmentation: one factor :math:`\min(2u, 1)`, :math:`u \sim U(0, 1)`, per box.

    Returns an ``(N, M)`` tensor (``M`` the most boxes of an image; padding slots hold factors too)
    for the ``box_intensity`` argument of :func:`labelenc_label_map`. ``rng`` is an optional CPU
    ``torch.Generator`` (the official code draws from the global generator, box by box).

    Example:
        >>> import torch
        >>> labelenc_random_intensity([torch.zeros(3, 4)], rng=torch.Generator().manual_seed(0)).shape
        torch.Size([1, 3])
    """
    boxes, _ = pad_boxes(gt_boxes)
    u = torch.rand(boxes.shape[:2], generator=rng, dtype=torch.float32)
    return (2 * u).clamp(max=1).to(boxes.device)


def labelenc_label_map(
    gt_boxes: Sequence[Tensor] | Tensor,
    labels: Sequence[Tensor] | Tensor,
    image_size: Sequence[int] | Tensor,
    num_classes: int,
    *,
    background_index: int = 0,
    box_intensity: Tensor | None = None,
) -> Tensor:
    r"""LabelEnc's label map: one channel per foreground class, a pyramid of height 1 over each box.

    For a box with centre :math:`(c_x, c_y)`, width :math:`w` and height :math:`h`, pixel
    :math:`(x, y)` of the input tensor gets

    .. math::
        y_b(x, y) = 1 - \max\Big(\frac{|x - c_x|}{w}, \frac{|y - c_y|}{h}\Big)
            \quad\text{where } y_b \ge \tfrac12 \text{ (inside the box), else } 0,
        \qquad Y_k = \max_{b:\, c_b = k} \; s_b \, y_b

    (1 at the centre, 0.5 on the border), with :math:`s_b` the box's intensity (1 without
    augmentation) and the maximum over the boxes of class :math:`k`.

    Args:
        gt_boxes: per-image ``(M_i, 4)`` boxes ``x1, y1, x2, y2`` in pixels of the padded input
            tensor, or a padded ``(N, M, 4)`` tensor (every row a box).
        labels: per-image ``(M_i,)`` integer classes of the boxes (or an ``(N, M)`` tensor), in
            ``[0, num_classes)`` with ``background_index`` the background; no box may be labelled
            background.
        image_size: ``(height, width)`` of the padded input tensor: the map's size (the official code
            encodes at the batch tensor's size).
        num_classes: classes including the background (maskrcnn-benchmark's ``NUM_CLASSES``, 81 on
            COCO); the map has ``num_classes - 1`` channels, the classes in order without the background.
        background_index: the background class: 0 (default, torchvision's and maskrcnn-benchmark's
            convention: channel ``k - 1`` holds class ``k``); mmdetection puts it last: pass ``-1``.
        box_intensity: optional ``(N, M)`` factors :math:`s_b` per box (step 1 of training draws
            them with :func:`labelenc_random_intensity`; step 2 uses none).

    Returns:
        ``(N, num_classes - 1, height, width)`` float32 label map in ``[0, 1]`` (no gradient).

    Example:
        >>> import torch
        >>> y = labelenc_label_map([torch.tensor([[1.0, 1.0, 5.0, 3.0]])], [torch.tensor([2])], (4, 7), 4)
        >>> y[0, 1, 2]
        tensor([0.0000, 0.5000, 0.7500, 1.0000, 0.7500, 0.5000, 0.0000])

    Notes:
        Pixel :math:`x` is the integer column index (no half-pixel centre), as in the official
        ``box_encode`` (megvii-model/LabelEnc@16a4038, ``fcos_core/layers/ground_truth_encode.py``).
        A box of zero width or height there gives ``0 / 0 = NaN`` on its centre line when the
        centre falls on an integer pixel, which poisons the map; here the zero size is replaced by
        the smallest positive float, so such a box paints its centre line (or nothing).
    """
    boxes, valid = pad_boxes(gt_boxes)
    n = boxes.shape[0]
    height, width = _map_size(image_size)
    background = check_background_index(background_index, num_classes)
    classes = pad_box_values(labels, valid, name="labels", num_classes=num_classes).to(boxes.device)
    if not _tracing() and bool((valid & (classes == background)).any()):
        raise ValueError(f"labels holds the background class {background} for a box: label maps encode objects only")
    boxes = upcast(boxes) if boxes.is_floating_point() else boxes.float()
    channel = classes - (classes > background).long()  # the class's index among the foreground classes
    x1, y1, x2, y2 = (boxes[..., k, None, None] for k in range(4))  # (N, M, 1, 1)
    tiny = torch.finfo(boxes.dtype).tiny
    w, h = (x2 - x1).clamp(min=tiny), (y2 - y1).clamp(min=tiny)
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[:, None]
    pyramid = 1 - torch.maximum((xs - (x1 + x2) / 2).abs() / w, (ys - (y1 + y2) / 2).abs() / h)  # (N, M, H, W)
    pyramid = torch.where(pyramid >= 0.5, pyramid, torch.zeros_like(pyramid))
    if box_intensity is not None:
        check_shape(box_intensity, "box_intensity", "N M")
        pyramid = pyramid * box_intensity.to(pyramid)[..., None, None]
    pyramid = pyramid * valid[..., None, None]
    # per class, the largest value of its boxes (the zeros of the empty map take part)
    m = pyramid.shape[1]
    out = boxes.new_zeros(n, num_classes - 1, height * width)
    index = channel.clamp(min=0)[..., None].expand(n, m, height * width)
    out.scatter_reduce_(1, index, pyramid.reshape(n, m, height * width), "amax")
    return out.reshape(n, num_classes - 1, height, width).float()


def labelenc_level_weights(features: Sequence[Tensor]) -> list[float]:
    r"""Level weights :math:`H_l W_l / \sum_j H_j W_j` that turn per-level means into LabelEnc's mean.

    The official losses flatten every level to ``(N, C, H_l W_l)``, concatenate the levels and
    take one mean, so each level counts by its number of cells. ``multilevel_loss(labelenc_loss,
    students, teachers, level_weights=labelenc_level_weights(students))`` is that mean (LGD's loss
    is normalised the same way).

    Example:
        >>> import torch
        >>> labelenc_level_weights([torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)])
        [0.8, 0.2]
    """
    cells = [f.shape[-2] * f.shape[-1] for f in features]
    total = sum(cells)
    return [c / total if total else 0.0 for c in cells]


def labelenc_loss_gate(iteration: int, step: int, *, warmup_iters: int = 30000, cutoff_iters: int = 80000) -> float:
    """The weight (0 or 1) of LabelEnc's feature loss at 0-based ``iteration`` of training step 1 or 2.

    Step 1 (training the label-encoding function): 0 during the first ``warmup_iters`` iterations,
    1 afterwards (official ``DISTANCE_LOSS_WARMUP_ITERS``; during the warm-up the official loop also
    sets the adapter's gradients to ``None`` so that weight decay does not shrink it, and lengthens
    the schedule and its learning-rate steps by ``warmup_iters``). Step 2 (training the detector):
    1 for the first ``cutoff_iters`` iterations, 0 afterwards (official ``AUXILIARY_LOSS_ITERS``,
    of a 90k-iteration schedule).

    The official loops count iterations from 1 (``iteration <= 30000`` is warm-up, ``> 80000`` is
    off); with 0-based indices that is ``iteration < warmup_iters`` and ``iteration >= cutoff_iters``.

    Example:
        >>> labelenc_loss_gate(29999, 1), labelenc_loss_gate(30000, 1), labelenc_loss_gate(80000, 2)
        (0.0, 1.0, 0.0)
    """
    if step == 1:
        return float(iteration >= warmup_iters)
    if step == 2:
        return float(iteration < cutoff_iters)
    raise ValueError(f"step must be 1 (train the label encoder) or 2 (train the detector), got {step!r}")


def _normalised_feature_mse(
    student: Tensor,
    teacher: Tensor,
    adapter_student: nn.Module | None,
    reduction: str,
    normalise: Callable[[Tensor], Tensor],
) -> Tensor:
    """Squared error between ``normalise(teacher)`` (detached) and ``normalise(adapter_student(student))``.

    The body of :func:`labelenc_loss` (one-group ``GroupNorm``) and of
    :func:`kdimpl.losses.lgd.lgd_loss` (``InstanceNorm``); ``'mean'`` divides by the element count.
    """
    check_options(reduction=reduction)
    check_modules(all_or_none=True, adapter_student=adapter_student)
    check_shape(student, "student", "N C H W")
    check_shape(teacher, "teacher", "N C H W")
    s = upcast(student)
    if adapter_student is not None:
        s = adapter_student(s)
    check_feature_pair(s, teacher)
    target = normalise(upcast(teacher.detach()))
    loss = F.mse_loss(normalise(s), target, reduction="none" if reduction == "none" else "sum")
    if reduction == "mean":
        loss = loss / max(s.numel(), 1)
    return loss.to(student.dtype)


def labelenc_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    adapter_student: nn.Module | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""LabelEnc's feature loss for one FPN level: squared error of layer-normalised features.

    .. math::
        \mathcal{L} = \frac{1}{N C H W} \sum_{n,c,h,w}
            \big(\mathrm{LN}(Z)_{n,c,h,w} - \mathrm{LN}(\mathcal{A}(P))_{n,c,h,w}\big)^2,
        \qquad \mathrm{LN}(X)_n = \frac{X_n - \mu(X_n)}{\sqrt{\sigma^2(X_n) + 10^{-5}}}

    with :math:`P` the detector's features, :math:`\mathcal{A}` the adapter, :math:`Z` the label
    encodings (the teacher, detached) and :math:`\mathrm{LN}` a per-sample normalisation over
    channels and cells together (``GroupNorm`` with one group, no affine). Step 1 calls it the
    distance loss, step 2 the auxiliary loss.

    Args:
        student: the detector's features :math:`P` of this level.
        teacher: the label encodings :math:`Z` of this level (the label-encoding network's output,
            same shape; detached inside).
        adapter_student: the adapter :math:`\mathcal{A}` (:class:`kdimpl.LabelEncAdapter`, one for all
            levels); ``None`` compares :math:`P` itself.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the element mean of
            this level; the official code takes one mean over all levels concatenated, which is
            ``multilevel_loss(..., level_weights=labelenc_level_weights(students))``. ``'sum'``
            sums; ``'none'`` returns the :math:`(N, C, H, W)` squared errors.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Miao Hao, Yitao Liu, Xiangyu Zhang, Jian Sun. "LabelEnc: A New Intermediate Supervision
        Method for Object Detection". ECCV 2020. arXiv:2007.03282. Official code:
        megvii-model/LabelEnc@16a4038 ``LabelEncStep1Network.forward`` (distance loss) and
        ``LabelEncStep2Network.forward`` (auxiliary loss).

    Example:
        >>> import torch
        >>> from kdimpl import LabelEncAdapter, multilevel_loss
        >>> students = [torch.randn(2, 8, 16 // 2**l, 24 // 2**l) for l in range(3)]
        >>> label_feats = [torch.randn_like(s) for s in students]
        >>> loss = multilevel_loss(labelenc_loss, students, label_feats, adapter_student=LabelEncAdapter(8),
        ...                        level_weights=labelenc_level_weights(students))
        >>> loss.shape
        torch.Size([])

    Notes:
        Step 1 weighs this loss by :func:`labelenc_loss_gate` (off for a 30k-iteration warm-up)
        next to the detection losses of the detector and of the same heads on the label
        encodings; step 2 (frozen label encoder, unaugmented label maps) adds it to the detection
        loss for the first 80k of 90k iterations.
    """
    return _normalised_feature_mse(student, teacher, adapter_student, reduction, lambda x: F.group_norm(x, 1))


@register_loss("labelenc", function=labelenc_loss)
class LabelEncLoss(LossModule):
    """Module twin of :func:`labelenc_loss`; ``loss_weight`` multiplies the result.

    Args:
        channels: feature channels ``C``. Given, the loss owns its ``adapter_student``
            (:class:`kdimpl.LabelEncAdapter`); as in the official code one adapter serves every
            level, so share one ``LabelEncLoss`` across levels: ``MultiLevelLoss(LabelEncLoss(channels=256),
            level_weights=labelenc_level_weights(students))``. ``None`` (default) compares the
            features unadapted unless an adapter is passed to ``forward``.
    """

    def __init__(self, *, channels: int | None = None, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        pieces = {} if channels is None else {"adapter_student": LabelEncAdapter(channels)}
        super().__init__(**pieces, reduction=reduction, loss_weight=loss_weight)
