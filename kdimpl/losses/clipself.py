"""CLIPSelf: a CLIP ViT distils its image-level crop embeddings into its dense features, Wu et al., ICLR 2024."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_boxes, check_image_size, check_options, check_shape, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..masks import image_hw
from ..ops import padded_boxes

__all__ = ["clipself_region_embeddings"]


def _axis_weights(start: Tensor, size: Tensor, length: int) -> Tensor:
    """``(N, M, length)`` weights of the cells along one axis: the mean over the RoI's samples of their bilinear weights."""
    count = torch.ceil(size).clamp(min=0)
    samples = int(count.max()) if count.numel() else 0  # the adaptive sample count (torchvision sampling_ratio=-1)
    steps = torch.arange(samples, device=start.device, dtype=start.dtype)
    coords = start[..., None] + (steps + 0.5) * (size / count.clamp(min=1))[..., None]  # (N, M, S)
    used = (steps < count[..., None]) & (coords >= -1) & (coords <= length)
    clamped = coords.clamp(0, length - 1)
    cells = torch.arange(length, device=start.device, dtype=start.dtype)
    hat = (1 - (clamped[..., None] - cells).abs()).clamp(min=0)  # (N, M, S, length) bilinear weights
    return (hat * used[..., None]).sum(dim=2) / count.clamp(min=1)[..., None]


def clipself_region_embeddings(
    dense: Tensor, boxes: Sequence[Tensor] | Tensor, image_size: Sequence[int] | Tensor
) -> tuple[Tensor, Tensor]:
    r"""Region embeddings pooled from a dense feature map: RoIAlign to one bin, as CLIPSelf's student does.

    Each box is mapped to the map (``boxes * map size / image_size``), shifted by half a cell
    (``aligned=True``) and averaged over ``ceil(h) x ceil(w)`` bilinear samples, ``h x w`` the box
    size in cells: ``torchvision.ops.roi_align(dense, boxes, (1, 1), spatial_scale, -1,
    aligned=True)``, computed separably over the two axes without torchvision.

    Args:
        dense: ``(N, D, H, W)`` dense features (CLIPSelf's EVA-CLIP student L2-normalises each
            patch's embedding before pooling: pass ``F.normalize(dense, dim=1)`` for that).
        boxes: per-image xyxy boxes in pixels of the input image, a sequence of ``N`` tensors
            ``(M_i, 4)`` or one padded ``(N, M, 4)`` tensor.
        image_size: ``(height, width)`` of the input image, or ``(N, 2)``.

    Returns:
        The ``(N, M, D)`` region embeddings (``M`` the largest box count; padding rows are zero)
        and the ``(N, M)`` bool mask of real boxes, ready for :func:`clipself_loss`'s
        ``valid_mask``.

    Example:
        >>> import torch
        >>> dense = torch.randn(2, 8, 4, 4)
        >>> boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0]])]
        >>> regions, valid = clipself_region_embeddings(dense, boxes, (32, 32))
        >>> regions.shape, valid.tolist()
        (torch.Size([2, 2, 8]), [[True, False], [True, True]])
        >>> torch.allclose(regions[0, 0], dense[0].mean(dim=(1, 2)))  # the whole map: its mean
        True
    """
    check_shape(dense, "dense", "N D H W")
    check_boxes(boxes, dense.shape[0], name="boxes")
    check_image_size(image_size, dense.shape[0], dense)
    n, _, height, width = dense.shape
    x = upcast(dense)
    padded, valid = padded_boxes(boxes, n, dtype=x.dtype, device=x.device)
    img_h, img_w = image_hw(image_size, n, padded)
    scale_x, scale_y = width / img_w, height / img_h  # (N, 1)
    wy = _axis_weights(padded[..., 1] * scale_y - 0.5, (padded[..., 3] - padded[..., 1]) * scale_y, height)
    wx = _axis_weights(padded[..., 0] * scale_x - 0.5, (padded[..., 2] - padded[..., 0]) * scale_x, width)
    regions = torch.einsum("nmh,ndhw,nmw->nmd", wy, x, wx) * valid[..., None]
    return regions.to(dense.dtype), valid


