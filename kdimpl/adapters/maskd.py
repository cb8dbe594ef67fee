"""MasKD's receptive tokens: learnable embeddings whose pixel-wise attention on a feature map gives soft masks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MasKDTokens"]


class MasKDTokens(nn.Module):
    r"""Receptive tokens and mask-weighting module of MasKD (Huang et al., ICLR 2023).

    ``T`` learnable tokens :math:`\mathbf{t}_i \in \mathbb{R}^C` give one soft mask each by
    pixel-wise attention on a feature map, and the optional mask-weighting module gives each
    image's masks softmax weights:

    .. math::
        M_i = \sigma\big(\mathbf{t}_i^\top F\big) \in (0, 1)^{H \times W}, \qquad
        w = \operatorname{softmax}_i\big(\mathrm{Conv1x1}(\mathrm{AvgPool}(\mathrm{Conv3x3}(F)))\big)

    Two stages use it. **Mask learning** (teacher frozen, only the tokens train): the detector's
    head receives :meth:`forward`'s masked feature :math:`\sum_i w_i M_i \odot F` instead of
    ``F``, and the tokens minimise the detection loss plus the Dice diversity
    :func:`kdimpl.maskd_mask_diversity` of the masks. **Distillation**: :func:`kdimpl.maskd_loss`
    masks both features with :meth:`masks` of the teacher feature and weights the masks with
    :meth:`mask_weights`.

    Parameter names (``mask_token``, ``prob.0``, ``prob.2``) and initialisation (tokens
    :math:`\mathcal{N}(0, 0.01^2)`, convolutions :math:`\mathcal{N}(0, 2 / \text{fan-out})` with zero
    bias) are those of the official ``MaskModule`` (hunto/MasKD@b5af34f), so the released
    mask checkpoints load after stripping the ``mask_modules.<level>.`` prefix.

    Args:
        channels: :math:`C`, the teacher's channel count.
        num_tokens: :math:`T`, the number of tokens (masks). Default 6 (the detection configs).
        weighting: build the mask-weighting module (official ``weight_mask``, ``True`` in the
            detection configs); without it the masks are weighted equally (:meth:`mask_weights`
            returns ``None``; :meth:`forward` then sums the masked features unweighted).

    Shape:
        - input: :math:`(N, C, H, W)`; :meth:`masks`: :math:`(N, T, H, W)`;
          :meth:`mask_weights`: :math:`(N, T)`; :meth:`forward`: ``(masked, masks)``, the
          :math:`(N, C, H, W)` masked feature and the masks.

    Example:
        >>> import torch
        >>> from kdimpl import maskd_mask_diversity
        >>> tokens = MasKDTokens(8, num_tokens=4)
        >>> masked, masks = tokens(torch.randn(2, 8, 6, 10))  # mask-learning stage
        >>> masked.shape, masks.shape, maskd_mask_diversity(masks).shape
        (torch.Size([2, 8, 6, 10]), torch.Size([2, 4, 6, 10]), torch.Size([]))
    """

    def __init__(self, channels: int, num_tokens: int = 6, weighting: bool = True) -> None:
        super().__init__()
        if channels < 1 or num_tokens < 1:
            raise ValueError(f"channels and num_tokens must be >= 1, got {channels} and {num_tokens}")
        self.channels, self.num_tokens, self.weighting = channels, num_tokens, weighting
        self.mask_token = nn.Parameter(torch.empty(num_tokens, channels))
        self.prob: nn.Module | None = None
        if weighting:
            self.prob = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, padding=1),
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(channels, num_tokens, kernel_size=1),
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.mask_token, 0.0, 0.01)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)

    def masks(self, x: Tensor) -> Tensor:
        """The ``(N, T, H, W)`` soft masks :math:`\\sigma(\\mathbf{t}_i^\\top F)` of a feature map."""
        return torch.sigmoid(torch.einsum("tc,nchw->nthw", self.mask_token, x))

    def mask_weights(self, x: Tensor) -> Tensor | None:
        """The ``(N, T)`` softmax weights of the masks, or ``None`` without the weighting module."""
        if self.prob is None:
            return None
        return torch.softmax(self.prob(x).flatten(1), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        masks = self.masks(x)
        weights = self.mask_weights(x)
        weighted = masks if weights is None else masks * weights[:, :, None, None]
        return weighted.sum(dim=1, keepdim=True) * x, masks
