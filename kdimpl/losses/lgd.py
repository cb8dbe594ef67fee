"""LGD: label-guided self-distillation, Zhang et al., AAAI 2022.

LGD trains a "dynamic teacher" next to the student: label embeddings of the ground truth (a
PointNet-style label encoder) interact with the student's own appearance features (the
inter-object relation adapter, :class:`kdimpl.LGDRelationAdapter`), are painted back onto each
FPN level (the intra-object knowledge mapper, :class:`kdimpl.LGDKnowledgeMapper`) and become
teacher features that the student mimics (:func:`lgd_loss`). This file ships the label encoder's
input (:func:`lgd_label_descriptors`, for :class:`kdimpl.LGDLabelEncoder`), the inside-box masks
(:func:`lgd_inside_box_masks`), the teacher's wiring after the label encoder
(:func:`lgd_teacher_features`), the distillation loss and the iteration gates (:func:`lgd_gates`).
The teacher's detection losses (the student's head applied to the teacher features) stay with the
detector code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import _tracing, check_background_index, check_boxes, check_image_size, check_modules, check_shape
from .._registry import register_loss
from ..adapters.labelenc import LabelEncAdapter
from ..masks import image_hw, pad_box_values, pad_boxes
from .labelenc import _normalised_feature_mse

__all__ = ["LGDGates", "lgd_gates", "lgd_inside_box_masks", "lgd_label_descriptors", "lgd_teacher_features"]

ImageSize = Sequence[int] | Tensor


def lgd_inside_box_masks(
    gt_boxes: Sequence[Tensor] | Tensor, image_size: ImageSize, feature_size: Sequence[int], gt_mask: Tensor | None = None
) -> Tensor:
    r"""LGD's ``(N, M, H, W)`` inside-box masks: cell :math:`(x, y)` is inside when it lies within half a box of the centre.

    Boxes are clamped to ``[0, width - 1] x [0, height - 1]`` of the input tensor (the official
    descriptor step does this before the masks), scaled to the map by ``W / width`` and
    ``H / height``, and

    .. math::
        M(x, y) = \Big[\frac{|x - c_x|}{w} \le \tfrac12\Big] \Big[\frac{|y - c_y|}{h} \le \tfrac12\Big]

    on integer cell indices :math:`x \in \{0..W-1\}`, :math:`y \in \{0..H-1\}` (no half-cell
    centre), as ``get_inside_gt_mask`` in megvii-research/LGD@e03357d. A box smaller than a cell
    may cover no cell at all; a zero-width or zero-height box covers none.

    Args:
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in pixels of the padded input tensor, or a padded
            ``(N, M, 4)`` tensor.
        image_size: ``(height, width)`` of the input tensor (the official code uses the padded batch
            tensor's size), or an ``(N, 2)`` tensor.
        feature_size: ``(H, W)`` of the level.
        gt_mask: optional ``(N, M)`` bool mask of the real boxes of a padded tensor.

    Returns:
        ``(N, M, H, W)`` float 0/1 masks (padding slots are all zero).

    Example:
        >>> import torch
        >>> lgd_inside_box_masks([torch.tensor([[0.0, 0.0, 7.0, 3.0]])], (8, 16), (2, 4))[0, 0]
        tensor([[1., 1., 0., 0.],
                [0., 0., 0., 0.]])
    """
    boxes, valid = pad_boxes(gt_boxes, gt_mask)
    boxes = boxes if boxes.is_floating_point() else boxes.float()
    img_h, img_w = image_hw(image_size, boxes.shape[0], boxes)  # (N, 1)
    height, width = feature_size
    upper = torch.stack([img_w, img_h, img_w, img_h], dim=-1) - 1  # (N, 1, 4)
    boxes = torch.minimum(boxes.clamp(min=0), upper)
    scaled = boxes * torch.stack([width / img_w, height / img_h, width / img_w, height / img_h], dim=-1)
    x1, y1, x2, y2 = (scaled[..., k, None, None] for k in range(4))  # (N, M, 1, 1)
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[:, None]
    inside_x = (xs - (x1 + x2) * 0.5).abs() / (x2 - x1) <= 0.5
    inside_y = (ys - (y1 + y2) * 0.5).abs() / (y2 - y1) <= 0.5
    return (inside_x & inside_y & valid[..., None, None]).to(boxes.dtype)


def lgd_label_descriptors(
    gt_boxes: Sequence[Tensor] | Tensor,
    labels: Sequence[Tensor] | Tensor,
    image_size: ImageSize,
    num_classes: int,
    *,
    background_index: int = 0,
    context_box: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""LGD's box descriptors, the label encoder's input: normalised box corners and a one-hot class, in :math:`[-1, 1]`.

    .. math::
        d_i = 2\,\big[x_1 / W,\; y_1 / H,\; x_2 / W,\; y_2 / H,\; \mathrm{onehot}(c_i)\big] - 1

    with the box clamped to ``[0, W - 1] x [0, H - 1]`` of the padded input tensor first (as the
    official ``box_descriptor_encode``, megvii-research/LGD@e03357d) and the one-hot vector over the
    ``num_classes - 1`` foreground classes.

    Args:
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in pixels of the padded input tensor, or a padded
            ``(N, M, 4)`` tensor.
        labels: per-image ``(M_i,)`` integer classes (or an ``(N, M)`` tensor) in ``[0, num_classes)``.
        image_size: ``(height, width)`` of that tensor, or an ``(N, 2)`` tensor.
        num_classes: classes including the background (81 on COCO).
        background_index: the background class, 0 (default); detectron2's 0-based foreground labels
            are ``num_classes=81, background_index=-1``.
        context_box: add the whole-image box (the official ``ADD_CONTEXT_BOX``) in slot 0 of every
            image, with an all-zero class part; its embedding is
            :func:`lgd_teacher_features`' ``context_embeddings``.

    Returns:
        ``(descriptors, valid)``: ``(N, M', 4 + K)`` descriptors (``M' = M + 1`` with the context
        box) and the ``(N, M')`` bool mask of real entries, for :class:`kdimpl.LGDLabelEncoder`.

    Example:
        >>> import torch
        >>> d, valid = lgd_label_descriptors([torch.tensor([[0.0, 0.0, 16.0, 8.0]])], [torch.tensor([2])], (16, 32), 4)
        >>> d
        tensor([[[-1., -1.,  0.,  0., -1.,  1., -1.]]])

    Notes:
        The official code gives an image without boxes one dummy descriptor (box ``(0, 0, 1, 1)``, no
        class) and no context box; here it has no entries besides the context box.
    """
    boxes, valid = pad_boxes(gt_boxes)
    boxes = boxes if boxes.is_floating_point() else boxes.float()
    n = boxes.shape[0]
    background = check_background_index(background_index, num_classes)
    classes = pad_box_values(labels, valid, name="labels", num_classes=num_classes).to(boxes.device)
    if not _tracing() and bool((valid & (classes == background)).any()):
        raise ValueError(f"labels holds the background class {background} for a box: descriptors encode objects only")
    img_h, img_w = image_hw(image_size, n, boxes)  # (N, 1)
    size = torch.stack([img_w, img_h, img_w, img_h], dim=-1)  # (N, 1, 4)
    onehot = F.one_hot(classes - (classes > background).long(), num_classes - 1).to(boxes.dtype)
    onehot = onehot * valid[..., None]
    if context_box:
        boxes = torch.cat([size.expand(n, 1, 4) * boxes.new_tensor([0.0, 0.0, 1.0, 1.0]), boxes], dim=1)
        onehot = torch.cat([onehot.new_zeros(n, 1, num_classes - 1), onehot], dim=1)
        valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
    corners = torch.minimum(boxes.clamp(min=0), size - 1) / size
    descriptors = torch.cat([corners, onehot], dim=-1) * 2 - 1
    return descriptors * valid[..., None], valid


def lgd_teacher_features(
    label_embeddings: Sequence[Tensor] | Tensor,
    features: Sequence[Tensor],
    gt_boxes: Sequence[Tensor] | Tensor,
    image_size: ImageSize,
    relation_teacher: nn.Module,
    mapper_teacher: nn.Module,
    *,
    context_embeddings: Tensor | None = None,
) -> list[Tensor]:
    r"""The dynamic teacher's features on every FPN level, from label embeddings and the student's features.

    Per level :math:`l`: inside-box masks :math:`M^l` (:func:`lgd_inside_box_masks`), the relation
    adapter's object outputs :math:`o^l = \mathcal{A}(e, P^l, M^l)` and the mapper's map
    :math:`T^l = \mathcal{K}(o^l, M^l)`. With ``context_embeddings`` (the official
    ``ADD_CONTEXT_BOX``, used by the RetinaNet and FCOS configs) each image gets one more object,
    the whole-image box, whose output is the mapper's per-image bias instead of being painted.

    Args:
        label_embeddings: per-image ``(M_i, C)`` label embeddings of the boxes (the label encoder's
            output, in the boxes' order), or a padded ``(N, M, C)`` tensor: with
            :class:`kdimpl.LGDLabelEncoder` on ``lgd_label_descriptors(..., context_box=True)``, pass
            ``embeddings[:, 1:]`` here and ``embeddings[:, 0]`` as ``context_embeddings``.
        features: the student's FPN features, one ``(N, C, H_l, W_l)`` map per level; the official
            configs feed them undetached (``DETACH_APPEARANCE_EMBED = False`` for most), so the
            teacher's losses also train the student's backbone; pass ``.detach()``-ed maps otherwise.
        gt_boxes: per-image ``(M_i, 4)`` xyxy boxes in pixels of the padded input tensor.
        image_size: ``(height, width)`` of that tensor, or an ``(N, 2)`` tensor.
        relation_teacher: :class:`kdimpl.LGDRelationAdapter` (shared by the levels).
        mapper_teacher: :class:`kdimpl.LGDKnowledgeMapper` (shared by the levels).
        context_embeddings: optional ``(N, C)`` label embeddings of the whole-image boxes.

    Returns:
        One ``(N, C, H_l, W_l)`` teacher map per level. Train them with the student's detection head
        (the teacher's own detection losses), and pass them, detached inside the loss, to
        :func:`lgd_loss`.

    Example:
        >>> import torch
        >>> from kdimpl import LGDKnowledgeMapper, LGDRelationAdapter
        >>> feats = [torch.randn(2, 16, 8 // 2**l, 12 // 2**l) for l in range(3)]
        >>> boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0], [30, 8, 60, 40]])]
        >>> emb = [torch.randn(1, 16), torch.randn(2, 16)]
        >>> teacher = lgd_teacher_features(emb, feats, boxes, (64, 96), LGDRelationAdapter(16, num_heads=2),
        ...                                LGDKnowledgeMapper(16), context_embeddings=torch.randn(2, 16))
        >>> [tuple(t.shape) for t in teacher]
        [(2, 16, 8, 12), (2, 16, 4, 6), (2, 16, 2, 3)]

    Notes:
        The official code gives an image without boxes a dummy box ``(0, 0, 1, 1)`` of class 0 in the
        label encoder's input (its comment says this does not happen in training, where detectron2
        drops empty images); here such an image has no objects, so its teacher map is the refined
        context bias (or the refinement of a zero map without context).
    """
    check_modules(relation_teacher=relation_teacher, mapper_teacher=mapper_teacher)
    if not _tracing() and (isinstance(features, Tensor) or len(features) == 0):
        raise TypeError("features must be a sequence of per-level (N, C, H, W) maps")
    n = features[0].shape[0]
    check_boxes(gt_boxes, n)
    check_image_size(image_size, n, features[0])
    boxes, valid = pad_boxes(gt_boxes, batch_size=n)
    embeddings = _padded_embeddings(label_embeddings, valid, features[0])
    if context_embeddings is not None:
        check_shape(context_embeddings, "context_embeddings", "N C")
        img_h, img_w = image_hw(image_size, n, boxes.to(features[0].dtype))
        whole = torch.cat([torch.zeros_like(img_w), torch.zeros_like(img_h), img_w, img_h], dim=1)
        boxes = torch.cat([whole[:, None].to(boxes), boxes], dim=1)  # slot 0: the context box
        valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        embeddings = torch.cat([context_embeddings[:, None].to(embeddings), embeddings], dim=1)
    teachers = []
    for level in features:  # one loop over levels
        masks = lgd_inside_box_masks(boxes, image_size, level.shape[-2:], valid).to(level.dtype)
        objects = relation_teacher(embeddings, level, masks, valid)
        if context_embeddings is None:
            teachers.append(mapper_teacher(objects, masks, valid))
        else:
            teachers.append(mapper_teacher(objects[:, 1:], masks[:, 1:], valid[:, 1:], objects[:, 0]))
    return teachers


def _padded_embeddings(label_embeddings: Sequence[Tensor] | Tensor, valid: Tensor, like: Tensor) -> Tensor:
    if isinstance(label_embeddings, Tensor):
        check_shape(label_embeddings, "label_embeddings", "N M C")
        padded = label_embeddings
    else:
        if not _tracing() and len(label_embeddings) != valid.shape[0]:
            raise ValueError(f"label_embeddings has {len(label_embeddings)} images but gt_boxes has {valid.shape[0]}")
        padded = like.new_zeros((*valid.shape, like.shape[1]))
        counts = valid.sum(dim=1).tolist()
        for i, embedding in enumerate(label_embeddings):  # one loop over images
            check_shape(embedding, f"label_embeddings[{i}]", "M C")
            if not _tracing() and embedding.shape[0] != counts[i]:
                raise ValueError(f"label_embeddings[{i}] must give one embedding per box: {embedding.shape[0]} "
                                 f"for {counts[i]} boxes")
            padded[i, : embedding.shape[0]] = embedding.to(padded.dtype)
    if not _tracing() and padded.shape[:2] != valid.shape:
        raise ValueError(f"label_embeddings must give one embedding per box: {tuple(padded.shape[:2])} "
                         f"vs boxes {tuple(valid.shape)}")
    return padded


class LGDGates(NamedTuple):
    """What LGD's schedule switches at one iteration (see :func:`lgd_gates`)."""

    distill_student: bool
    freeze_student_backbone: bool


def lgd_gates(
    iteration: int,
    max_iter: int,
    *,
    pre_nondistill_iters: int = 30000,
    post_nondistill_iters: int = 0,
    freeze_backbone_iters: int = 20000,
) -> LGDGates:
    """LGD's iteration gates at 0-based ``iteration`` of ``max_iter``.

    ``distill_student`` is False during the first ``pre_nondistill_iters`` iterations and after
    ``max_iter - post_nondistill_iters``: then the student's features enter :func:`lgd_loss`
    detached (pass ``student.detach()``; the adapter still trains). ``freeze_student_backbone`` is
    True for the first ``freeze_backbone_iters``: then set the student backbone's gradients to
    ``None`` after ``backward`` (its FPN and head still train). Defaults are the shipped configs'
    (30k, 0 or 50k, 20k); the code defaults are 40k, 0 and 10k.

    Example:
        >>> lgd_gates(0, 180000), lgd_gates(30000, 180000)
        (LGDGates(distill_student=False, freeze_student_backbone=True), LGDGates(distill_student=True, freeze_student_backbone=False))
    """
    distill = pre_nondistill_iters <= iteration and not iteration > max_iter - post_nondistill_iters
    return LGDGates(distill_student=distill, freeze_student_backbone=iteration < freeze_backbone_iters)


def lgd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    adapter_student: nn.Module | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""LGD's distillation loss for one FPN level: squared error of instance-normalised features.

    .. math::
        \mathcal{L} = \frac{1}{N C H W} \sum_{n,c,h,w}
            \big(\mathrm{IN}(T)_{n,c,h,w} - \mathrm{IN}(\mathcal{A}(P))_{n,c,h,w}\big)^2,
        \qquad \mathrm{IN}(X)_{n,c} = \frac{X_{n,c} - \mu(X_{n,c})}{\sqrt{\sigma^2(X_{n,c}) + 10^{-5}}}

    with :math:`P` the student's features, :math:`\mathcal{A}` the adapter, :math:`T` the dynamic
    teacher's features (:func:`lgd_teacher_features`, detached) and :math:`\mathrm{IN}` instance
    normalisation (per sample and channel, over the cells, no affine). The total is
    :math:`\lambda` (``LAMBDA`` = 1) times the mean over all levels.

    Args:
        student: the student's FPN features :math:`P` of this level (``.detach()``-ed while
            :func:`lgd_gates` says ``distill_student=False``).
        teacher: the dynamic teacher's features :math:`T` of this level (same shape; detached inside).
        adapter_student: the adapter :math:`\mathcal{A}` (:class:`kdimpl.LabelEncAdapter`: LGD's
            ``SequentialConvs`` is the same three-convolution stack, one for all levels);
            ``None`` compares :math:`P` itself.
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
        Peizhen Zhang, Zijian Kang, Tong Yang, Xiangyu Zhang, Nanning Zheng, Jian Sun. "LGD:
        Label-Guided Self-Distillation for Object Detection". AAAI 2022. arXiv:2109.11496.
        Official code: megvii-research/LGD@e03357d ``models/base_distillator.py::BaseDistillator.distill``.

    Example:
        >>> import torch
        >>> from kdimpl import LabelEncAdapter, labelenc_level_weights, multilevel_loss
        >>> students = [torch.randn(2, 8, 16 // 2**l, 24 // 2**l) for l in range(3)]
        >>> teachers = [torch.randn_like(s) for s in students]
        >>> loss = multilevel_loss(lgd_loss, students, teachers, adapter_student=LabelEncAdapter(8),
        ...                        level_weights=labelenc_level_weights(students))
        >>> loss.shape
        torch.Size([])

    Notes:
        Unlike LabelEnc's loss (:func:`kdimpl.losses.labelenc.labelenc_loss`, one normalisation per
        sample over all channels), LGD normalises each channel separately. The teacher is trained
        only by its detection losses (the student's head on :math:`T`, with its own optimiser in the
        official code); this loss trains the student and the adapter.
    """
    return _normalised_feature_mse(student, teacher, adapter_student, reduction, F.instance_norm)


@register_loss("lgd", function=lgd_loss)
class LGDLoss(LossModule):
    """Module twin of :func:`lgd_loss`; ``loss_weight`` is the paper's :math:`\\lambda` (official: 1).

    Args:
        channels: feature channels ``C``. Given, the loss owns its ``adapter_student``
            (:class:`kdimpl.LabelEncAdapter`, LGD's ``SequentialConvs``); one adapter serves every
            level, so share one ``LGDLoss`` across levels: ``MultiLevelLoss(LGDLoss(channels=256),
            level_weights=labelenc_level_weights(students))``.
    """

    def __init__(self, *, channels: int | None = None, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        pieces = {} if channels is None else {"adapter_student": LabelEncAdapter(channels)}
        super().__init__(**pieces, reduction=reduction, loss_weight=loss_weight)
