"""OADP: object-aware distillation pyramid (Wang et al., CVPR 2023), its distillation losses and proposal transform.

OADP distils a frozen CLIP image encoder into an open-vocabulary Faster R-CNN at three levels, each
on L2-normalised embeddings (the detector's heads end in a projection to CLIP's embedding size that
normalises its output; the CLIP embeddings are computed and normalised offline):

- object level, :func:`oadp_embedding_loss` on the object head's embeddings of proposals against
  CLIP's embeddings of the same proposals, cropped by :func:`oadp_adaptive_boxes`;
- block level, :func:`oadp_embedding_loss` on the block head's embeddings of image blocks plus
  :func:`oadp_relation_loss` on the blocks' pairwise similarities;
- global level, :func:`oadp_global_loss` on the global head's image embedding against CLIP's.

The losses take pre-computed embeddings (the heads, RoI pooling, CLIP and its mask attention are the
caller's) and act on regions and images, not on FPN levels. With the official weights::

    loss = (256 * oadp_embedding_loss(object_head(proposals), clip_objects)
            + 128 * oadp_embedding_loss(block_head(blocks), clip_blocks)
            + 8 * oadp_relation_loss(block_head(blocks), clip_blocks)
            + 0.5 * oadp_global_loss(global_head(features), clip_globals))
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["oadp_adaptive_boxes"]

def _unit(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """The student normalised (the heads' last layer does it), the teacher as given (normalised offline)."""
    s = F.normalize(upcast(student), dim=-1)
    return s, upcast(teacher.detach()).to(s.dtype)


def oadp_embedding_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""OADP's object- and block-level distillation: L1 between normalised head and CLIP embeddings.

    .. math::
        L = \frac{1}{M D} \sum_{i=1}^{M} \Big\| \frac{e_i}{\|e_i\|_2} - c_i \Big\|_1

    with :math:`e_i` the head's projected embedding of region :math:`i` (a proposal for the object
    level, an image block for the block level), :math:`c_i` CLIP's normalised image embedding of its
    crop, and
    :math:`M` regions of :math:`D` dims in the batch.

    Args:
        student_embeddings: :math:`e_i`, the head's embeddings before its normalisation (normalised
            inside; the official head normalises in its last linear layer).
        teacher_embeddings: :math:`c_i`, CLIP's embeddings of the regions, L2-normalised (used as
            given, as the official code uses its offline, normalised and float16-stored embeddings;
            detached inside).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over all
            :math:`M D` elements (the official ``L1Loss``); ``'sum'``: the sum; ``'none'``: the
            absolute differences.

    Shape:
        - student_embeddings, teacher_embeddings: :math:`(M, D)` (any leading dims)
        - output: scalar, or the input shape with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_embeddings``.

    Reference:
        Luting Wang, Yi Liu, Penghui Du, Zihan Ding, Yue Liao, Qiaosong Qi, Biaolong Chen, Si Liu.
        "Object-Aware Distillation Pyramid for Open-Vocabulary Object Detection". CVPR 2023.
        arXiv:2303.05892.
        Official code: LutingWang/OADP@d641d28 (``configs/dp/models/vild_ensemble_faster_rcnn_r50_fpn.py``
        ``loss_clip_objects`` and ``configs/dp/models/block.py`` ``loss_clip_blocks``: todd v0.3.0's
        ``L1Loss`` on the heads' ``NormalizedLinear`` outputs).

    Example:
        >>> import torch
        >>> objects, clip = torch.randn(400, 512), torch.randn(400, 512)
        >>> oadp_embedding_loss(objects, clip).shape
        torch.Size([])

    Notes:
        The official configurations weight the object level by 256 and the block level by 128,
        each reached by a linear warm-up over the first 200 iterations (``WarmupScheduler``; apply
        it through ``loss_weight``).
    """
    check_shapes(student_embeddings=(student_embeddings, "* D"), teacher_embeddings=(teacher_embeddings, "* D"))
    if student_embeddings.shape != teacher_embeddings.shape:
        raise ValueError(f"student_embeddings and teacher_embeddings must have the same shape, got "
                         f"{tuple(student_embeddings.shape)} and {tuple(teacher_embeddings.shape)}")
    check_options(reduction=reduction)
    s, t = _unit(student_embeddings, teacher_embeddings)
    return reduce_loss((s - t).abs(), reduction).to(student_embeddings.dtype)


@register_loss("oadp_embedding", function=oadp_embedding_loss)
class OADPEmbeddingLoss(LossModule):
    """Module twin of :func:`oadp_embedding_loss`; ``loss_weight`` multiplies the result (official 256 for
    objects, 128 for blocks)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)


