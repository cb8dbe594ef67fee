"""FGD's global-context block (GcBlock), one instance per side, trained with the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FGDGlobalContext"]


class FGDGlobalContext(nn.Module):
    r"""Global-context (GcBlock) relation module of FGD, Eq. 9.

    .. math::
        \mathcal{R}(F) = F + W_{v2}\,\mathrm{ReLU}\Big(\mathrm{LN}\big(W_{v1}
            \textstyle\sum_{j=1}^{N_p} \frac{e^{W_k F_j}}{\sum_m e^{W_k F_m}} F_j\big)\Big)

    ``W_k`` is a 1x1 convolution ``C -> 1`` (the context attention over positions), ``W_{v1}``,
    ``W_{v2}`` are 1x1 convolutions ``C -> C/2 -> C`` around a LayerNorm over ``(C/2, 1, 1)``.
    FGD uses one block for the student and a separate one for the teacher; both are trained
    (the teacher block receives gradients through the global loss, the teacher features do not).
    ``FGDLoss(channels=C)`` builds and owns the pair (``global_student``, ``global_teacher``).

    Initialisation follows the official code (yzd-v/FGD ``reset_parameters``): ``W_k`` is
    Kaiming-normal (fan-in) with zero bias and the last convolution is all zeros, so the block
    starts as the identity.

    Args:
        channels: ``C``, the (teacher) channel count.

    Shape:
        - input: :math:`(N, C, H, W)`; output: the same.

    Example:
        >>> import torch
        >>> block = FGDGlobalContext(8)
        >>> x = torch.randn(2, 8, 5, 7)
        >>> torch.equal(block(x), x)  # identity at initialisation
        True
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"channels must be >= 2 (the bottleneck has channels // 2), got {channels}")
        hidden = channels // 2
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        last = self.channel_add[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def context(self, x: Tensor) -> Tensor:
        """Attention-pooled context ``(N, C, 1, 1)``: a softmax over positions of ``W_k x`` weights ``x``."""
        n, c, h, w = x.shape
        # W_k x as the channel contraction it is (equal to the 1x1 convolution with these weights): under
        # torch.compile, inductor's lowering of a convolution's backward specialises the map's size, so a
        # convolution here would compile again for every feature size (torch 2.13).
        logits = torch.einsum("nchw,c->nhw", x, self.conv_mask.weight.flatten()) + self.conv_mask.bias
        weights = F.softmax(logits.reshape(n, 1, h * w), dim=-1)
        return torch.bmm(x.reshape(n, c, h * w), weights.transpose(1, 2)).reshape(n, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.channel_add(self.context(x))
