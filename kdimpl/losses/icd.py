r"""Instance-conditional knowledge distillation (ICD), Kang et al., NeurIPS 2021.

ICD decodes the teacher's FPN features with *instance queries* (an encoding of each ground-truth box,
its class and position, plus fake instances sampled from a prior): one cross-attention layer
(:class:`kdimpl.adapters.ICDDecoder`) whose attention over the feature map is trained by an
auxiliary identification task (:func:`icd_identification_loss`: is the instance real, where are its
edges). The student then imitates the teacher's per-head *value projections* where the real
instances' attention falls (:func:`icd_loss`); during the first iterations the student's features
are detached (:func:`icd_bypass`). A training step reads::

    boxes, labels, points, real, valid = icd_sample_instances(gt_boxes, gt_labels, image_size,
                                                              size_prior=prior, rng=rng)
    queries = encoder(labels, points, boxes, image_size)          # kdimpl.adapters.ICDInstanceEncoder
    decoded, logits, t_values = decoder(queries, t_feats, t_pos, padding)  # kdimpl.adapters.ICDDecoder
    targets = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    conf, reg = icd_identification_loss(decoder.predict(decoded), targets, real, valid)
    s_values = decoder_student.values(icd_bypass(s_feats, iteration))      # (N, S, H, D)
    loss = conf + reg + 8.0 * icd_loss(s_values, t_values.detach(), logits, real)

(``t_feats``, ``s_feats``: ``(N, S, C)`` FPN levels flattened into one sequence; the student's decoder is
its own module of the same architecture, of which only the value projection is used.)

Not here: the flattening of the FPN levels into one sequence with its sine positional embedding and
padding mask (detectron2/DETR code), the optimiser of the auxiliary module (AdamW, lr 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import _tracing, check_boxes, check_image_size, check_options, check_same_shape, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..distributed import reduce_normaliser

__all__ = ["icd_value_mask", "icd_identification_loss", "icd_bypass", "icd_sample_instances"]


def icd_value_mask(attention_logits: Tensor, instance_mask: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""ICD's distillation mask: each head's attention of the real instances over the positions, summed.

    .. math::
        m_{n,h,s} = \sum_{q \text{ real}} \operatorname{softmax}_s\big(A_{n,h,q,s} / \tau\big)

    Args:
        attention_logits: ``(N, H, Q, S)`` the teacher decoder's scaled attention logits (before the
            softmax; ``-inf`` at padded positions).
        instance_mask: ``(N, Q)`` bool, the real (ground-truth) instances; fake and padding queries
            are left out (the official ``DISTILL_NEGATIVE = False``).
        temperature: :math:`\tau` (official: 1.0, ``TEMP_VALUE``).

    Returns:
        ``(N, H, S)`` mask, detached.
    """
    check_shapes(attention_logits=(attention_logits, "N H Q S"), instance_mask=(instance_mask, "N Q any"))
    check_options(temperature=temperature)
    with torch.no_grad():
        # Benchmark (2 images x 8 heads x 120 queries (20 real) x 22 300 positions, P3-P7 of an 800x1333 input; whole
        # loss fwd+bwd, CPU, one thread, one interleaved run): softmax over every query 1940-2005 ms, over the
        # queries real in some image 952-1184 ms (official 1675-2325 ms). Data-dependent shapes: torch.compile gets
        # every query.
        if not torch.compiler.is_compiling():
            keep = instance_mask.any(dim=0).nonzero().squeeze(1)
            return _value_mask(attention_logits[:, :, keep], instance_mask[:, keep], temperature)
        return _value_mask(attention_logits, instance_mask, temperature)


def _value_mask(attention_logits: Tensor, instance_mask: Tensor, temperature: float) -> Tensor:
    attention = torch.softmax(upcast(attention_logits) / temperature, dim=-1)
    return (attention * instance_mask[:, None, :, None].to(attention.dtype)).sum(dim=2)


