"""Masked distillation with receptive tokens (MasKD), Huang et al., ICLR 2023."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._base import LossModule
from .._checks import check_feature_pair, check_modules, check_options, check_shape
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..adapters.maskd import MasKDTokens

__all__ = ["maskd_mask_diversity"]


def maskd_mask_diversity(masks: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Dice coefficient between the masks of different tokens: MasKD's diversity term.

    Minimised with the task loss while the tokens learn, it keeps the masks apart:

    .. math::
        \mathcal{L}_{div} = \frac{1}{N T (T - 1)} \sum_n \sum_{i \ne j}
            \frac{2 \sum_p M_{n,i,p} M_{n,j,p}}{\sum_p M_{n,i,p}^2 + \sum_p M_{n,j,p}^2}

    Args:
        masks: the ``(N, T, H, W)`` masks of one level (:meth:`kdimpl.MasKDTokens.masks`).
        reduction: ``'mean'`` (default) is the official mean over the ``N T (T - 1)`` ordered
            pairs of different tokens; ``'sum'`` sums; ``'none'`` returns the ``(N, T, T - 1)``
            pair coefficients.

    Returns:
        A scalar (zero for fewer than two tokens), or the pair coefficients.

    Example:
        >>> import torch
        >>> masks = torch.rand(2, 4, 6, 10)
        >>> float(maskd_mask_diversity(masks[:, :1].expand(2, 3, 6, 10)))  # identical masks
        1.0

    Notes:
        The official ``dice_coeff`` (hunto/MasKD@b5af34f) adds 1e-12 to each sum of squares and
        returns NaN for a single token (0 / 0); here the denominator is clamped at the dtype's
        smallest normal number and a single token gives 0.
    """
    check_shape(masks, "masks", "N T H W")
    m = upcast(masks).flatten(2)
    n, t, _ = m.shape
    dot = m @ m.transpose(1, 2)
    squares = torch.diagonal(dot, dim1=1, dim2=2)
    dice = 2 * dot / (squares[:, :, None] + squares[:, None, :]).clamp(min=torch.finfo(m.dtype).tiny)
    off_diagonal = ~torch.eye(t, dtype=torch.bool, device=m.device)
    pairs = dice[:, off_diagonal].reshape(n, t, max(t - 1, 0))
    return reduce_loss(pairs, reduction).to(masks.dtype)


