"""FreeKD's frequency prompts and the 2-D Haar wavelet transform (zero padding) they work on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FreeKDPrompts", "freekd_haar_dwt", "freekd_haar_idwt"]


def freekd_haar_dwt(x: Tensor, levels: int = 3) -> tuple[Tensor, list[Tensor]]:
    r"""Multi-level 2-D Haar wavelet transform with zero padding, as ``pytorch_wavelets.DWTForward(wave='haar', mode='zero')``.

    Each level splits every ``2 x 2`` block :math:`\begin{psmallmatrix} a & b \\ c & d \end{psmallmatrix}`
    of the previous low band (zero-padded at the bottom/right to even size) into

    .. math::
        LL = \tfrac{a + b + c + d}{2}, \quad LH = \tfrac{a + b - c - d}{2}, \quad
        HL = \tfrac{a - b + c - d}{2}, \quad HH = \tfrac{a - b - c + d}{2}

    Args:
        x: ``(N, C, H, W)`` feature map.
        levels: :math:`J`, the number of decompositions. Default 3 (FreeKD).

    Returns:
        ``(low, highs)``: the coarsest ``LL`` band and a list of :math:`J` high bands, finest
        first, each ``(N, C, 3, H_j, W_j)`` with ``(LH, HL, HH)`` stacked on dim 2 and
        :math:`H_j = \lceil H_{j-1} / 2 \rceil`.

    Example:
        >>> import torch
        >>> low, highs = freekd_haar_dwt(torch.ones(1, 1, 4, 4), levels=2)
        >>> low.flatten().tolist(), [h.abs().sum().item() for h in highs]
        ([4.0], [0.0, 0.0])
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    highs = []
    low = x
    for _ in range(levels):
        height, width = low.shape[-2:]
        low = F.pad(low, (0, width % 2, 0, height % 2))
        a, b = low[..., 0::2, 0::2], low[..., 0::2, 1::2]
        c, d = low[..., 1::2, 0::2], low[..., 1::2, 1::2]
        highs.append(torch.stack([a + b - c - d, a - b + c - d, a - b - c + d], dim=-3) / 2)
        low = (a + b + c + d) / 2
    return low, highs


def freekd_haar_idwt(low: Tensor, highs: list[Tensor]) -> Tensor:
    """Inverse of :func:`freekd_haar_dwt` (``pytorch_wavelets.DWTInverse(wave='haar', mode='zero')``).

    Rebuilds from the coarsest level; a low band one row/column larger than the next high band
    (the padding of an odd size) is cropped first. The output has twice the size of
    ``highs[0]``: one row/column more than the transformed map where that was odd.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 3, 8, 6)
        >>> torch.allclose(freekd_haar_idwt(*freekd_haar_dwt(x)), x, atol=1e-6)
        True
    """
    for high in reversed(highs):
        height, width = high.shape[-2:]
        low = low[..., :height, :width]
        lh, hl, hh = high.unbind(dim=-3)
        a, b = (low + lh + hl + hh) / 2, (low + lh - hl - hh) / 2
        c, d = (low - lh + hl - hh) / 2, (low - lh - hl + hh) / 2
        blocks = torch.stack([torch.stack([a, b], dim=-1), torch.stack([c, d], dim=-1)], dim=-3)
        low = blocks.reshape(*low.shape[:-2], 2 * height, 2 * width)
    return low


class FreeKDPrompts(nn.Module):
    r"""Frequency prompts of FreeKD (Zhang et al., CVPR 2024): one set of ``T`` tokens per wavelet band.

    Prompt set 0 serves the low band ``LL`` of a 3-level Haar transform
    (:func:`freekd_haar_dwt`), sets 1-3 the high bands of levels 1-3 (finest first). A set's
    masks on a band are pixel-wise attention on the band summed over its ``(LH, HL, HH)``
    orientations:

    .. math::
        M^{(j)}_i = \sigma\big(\mathbf{p}^{(j)\top}_i (LH_j + HL_j + HH_j)\big), \qquad
        M^{(0)}_i = \sigma\big(\mathbf{p}^{(0)\top}_i LL_3\big)

    **Prompt learning** (teacher frozen, only the prompts train): :meth:`forward` masks every
    band with its set's masks (summed over the ``T`` prompts), transforms back and returns that
    feature for the detector's head, with the four mask sets; the prompts minimise the detection
    loss plus the sum of the sets' Dice diversities (:func:`kdimpl.maskd_mask_diversity` of
    each). **Distillation**: :func:`kdimpl.freekd_loss` uses the high-band masks (sets 1-3) of
    the teacher feature.

    The parameter ``mask_token`` (shape ``(4, T, C)``, initialised :math:`\mathcal{N}(0, 0.01^2)`)
    is the official ``MaskModule.mask_token`` (Gumpest/FreeKD@e0874f5). The official module also
    builds a mask-weighting branch (``prob.*``) that neither stage uses; it is left out here, so
    load a released checkpoint with those keys removed.

    Args:
        channels: :math:`C`, the teacher's channel count.
        num_tokens: :math:`T`, prompts per band. Default 6 (the released RetinaNet config; the
            official class default is 2).

    Shape:
        - input: :math:`(N, C, H, W)`; :meth:`masks` of band ``j``: :math:`(N, T, H_j, W_j)`;
          :meth:`forward`: ``(masked, masks)`` with ``masked`` :math:`(N, C, H, W)` and the list of
          four mask sets (low band first).

    Example:
        >>> import torch
        >>> from kdimpl import maskd_mask_diversity
        >>> prompts = FreeKDPrompts(8, num_tokens=4)
        >>> masked, masks = prompts(torch.randn(2, 8, 16, 24))  # prompt-learning stage
        >>> masked.shape, [tuple(m.shape[-2:]) for m in masks]
        (torch.Size([2, 8, 16, 24]), [(2, 3), (8, 12), (4, 6), (2, 3)])
        >>> sum(maskd_mask_diversity(m) for m in masks).shape
        torch.Size([])
    """

    levels = 3

    def __init__(self, channels: int, num_tokens: int = 6) -> None:
        super().__init__()
        if channels < 1 or num_tokens < 1:
            raise ValueError(f"channels and num_tokens must be >= 1, got {channels} and {num_tokens}")
        self.channels, self.num_tokens = channels, num_tokens
        self.mask_token = nn.Parameter(torch.empty(self.levels + 1, num_tokens, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.mask_token, 0.0, 0.01)

    def masks(self, band: Tensor, index: int) -> Tensor:
        """``(N, T, H_j, W_j)`` masks of prompt set ``index`` on an ``(N, C, H_j, W_j)`` band (orientations summed)."""
        return torch.sigmoid(torch.einsum("tc,nchw->nthw", self.mask_token[index], band))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        low, highs = freekd_haar_dwt(x, self.levels)
        masks = [self.masks(low, 0)] + [self.masks(high.sum(dim=2), j + 1) for j, high in enumerate(highs)]
        low = masks[0].sum(dim=1, keepdim=True) * low
        highs = [m.sum(dim=1)[:, None, None] * high for m, high in zip(masks[1:], highs)]
        return freekd_haar_idwt(low, highs)[..., : x.shape[-2], : x.shape[-1]], masks