def icd_loss(
    student: Tensor,
    teacher: Tensor,
    attention_logits: Tensor,
    instance_mask: Tensor,
    *,
    temperature: float = 1.0,
    normalize: bool = True,
    normalisation: str = "official",
    reduction: str = "mean",
) -> Tensor:
    r"""ICD value imitation: squared error of the per-head value projections, weighted by the instances' attention.

    With :math:`m_{n,h,s}` from :func:`icd_value_mask` and :math:`V_{s,n,h,c}` the head channels of the
    value projections, LayerNorm-ed over the :math:`D` channels of each head (no affine):

    .. math::
        \mathcal{L} = \frac{1}{N H D} \sum_{n,h,c} \frac{\sum_s m_{n,h,s} (V^S_{s,n,h,c} - V^T_{s,n,h,c})^2}
            {\max(\sum_s m_{n,h,s}, 10^{-6})}

    (``normalisation='official'``, the PyTorch release); ``'megengine'`` (the MegEngine release) divides
    once by the mask mass of the batch: :math:`\sum_{n,h,s} m \cdot \frac{1}{D}\sum_c (V^S - V^T)^2 /
    \max(\sum_{n,h,s} m, 10^{-6})`.

    Args:
        student: ``(N, S, H, D)`` the student's value projections (:class:`kdimpl.adapters.ICDDecoder`'s
            ``values`` on the student's flattened FPN features, or any ``Linear`` split into heads).
        teacher: the teacher decoder's value projections, same shape (detached inside).
        attention_logits: ``(N, H, Q, S)`` the teacher decoder's attention logits (detached inside).
        instance_mask: ``(N, Q)`` bool, the real instances.
        temperature: :math:`\tau` of :func:`icd_value_mask` (official 1.0).
        normalize: LayerNorm both sides over ``D`` first (official ``DISTILL_NORM = 'ln'``).
        normalisation: ``'official'`` (default) or ``'megengine'``, as above.
        reduction: ``'mean'`` (default) applies the paper's own normalisation, the one ``normalisation``
            names (``'official'``: the element mean of ``'none'``); ``'sum'`` sums; ``'none'`` returns the
            ``(N, H, D)`` per-channel weighted means (``'official'``) or the ``(N, H, S)`` weighted
            position errors (``'megengine'``).

    Shape:
        - student, teacher: :math:`(N, S, H, D)`
        - attention_logits: :math:`(N, H, Q, S)`; instance_mask: :math:`(N, Q)`
        - output: scalar, or as described under ``reduction``

    Returns:
        The loss, in the dtype of ``student``; the official weight (``WEIGHT_VALUE``: 8 for RetinaNet
        and FCOS, 3 for Faster R-CNN) is the twin's ``loss_weight``.

    Reference:
        Zijian Kang, Peizhen Zhang, Xiangyu Zhang, Jian Sun, Nanning Zheng. "Instance-Conditional
        Knowledge Distillation for Object Detection". NeurIPS 2021. arXiv:2110.12724.
        Official code: MegEngine/ICD@acf2726 ``InstanceConditionalDistillation.mimic_loss`` and its
        ``forward`` (``pytorch_release/models/distiller.py``); ``ICD.mimic_loss``
        (``megengine_release/models/ICD/ICD.py``) for ``'megengine'``; matched by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 50, 8, 32), torch.randn(2, 50, 8, 32)
        >>> logits = torch.randn(2, 8, 3, 50)
        >>> real = torch.tensor([[True, True, False], [True, False, False]])
        >>> icd_loss(s, t, logits, real).shape
        torch.Size([])
        >>> float(icd_loss(t, t, logits, real))
        0.0

    Notes:
        An image without real instances has a zero mask: it adds 0 to the official mean but still
        counts in its denominator (as in the official code). The ``'megengine'`` normaliser is a
        count of the batch: inside :func:`kdimpl.distributed.global_normalisers` it is the mean over
        processes. The learnable temperature and the temperature decay of the official code (both
        off in the released configs) are not reproduced.
    """
    check_shapes(student=(student, "N S H D"), teacher=(teacher, "N S H D"),
                 attention_logits=(attention_logits, "N H Q S"), instance_mask=(instance_mask, "N Q any"))
    check_same_shape(student, teacher, ("student", "teacher"))
    check_options(temperature=temperature, reduction=reduction)
    if normalisation not in ("official", "megengine"):
        raise ValueError(f"normalisation must be 'official' or 'megengine', got {normalisation!r}")
    s = upcast(student)
    t = upcast(teacher.detach()).to(s.dtype)
    if normalize:
        s, t = F.layer_norm(s, s.shape[-1:]), F.layer_norm(t, t.shape[-1:])
    mask = icd_value_mask(attention_logits.detach(), instance_mask, temperature=temperature).to(s.dtype)  # (N, H, S)
    error = F.mse_loss(s, t, reduction="none").permute(0, 2, 3, 1)  # (N, H, D, S)
    if normalisation == "official":
        terms = (error * mask[:, :, None, :]).sum(dim=-1) / mask.sum(dim=-1, keepdim=True).clamp(min=1e-6)
        return reduce_loss(terms, reduction).to(student.dtype)
    terms = error.mean(dim=2) * mask  # (N, H, S)
    if reduction != "mean":
        return reduce_loss(terms, reduction).to(student.dtype)
    return (terms.sum() / torch.as_tensor(reduce_normaliser(mask.sum())).clamp(min=1e-6)).to(student.dtype)