def oadp_relation_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""OADP's block-relation distillation: squared error between the blocks' pairwise cosine similarities.

    .. math::
        L_{rel} = \frac{1}{B^2} \sum_{i=1}^{B} \sum_{j=1}^{B}
            \big(\hat e_i^\top \hat e_j - c_i^\top c_j\big)^2

    over the :math:`B` blocks of the whole batch (pairs across images included, as the official
    code), with :math:`\hat e` the normalised head embeddings and :math:`c` CLIP's normalised ones.

    Args:
        student_embeddings: the block head's embeddings (normalised inside); leading dims are
            flattened into the :math:`B` blocks.
        teacher_embeddings: CLIP's embeddings of the blocks, L2-normalised (used as given, as the
            official code; detached inside; their size may differ from the student's).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over the
            :math:`B^2` pairs (the official ``MSELoss``); ``'sum'``: the sum; ``'none'``: the
            ``(B, B)`` squared differences.

    Shape:
        - student_embeddings: :math:`(B, D)`; teacher_embeddings: :math:`(B, D')`
        - output: scalar, or :math:`(B, B)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_embeddings``.

    Reference:
        Luting Wang, Yi Liu, Penghui Du, Zihan Ding, Yue Liao, Qiaosong Qi, Biaolong Chen, Si Liu.
        "Object-Aware Distillation Pyramid for Open-Vocabulary Object Detection". CVPR 2023.
        arXiv:2303.05892.
        Official code: LutingWang/OADP@d641d28 (``oadp/base/losses.py::RKDLoss``, configured in
        ``configs/dp/models/block.py`` as ``loss_clip_block_relations``).

    Example:
        >>> import torch
        >>> blocks, clip = torch.randn(40, 512), torch.randn(40, 512)
        >>> oadp_relation_loss(blocks, clip).shape
        torch.Size([])

    Notes:
        The official configuration weights this term by 8 (linear warm-up over 200 iterations).

        Under ``DistributedDataParallel`` the block relations are computed across the blocks of the
        process's own images only, so no normaliser makes the gradients equal those of one process on the
        union batch (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    check_shapes(student_embeddings=(student_embeddings, "* D"), teacher_embeddings=(teacher_embeddings, "* E"))
    if student_embeddings.shape[:-1] != teacher_embeddings.shape[:-1]:
        raise ValueError(f"student_embeddings and teacher_embeddings must hold the same blocks, got "
                         f"{tuple(student_embeddings.shape)} and {tuple(teacher_embeddings.shape)}")
    check_options(reduction=reduction)
    s = F.normalize(upcast(student_embeddings), dim=-1).flatten(0, -2)
    t = upcast(teacher_embeddings.detach()).flatten(0, -2).to(s.dtype)
    return reduce_loss((s @ s.T - t @ t.T).square(), reduction).to(student_embeddings.dtype)


@register_loss("oadp_relation", function=oadp_relation_loss, distributed="batch")
class OADPRelationLoss(LossModule):
    """Module twin of :func:`oadp_relation_loss`; ``loss_weight`` multiplies the result (official 8)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)


def oadp_global_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""OADP's global-level distillation: squared error between the normalised image embeddings.

    .. math::
        L_{global} = \sum_{n=1}^{N} \Big\| \frac{g_n}{\|g_n\|_2} - c_n \Big\|_2^2

    with :math:`g_n` the global head's embedding of image :math:`n` (its last FPN level averaged over
    space, then projected) and :math:`c_n` CLIP's normalised embedding of the whole image.

    Args:
        student_embeddings: :math:`g_n`, the global head's embeddings (normalised inside).
        teacher_embeddings: :math:`c_n`, CLIP's image embeddings, L2-normalised (used as given, as the
            official code; detached inside).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the official code sums
            over images and dimensions (its ``MSELoss`` with ``reduction='sum'``), so ``'mean'`` is
            the sum; use ``reduction='none'`` and ``.mean()`` for the plain element mean;
            ``'sum'``: the sum; ``'none'``: the ``(N, D)`` squared differences.

    Shape:
        - student_embeddings, teacher_embeddings: :math:`(N, D)`
        - output: scalar, or :math:`(N, D)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_embeddings``.

    Reference:
        Luting Wang, Yi Liu, Penghui Du, Zihan Ding, Yue Liao, Qiaosong Qi, Biaolong Chen, Si Liu.
        "Object-Aware Distillation Pyramid for Open-Vocabulary Object Detection". CVPR 2023.
        arXiv:2303.05892.
        Official code: LutingWang/OADP@d641d28 (``configs/dp/models/global_.py`` ``loss_clip_global``:
        todd v0.3.0's ``MSELoss(reduction='sum')`` on ``GlobalHead``'s classifier projection).

    Example:
        >>> import torch
        >>> images, clip = torch.randn(2, 512), torch.randn(2, 512)
        >>> oadp_global_loss(images, clip).shape
        torch.Size([])

    Notes:
        The official configuration weights this term by 0.5 (linear warm-up over 200 iterations);
        being a sum over the images of one GPU, it grows with the per-GPU batch size.

        Under ``DistributedDataParallel`` this sum over the batch gets ``1 / world_size`` of the union
        batch's gradients (DDP averages); multiply ``loss_weight`` by the world size to train as one process
        would (:mod:`kdimpl.distributed`, behaviour ``'sum'``).
    """
    check_shapes(student_embeddings=(student_embeddings, "N D"), teacher_embeddings=(teacher_embeddings, "N D"))
    check_options(reduction=reduction)
    s, t = _unit(student_embeddings, teacher_embeddings)
    return reduce_loss((s - t).square(), "sum" if reduction == "mean" else reduction).to(student_embeddings.dtype)


@register_loss("oadp_global", function=oadp_global_loss, distributed="sum")
class OADPGlobalLoss(LossModule):
    """Module twin of :func:`oadp_global_loss`; ``loss_weight`` multiplies the result (official 0.5)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)


