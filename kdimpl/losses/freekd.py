"""Frequency distillation with semantic frequency prompts (FreeKD), Zhang et al., CVPR 2024."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._base import LossModule
from .._checks import check_feature_pair, check_modules, check_options
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..adapters.freekd import FreeKDPrompts, freekd_haar_dwt

__all__: list[str] = []


def freekd_loss(
    student: Tensor,
    teacher: Tensor,
    prompts_teacher: nn.Module,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""FreeKD as released: masked L1 distillation of the high-frequency wavelet bands.

    Both features go through a 3-level Haar transform (:func:`kdimpl.freekd_haar_dwt`); on each
    level :math:`j` the teacher's high bands, summed over orientations, give the prompt masks
    :math:`M^{(j)}_i` (:class:`kdimpl.FreeKDPrompts`, learned beforehand), and the student's
    bands match the teacher's under every mask:

    .. math::
        \mathcal{L} = \sum_{j=1}^{3} \frac{1}{N T C \, 3 H_j W_j}
            \sum_{n, i, c, o, h, w} \big| M^{(j)}_{n,i,h,w} B^{S,j}_{n,c,o,h,w}
                - M^{(j)}_{n,i,h,w} B^{T,j}_{n,c,o,h,w} \big|

    with :math:`B^{j}` the ``(LH, HL, HH)`` bands (:math:`o`) of level :math:`j`. The low band is
    not distilled (the official loss computes it and leaves it out).

    Args:
        student: student feature map, already projected to the teacher's channels (the
            official config uses a 1x1 ``align`` convolution, :class:`kdimpl.ChannelAdapter`).
        teacher: teacher feature map of the same shape (detached inside).
        prompts_teacher: the level's :class:`kdimpl.FreeKDPrompts` (prompt sets 1-3 are used),
            applied to the detached teacher's bands. As in the official code the masks are not
            detached: the prompts receive gradients from this loss (see Notes).
        reduction: ``'mean'`` (default) applies the paper's own normalisation, that of the
            official code: per level, the mean over the ``N T C 3 H_j W_j`` masked band
            elements, summed over the three levels; ``'sum'`` sums the ``(N,)`` per-image
            losses; ``'none'`` returns them (each image's loss computed alone), and their
            ``.mean()`` is ``'mean'``. The three levels have different sizes, so there is no
            plain element mean.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Yuan Zhang, Tao Huang, Jiaming Liu, Tao Jiang, Kuan Cheng, Shanghang Zhang. "FreeKD:
        Knowledge Distillation via Semantic Frequency Prompt". CVPR 2024. arXiv:2311.12079.
        Official code: Gumpest/FreeKD@e0874f5 ``mmrazor/models/losses/freekd.py::FreeKDLoss``
        (one level; the official class sums its levels), matched by the parity tests.

    Example:
        >>> import torch
        >>> from kdimpl import FreeKDPrompts, MultiLevelLoss
        >>> s, t = torch.randn(2, 8, 16, 24), torch.randn(2, 8, 16, 24)
        >>> freekd_loss(s, t, FreeKDPrompts(8)).shape
        torch.Size([])
        >>> # three FPN levels, each with its own prompts; freeze them for distillation
        >>> criterion = MultiLevelLoss([FreeKDLoss(channels=8) for _ in range(3)])
        >>> criterion.requires_grad_(False)  # doctest: +ELLIPSIS
        MultiLevelLoss(...)
        >>> students = [torch.randn(2, 8, 32 // 2**l, 40 // 2**l) for l in range(3)]
        >>> criterion(students, [x + 0.1 for x in students]).shape
        torch.Size([])

    Notes:
        What this covers: the paper also describes a position-aware relational frequency loss;
        the released loss has no such term (it is this masked L1 only), and it is not
        implemented here. The released RetinaNet config adds a plain feature MSE (weight 5)
        beside this loss (weight 1).

        The band names: the official code unpacks the transform's three levels as ``cH, cV,
        cD``; they are the levels (finest first), each holding all three orientations, not
        the horizontal/vertical/diagonal bands of one level.

        Gradients of the masks: the official loss does not detach them, so ``backward`` fills
        the prompts' gradients; the official config keeps the prompts fixed only through the
        optimiser (``lr_mult=0`` for ``distiller.losses``), and their gradients still count in
        the clipped gradient norm. Freeze the prompts (``requires_grad_(False)``) or leave them
        out of the optimiser. The wavelet transform is written in torch
        (:func:`kdimpl.freekd_haar_dwt`, the official ``pytorch_wavelets`` Haar transform with
        zero padding).
    """
    check_feature_pair(student, teacher)
    check_options(reduction=reduction)
    check_modules(prompts_teacher=prompts_teacher)
    s = upcast(student)
    t = upcast(teacher.detach())
    n, c = s.shape[:2]
    _, highs_s = freekd_haar_dwt(s, 3)
    _, highs_t = freekd_haar_dwt(t, 3)
    per_image = s.new_zeros(n)
    for j, (band_s, band_t) in enumerate(zip(highs_s, highs_t)):
        masks = prompts_teacher.masks(band_t.sum(dim=2), j + 1)
        # |M B^S - M B^T| = M |B^S - B^T| (M > 0): contract masks with the channel/orientation sum
        distance = (band_s - band_t).abs().sum(dim=(1, 2))
        count = masks.shape[1] * c * 3 * distance.shape[-2] * distance.shape[-1]
        per_image = per_image + torch.einsum("nthw,nhw->n", masks, distance) / count
    return reduce_loss(per_image, reduction).to(student.dtype)


@register_loss("freekd", function=freekd_loss)
class FreeKDLoss(LossModule):
    """Module twin of :func:`freekd_loss`; ``loss_weight`` multiplies the result (official: 1).

    Args:
        channels: the teacher's channel count ``C``. Given, the loss owns the level's prompts
            (``prompts_teacher``: :class:`kdimpl.FreeKDPrompts`), so ``MultiLevelLoss([...])``
            holds every level's; ``None`` (default): pass ``prompts_teacher`` to ``forward``.
        num_tokens: ``T`` for the owned prompts. Default 6.
    """

    def __init__(
        self,
        *,
        channels: int | None = None,
        num_tokens: int = 6,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        prompts = {} if channels is None else {"prompts_teacher": FreeKDPrompts(channels, num_tokens)}
        super().__init__(**prompts, reduction=reduction, loss_weight=loss_weight)
