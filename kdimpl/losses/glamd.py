"""Global and local attention mask distillation (GLAMD), Jang, Shin et al., ECCV 2022 (unverified reconstruction)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_feature_pair, check_options
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..attention import channel_attention, spatial_attention

__all__ = ["glamd_local_attention", "glamd_patch_index"]


def _pair(grid: int | Sequence[int]) -> tuple[int, int]:
    rows, cols = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if rows < 1 or cols < 1:  # plain Python ints: checked while tracing too
        raise ValueError(f"grid must be positive (rows, cols), got {grid!r}")
    return int(rows), int(cols)


def glamd_patch_index(feature_size: Sequence[int], grid: int | Sequence[int], device=None) -> Tensor:
    """``(H, W)`` long tensor giving each cell's patch in a ``rows x cols`` grid (row-major).

    Patch ``r`` covers rows ``floor(r H / rows) .. floor((r + 1) H / rows) - 1``, so sizes differ by
    at most one cell when ``H`` is not a multiple of ``rows`` (likewise for columns).
    """
    rows, cols = _pair(grid)
    height, width = feature_size
    if rows > height or cols > width:
        raise ValueError(f"grid {rows}x{cols} has more patches than the {height}x{width} feature map has cells")
    row_starts = torch.arange(1, rows, device=device) * height // rows
    col_starts = torch.arange(1, cols, device=device) * width // cols
    row = (torch.arange(height, device=device)[:, None] >= row_starts).sum(dim=1)
    col = (torch.arange(width, device=device)[:, None] >= col_starts).sum(dim=1)
    return row[:, None] * cols + col[None, :]


def glamd_local_attention(
    features: Tensor, grid: int | Sequence[int], temperature: float = 0.5
) -> tuple[Tensor, Tensor]:
    r"""Spatial and channel attention computed inside each patch of a grid.

    For patch :math:`p` with :math:`|p|` cells,

    .. math::
        A^S_{loc}(F)_{i,j} = |p| \operatorname{softmax}_{(i,j) \in p}\Big(\frac{1}{T C}\sum_c |F_{c,i,j}|\Big),
        \qquad
        A^C_{loc}(F)_{c,p} = C \operatorname{softmax}_c\Big(\frac{1}{T |p|}\sum_{(i,j)\in p} |F_{c,i,j}|\Big)

    i.e. :func:`kdimpl.attention.spatial_attention` / :func:`~kdimpl.attention.channel_attention`
    restricted to one patch; each patch's spatial map averages to 1.

    Returns:
        ``(spatial, channel)``: ``(N, H, W)`` and ``(N, C, H, W)`` (each cell carries its patch's
        channel weights), float32 for half inputs.
    """
    x = upcast(features).abs()
    n, c, h, w = x.shape
    rows, cols = _pair(grid)
    index = glamd_patch_index((h, w), (rows, cols), x.device).reshape(h * w)
    member = F.one_hot(index, rows * cols).T.bool()  # (P, HW): which cells each patch holds
    counts = member.sum(dim=1)  # (P,)

    # a softmax per patch: the energy map with the other patches' cells masked out, (N, P, HW)
    energy = (x.mean(dim=1).reshape(n, 1, h * w) / temperature).masked_fill(~member, float("-inf"))
    per_patch = F.softmax(energy, dim=-1) * counts[:, None]
    spatial = per_patch.sum(dim=1)  # each cell lies in exactly one patch

    pooled = x.reshape(n, c, h * w) @ member.T.to(x.dtype) / counts  # (N, C, P): per-patch means
    channel = F.softmax(pooled / temperature, dim=1) * c
    return spatial.reshape(n, h, w), channel[:, :, index].reshape(n, c, h, w)


def glamd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    grid: int | Sequence[int] = 2,
    temperature: float = 0.5,
    global_weight: float = 1e-3,
    local_weight: float = 1e-3,
    reduction: str = "mean",
) -> Tensor:
    r"""Feature distillation weighted by a global and a patch-local attention mask (GLAMD).

    .. math::
        \mathcal{L} = \alpha \sum_{c,i,j} A^S_{glo} A^C_{glo} (F^T - F^S)^2
            + \beta \sum_{c,i,j} A^S_{loc} A^C_{loc} (F^T - F^S)^2

    with the teacher's global attentions over the whole map (:mod:`kdimpl.attention`) and its
    local attentions inside each patch of a ``grid`` (:func:`glamd_local_attention`). No boxes: the
    masks weight foreground and background alike.

    Args:
        student: student features, already projected to the teacher's channels.
        teacher: teacher features of the same shape (detached inside).
        grid: patches per side, an int or ``(rows, cols)``. Default: 2. Over FPN levels, give
            each level its own grid with one module per level:
            ``MultiLevelLoss([GLAMDLoss(grid=g) for g in (8, 4, 2, 2, 1)])``.
        temperature: softmax temperature ``T`` of all attentions. Default: 0.5.
        global_weight: :math:`\alpha`, the weight of the global-mask term. Default: 1e-3.
        local_weight: :math:`\beta`, the weight of the local-mask term. Default: 1e-3.
        reduction: ``'mean'`` (default) applies the paper's own normalisation, here the sum over
            channels and cells divided by the batch size ``N`` (the FGD convention this
            reconstruction follows; not the element mean: use ``reduction='none'`` and ``.mean()``
            for the plain element mean); ``'sum'`` sums; ``'none'`` returns the ``(N, C, H, W)``
            weighted squared errors.

    Shape:
        - student, teacher: :math:`(N, C, H, W)` with ``H >= rows``, ``W >= cols``
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Y. Jang, W. Shin (equal contribution) et al. "GLAMD: Global and Local Attention Mask
        Distillation for Object Detectors". ECCV 2022, LNCS 13670, doi:10.1007/978-3-031-20080-9_27 (no arXiv version).
        No official code found.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 10, 14), torch.randn(2, 8, 10, 14)
        >>> glamd_loss(s, t, grid=(2, 3)).shape
        torch.Size([])

    Notes:
        **Unverified.** Only the abstract could be read: the feature map is divided into patches
        and an attention mechanism is applied to the whole map (global mask) and to each patch
        (local masks), and background is distilled too. The attention form (FGD's spatial/channel
        attention of the teacher), the grid size, the absence of attention-transfer terms, the
        normalisation and the default weights are this library's choices, not the paper's.
    """
    check_feature_pair(student, teacher)
    check_options(temperature=temperature, global_weight=global_weight, local_weight=local_weight, reduction=reduction)
    n = student.shape[0]
    s = upcast(student)
    t = upcast(teacher.detach())
    global_map = spatial_attention(t, temperature)[:, None] * channel_attention(t, temperature)[:, :, None, None]
    local_spatial, local_channel = glamd_local_attention(t, grid, temperature)
    local_map = local_spatial[:, None] * local_channel
    weighted = (s - t).square() * (global_weight * global_map + local_weight * local_map)
    if reduction == "mean":
        return (weighted.sum() / max(n, 1)).to(student.dtype)
    return reduce_loss(weighted, reduction).to(student.dtype)


@register_loss("glamd", function=glamd_loss)
class GLAMDLoss(LossModule):
    """Module twin of :func:`glamd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        grid: int | Sequence[int] = 2,
        temperature: float = 0.5,
        global_weight: float = 1e-3,
        local_weight: float = 1e-3,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        _pair(grid)
        super().__init__(
            grid=grid,
            temperature=temperature,
            global_weight=global_weight,
            local_weight=local_weight,
            reduction=reduction,
            loss_weight=loss_weight,
        )