def oadp_adaptive_boxes(boxes: Tensor, image_size: Sequence[int] | Tensor, *, scale_ratio: float = 8.0) -> Tensor:
    r"""OADP's adaptive proposal transform: the square crop CLIP sees for each proposal.

    Each proposal of area :math:`wh` becomes the square of side :math:`\sqrt{r\,wh}`
    (:math:`r` = ``scale_ratio``) with the same centre, shifted, per axis, back inside the image
    when it crosses a border (the far border wins when it crosses both); an axis along which the
    square is longer than the image is not shifted.

    Args:
        boxes: ``(M, 4)`` xyxy proposals in pixels of the image.
        image_size: ``(height, width)`` of the image.
        scale_ratio: :math:`r`, the area of the crop over the proposal's (official 8).

    Returns:
        ``(M, 4)`` xyxy square crops (not clipped: a crop larger than the image overhangs it).
    """
    check_shapes(boxes=(boxes, "M 4"))
    size = torch.as_tensor(image_size, dtype=boxes.dtype, device=boxes.device).flip(-1)  # (W, H)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    side = (area * scale_ratio).sqrt()[:, None].expand(-1, 2)
    left_top, right_bottom = centre - side / 2, centre + side / 2
    offset = torch.where(left_top >= 0, torch.zeros_like(left_top), -left_top)
    offset = torch.where(right_bottom <= size, offset, size - right_bottom)
    offset = torch.where(side <= size, offset, torch.zeros_like(offset))
    return torch.cat([left_top + offset, right_bottom + offset], dim=-1)