def maskd_loss(
    student: Tensor,
    teacher: Tensor,
    tokens_teacher: nn.Module,
    *,
    student_masks: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""MasKD: distil the student's feature under each receptive token's mask of the teacher feature.

    With the masks :math:`M_i = \sigma(\mathbf{t}_i^\top F^T)` and per-image mask weights
    :math:`w_{n,i}` of :class:`kdimpl.MasKDTokens` (learned beforehand, see there), both features
    are masked and compared, each mask's error normalised by the mask's area:

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_{n=1}^{N} \sum_{i=1}^{T} w_{n,i} \frac{1}{C} \sum_{c=1}^{C}
            \frac{\sum_{h,w} \big(M_{n,i,h,w} F^S_{n,c,h,w} - M_{n,i,h,w} F^T_{n,c,h,w}\big)^2}
                 {\sum_{h,w} M_{n,i,h,w}}

    Without the weighting module :math:`w_{n,i} = 1 / T` (the official plain mean). With
    ``student_masks=True`` the masks are :math:`M_i \odot \sigma(\mathbf{t}_i^\top F^S)`, the
    student's own masks taken without gradient (the official ``custom_mask``, switched on after
    ``custom_mask_warmup`` iterations: 5000 to 7330 in the detection configs).

    Args:
        student: student feature map, already projected to the teacher's channels (the official
            configs use a 1x1 ``align`` convolution, :class:`kdimpl.ChannelAdapter`).
        teacher: teacher feature map of the same shape (detached inside).
        tokens_teacher: the level's :class:`kdimpl.MasKDTokens` (any module with the same
            ``masks`` and ``mask_weights`` methods), applied to the detached teacher. As in the
            official code the masks are *not* detached: the tokens and the weighting module
            receive gradients from this loss (see Notes).
        student_masks: multiply the teacher's masks by the student's (official ``custom_mask``
            after the warm-up). Default ``False``; pass ``student_masks=step >= warmup`` per call.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the per-image
            losses (the weighted sum over masks of the channel mean of the area-normalised
            errors) averaged over the ``N`` images, as the official code does; ``'sum'`` sums
            them; ``'none'`` returns the ``(N,)`` per-image losses, whose ``.mean()`` is
            ``'mean'``.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Tao Huang, Yuan Zhang, Shan You, Fei Wang, Chen Qian, Jian Cao, Chang Xu. "Masked
        Distillation with Receptive Tokens". ICLR 2023. arXiv:2205.14589.
        Official code: hunto/MasKD@b5af34f ``mmrazor/mmrazor/models/losses/maskd.py::MasKDLoss``
        (one level; the official class sums its levels and multiplies by ``loss_weight``: 1 for
        Faster/Cascade R-CNN, 7 for RetinaNet, 10 for FCOS and RepPoints), matched by the parity
        tests.

    Example:
        >>> import torch
        >>> from kdimpl import MasKDTokens, MultiLevelLoss
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
        >>> maskd_loss(s, t, MasKDTokens(8, num_tokens=4)).shape
        torch.Size([])
        >>> # three FPN levels, each with its own tokens; freeze them for distillation
        >>> criterion = MultiLevelLoss([MasKDLoss(channels=8) for _ in range(3)], loss_weight=7.0)
        >>> criterion.requires_grad_(False)  # doctest: +ELLIPSIS
        MultiLevelLoss(...)
        >>> students = [torch.randn(2, 8, 12 // 2**l, 20 // 2**l) for l in range(3)]
        >>> criterion(students, [x + 0.1 for x in students]).shape
        torch.Size([])

    Notes:
        Gradients of the masks: the official loss computes the masks from the teacher feature
        with the tokens' parameters and does not detach them, so ``backward`` fills the
        gradients of the tokens and of the weighting module. The official distillation configs
        keep them fixed only through the optimiser (``lr_mult=0, decay_mult=0`` for
        ``distiller.losses``); their gradients still enter the global gradient norm that
        ``grad_clip`` (max norm 35) clips. This function keeps that behaviour for parity:
        freeze the tokens (``requires_grad_(False)``) or leave them out of the optimiser, or the
        distillation loss trains the masks too (towards pixels where the student already
        matches). The student receives no gradient through the masks (they depend on the
        teacher, and the student masks are taken without gradient).

        The official loss divides by the mask area with no epsilon, so a mask that underflows
        to zero everywhere (features of magnitude ~1e3) gives NaN; here the area is clamped at
        the dtype's smallest normal number and such a mask contributes 0.
    """
    check_feature_pair(student, teacher)
    check_options(reduction=reduction)
    check_modules(tokens_teacher=tokens_teacher)
    s = upcast(student)
    t = upcast(teacher.detach())
    masks = tokens_teacher.masks(t)
    if student_masks:
        with torch.no_grad():
            own = tokens_teacher.masks(s)
        masks = masks * own
    area = masks.sum(dim=(2, 3)).clamp(min=torch.finfo(masks.dtype).tiny)
    # sum_hw (M s - M t)^2 = sum_hw M^2 (s - t)^2, one (N, T, C) contraction
    error = torch.einsum("nthw,nchw->ntc", masks.square(), (s - t).square()) / area[:, :, None]
    per_mask = error.mean(dim=2)
    weights = tokens_teacher.mask_weights(t)
    per_image = per_mask.mean(dim=1) if weights is None else (per_mask * weights).sum(dim=1)
    return reduce_loss(per_image, reduction).to(student.dtype)


@register_loss("maskd", function=maskd_loss)
class MasKDLoss(LossModule):
    """Module twin of :func:`maskd_loss`; ``loss_weight`` multiplies the result (official: 1 to 10, see there).

    Args:
        channels: the teacher's channel count ``C``. Given, the loss owns the level's tokens
            (``tokens_teacher``: :class:`kdimpl.MasKDTokens`), so ``load_state_dict`` takes the
            learned masks and ``MultiLevelLoss([...])`` holds every level's; ``None`` (default):
            pass ``tokens_teacher`` to ``forward``.
        num_tokens: ``T`` for the owned tokens. Default 6.
        weighting: build the owned tokens with the mask-weighting module. Default ``True``.
    """

    def __init__(
        self,
        *,
        channels: int | None = None,
        num_tokens: int = 6,
        weighting: bool = True,
        student_masks: bool = False,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        tokens = {} if channels is None else {"tokens_teacher": MasKDTokens(channels, num_tokens, weighting)}
        super().__init__(**tokens, student_masks=student_masks, reduction=reduction, loss_weight=loss_weight)