def clipself_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    valid_mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""CLIPSelf: align the student's region embeddings with the frozen teacher's embeddings of the crops.

    With :math:`f^S_{n,m}` the embedding of box :math:`m` of image :math:`n` pooled from the
    student ViT's dense feature map (:func:`clipself_region_embeddings`) and :math:`f^T_{n,m}`
    the frozen teacher CLIP's image embedding of the same box cropped from the image, over the
    :math:`K` real boxes of the batch:

    .. math::
        \mathcal{L} = 1 - \frac{1}{K} \sum_{(n, m)\,\text{real}}
            \frac{f^S_{n,m}}{\lVert f^S_{n,m} \rVert} \cdot \frac{f^T_{n,m}}{\lVert f^T_{n,m} \rVert}

    Args:
        student: ``(N, M, D)`` student region embeddings (padded per image).
        teacher: ``(N, M, D)`` teacher crop embeddings (detached inside).
        valid_mask: ``(N, M)`` bool mask of the real boxes (the official data's fifth box
            column ``> 0.5``); ``None``: all are real.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the cosine
            distance :math:`1 - \cos` summed over the real boxes of the batch and divided by
            their number :math:`K` (averaged over processes inside
            :func:`kdimpl.distributed.global_normalisers`); ``'sum'`` sums; ``'none'`` returns the
            ``(N, M)`` distances (zero at padding). Use ``'none'`` and divide by
            ``valid_mask.sum()`` for the same mean.

    Shape:
        - student, teacher: :math:`(N, M, D)`; valid_mask: :math:`(N, M)`
        - output: scalar, or :math:`(N, M)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Size Wu, Wenwei Zhang, Lumin Xu, Sheng Jin, Xiangtai Li, Wentao Liu, Chen Change Loy.
        "CLIPSelf: Vision Transformer Distills Itself for Open-Vocabulary Dense Prediction".
        ICLR 2024. arXiv:2310.01403.
        Official code: wusize/CLIPSelf@1c7fe9c ``src/training/clipself.py::CLIPSelf`` (the
        loss, matched by the parity tests) with the region pooling of
        ``src/open_clip/eva_clip/eva_vit_model.py::EVAVisionTransformer.extract_roi_features``.

    Example:
        >>> import torch
        >>> student, teacher = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
        >>> valid = torch.tensor([[True, True, False], [True, False, False]])
        >>> clipself_loss(student, teacher, valid_mask=valid).shape
        torch.Size([])
        >>> abs(float(clipself_loss(teacher, teacher))) < 1e-6
        True

    Notes:
        The official loss is multiplied by ``cosine_weight`` (1 in the released scripts): use
        the twin's ``loss_weight``. The teacher and student are the same CLIP ViT at the start
        (the teacher frozen, the student fine-tuned); the crops are either a random grid of
        image patches or region proposals. An empty set of boxes gives 0 here (the official
        mean over no boxes is NaN).

        Under ``DistributedDataParallel`` each process divides by its own box count unless the
        call runs inside :func:`kdimpl.distributed.global_normalisers` (``distributed="count"``).
    """
    check_shapes(student=(student, "N M D"), teacher=(teacher, "N M D"))
    check_options(reduction=reduction)
    if valid_mask is None:
        valid_mask = torch.ones(student.shape[:2], dtype=torch.bool, device=student.device)
    check_shapes(student=(student, "N M D"), valid_mask=(valid_mask, "N M any"))
    s = F.normalize(upcast(student), dim=-1)
    t = F.normalize(upcast(teacher.detach()), dim=-1)
    valid = valid_mask.bool()
    distance = torch.where(valid, 1 - (s * t).sum(dim=-1), 0.0)
    count = valid.sum().to(distance.dtype)
    return reduce_loss(distance, reduction, avg_factor=count).to(student.dtype)


@register_loss("clipself", function=clipself_loss, distributed="count")
class CLIPSelfLoss(LossModule):
    """Module twin of :func:`clipself_loss`; ``loss_weight`` multiplies the result (official ``cosine_weight``: 1)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