def icd_identification_loss(
    predictions: Tensor,
    box_targets: Tensor,
    instance_mask: Tensor,
    valid_mask: Tensor,
    *,
    confidence_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    r"""ICD's auxiliary task on the decoded queries: is the instance real, and where are its edges.

    .. math::
        \mathcal{L}_{conf} = \lambda \frac{\sum_{q \text{ valid}} \mathrm{BCE}(c_q, \mathbb{1}[q \text{ real}])}
            {\max(|\text{valid}|, 10^{-6})}, \qquad
        \mathcal{L}_{reg} = \frac{\sum_{q \text{ real}} \sum_{k=1}^{4} |\sigma(b_{q,k}) - g_{q,k}| / w_{q,k}}
            {\max(|\text{real}|, 10^{-6})}

    with :math:`g = (l, t, r, b)` the distances from the instance's (jittered) reference point to the
    box edges and :math:`w` the box width for the x terms, the height for the y terms (all in units of
    the image size).

    Args:
        predictions: ``(N, Q, 5)`` the identification head's raw outputs per query: a confidence
            logit, then four edge logits (:meth:`kdimpl.adapters.ICDDecoder.predict`).
        box_targets: ``(N, Q, 4)`` the targets :math:`g`: ``cat([points - boxes[..., :2], boxes[..., 2:] - points])``
            of :func:`icd_sample_instances`' boxes and reference points.
        instance_mask: ``(N, Q)`` bool, the real instances.
        valid_mask: ``(N, Q)`` bool, the queries that exist (real or fake; not padding).
        confidence_weight: :math:`\lambda` (official 1.0, ``CONFIDENCE_LOSS_WEIGHT``).

    Returns:
        ``(loss_conf, loss_reg)``, two scalars (the official ``prop_conf`` and ``prop_reg``).

    Reference:
        Kang et al., NeurIPS 2021 (see :func:`icd_loss`). Official code: MegEngine/ICD@acf2726
        ``InstanceEncoder.loss`` (``pytorch_release/models/utils.py``); matched by the parity tests.
    """
    check_shapes(predictions=(predictions, "N Q 5"), box_targets=(box_targets, "N Q 4"),
                 instance_mask=(instance_mask, "N Q any"), valid_mask=(valid_mask, "N Q any"))
    check_options(confidence_weight=confidence_weight)
    p = upcast(predictions)
    real, valid = instance_mask.to(p.dtype), valid_mask.to(p.dtype)
    target = upcast(box_targets).to(p.dtype)
    bce = F.binary_cross_entropy_with_logits(p[..., 0], real, reduction="none")
    loss_conf = confidence_weight * (bce * valid).sum() / valid.sum().clamp(min=1e-6)
    scale = target + target[..., [2, 3, 0, 1]]  # l + r = width, t + b = height
    error = (F.l1_loss(p[..., 1:].sigmoid(), target, reduction="none") / scale.clamp(min=1e-7)).sum(dim=-1)
    loss_reg = (error * real).sum() / real.sum().clamp(min=1e-6)
    return loss_conf.to(predictions.dtype), loss_reg.to(predictions.dtype)


def icd_bypass(features: Tensor, iteration: int, *, bypass_iterations: int = 1000) -> Tensor:
    """ICD's iteration gate: the student's features detached before ``bypass_iterations``.

    During the first iterations the distillation loss trains only the student's value projection
    (the auxiliary decoder's attention is still random); afterwards it reaches the student's
    features. Official: ``BYPASS_DISTILL = 1000`` (80000 in the ``*_bs8`` configs).

    Example:
        >>> import torch
        >>> x = torch.ones(2, requires_grad=True)
        >>> icd_bypass(x, 10).requires_grad, icd_bypass(x, 1000).requires_grad
        (False, True)
    """
    return features.detach() if iteration < bypass_iterations else features


def icd_sample_instances(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    image_size: Sequence[int] | Tensor,
    *,
    size_prior: Tensor,
    class_prior: Tensor | None = None,
    rng: torch.Generator | None = None,
    fake_ratio: float = 5.0,
    max_instances: int = 300,
    jitter: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""ICD's instances per image: the ground truth plus fake instances sampled from a class and size prior.

    Image :math:`i` with :math:`n_i` boxes gets :math:`\min(\max(1, \lfloor n_i (1 + \rho) \rfloor),
    \max(Q_{max}, n_i))` instances: the real ones first, the rest fake with a class drawn from
    ``class_prior``, a width and height from a normal of ``size_prior[class]`` clipped to its mean
    :math:`\pm 2\sigma` and to ``[0.002, 0.7]``, and a centre uniform in ``[0.03, 0.97]`` (units of the
    image size). Every instance gets a reference point: its centre jittered uniformly by up to
    ``jitter`` times its width and height.

    Args:
        gt_boxes: per image, ``(n_i, 4)`` xyxy boxes in pixels of the input tensor.
        gt_labels: per image, ``(n_i,)`` class indices in ``[0, K)`` (no background class).
        image_size: ``(height, width)`` or ``(N, 2)``.
        size_prior: ``(K, 2, 2)``: per class, the mean and the standard deviation of the (width,
            height) in units of the image size (official: ``configs/coco_obj.json``; or a constant
            0.5 / 0.2 prior, ``UNIFORM_SAMPLE_BOX``).
        class_prior: ``(K,)`` class frequencies (normalised inside), ``None`` for uniform.
        rng: the ``torch.Generator`` of the sampling (official: NumPy's global RNG).
        fake_ratio: :math:`\rho` (official 5, ``NUM_NEG_POS_RATIO``).
        max_instances: :math:`Q_{max}` (official 300 for RetinaNet, 100 for Faster R-CNN, ``MAX_LABELS``).
        jitter: the reference-point jitter (official 0.3, ``SAMPLE_RANGE``).

    Returns:
        ``(boxes, labels, points, real, valid)`` padded to the largest count ``Q``: ``(N, Q, 4)`` xyxy
        boxes and ``(N, Q, 2)`` reference points, both in units of the image size; ``(N, Q)`` labels;
        ``(N, Q)`` bool masks of the real instances and of the filled slots.

    Example:
        >>> import torch
        >>> prior = torch.tensor([[[0.2, 0.3], [0.1, 0.1]]] * 3)
        >>> out = icd_sample_instances([torch.tensor([[10., 10., 50., 40.]])], [torch.tensor([2])], (100, 200),
        ...                            size_prior=prior, rng=torch.Generator().manual_seed(0))
        >>> [tuple(x.shape) for x in out], out[3].sum().item(), out[4].sum().item()
        ([(1, 6, 4), (1, 6), (1, 6, 2), (1, 6), (1, 6)], 1, 6)
    """
    n = len(gt_boxes)
    check_boxes(gt_boxes, n)
    check_image_size(image_size, n)
    check_shapes(size_prior=(size_prior, "K 2 2"))
    if len(gt_labels) != n:
        raise ValueError(f"gt_labels needs one entry per image ({n}), got {len(gt_labels)}")
    num_classes = size_prior.shape[0]
    sizes = torch.as_tensor(image_size, dtype=torch.float64).reshape(-1, 2).expand(n, 2)
    prior = torch.ones(num_classes, dtype=torch.float64) if class_prior is None else class_prior.double().cpu()
    results = []
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        real = boxes.shape[0]
        total = min(max(1, int(real * (fake_ratio + 1))), max(max_instances, real))
        fake_labels = torch.multinomial(prior, total, replacement=True, generator=rng)
        mean, std = size_prior.double().cpu()[fake_labels].unbind(1)  # (T, 2) each
        wh = (mean + std * torch.randn(total, 2, dtype=torch.float64, generator=rng))
        wh = torch.maximum(torch.minimum(wh, mean + 2 * std), mean - 2 * std).clamp(2e-3, 0.7)
        centre = torch.rand(total, 2, dtype=torch.float64, generator=rng).clamp(0.03, 0.97)
        fake = torch.cat([centre - wh / 2, centre + wh / 2], dim=1).clamp(0, 1)
        h, w = sizes[i].tolist()
        scale = torch.tensor([w, h, w, h], dtype=torch.float64)
        all_boxes = torch.cat([boxes.detach().double().cpu() / scale, fake[real:]])
        all_labels = torch.cat([labels.cpu().long(), fake_labels[real:]])
        centre = (all_boxes[:, :2] + all_boxes[:, 2:]) / 2
        offset = (torch.rand(total, 2, dtype=torch.float64, generator=rng) - 0.5) * jitter * 2.0
        points = centre + offset * (all_boxes[:, 2:] - all_boxes[:, :2])
        results.append((all_boxes, all_labels, points, real))
    size = max(r[0].shape[0] for r in results) if results else 0
    device = gt_boxes[0].device if n else torch.device("cpu")
    boxes = torch.zeros(n, size, 4, dtype=torch.float64)
    labels = torch.zeros(n, size, dtype=torch.long)
    points = torch.zeros(n, size, 2, dtype=torch.float64)
    real = torch.zeros(n, size, dtype=torch.bool)
    valid = torch.zeros(n, size, dtype=torch.bool)
    for i, (b, lab, p, r) in enumerate(results):
        boxes[i, : len(b)], labels[i, : len(b)], points[i, : len(b)] = b, lab, p
        real[i, :r], valid[i, : len(b)] = True, True
    dtype = gt_boxes[0].dtype if n else torch.float32
    return boxes.to(device, dtype), labels.to(device), points.to(device, dtype), real.to(device), valid.to(device)


@register_loss("icd", function=icd_loss)
class ICDLoss(LossModule):
    """Module twin of :func:`icd_loss`; ``loss_weight`` multiplies the result (official ``WEIGHT_VALUE``: 8
    for RetinaNet/FCOS, 3 for Faster R-CNN)."""

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        normalize: bool = True,
        normalisation: str = "official",
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(temperature=temperature, normalize=normalize, normalisation=normalisation,
                         reduction=reduction, loss_weight=loss_weight)
