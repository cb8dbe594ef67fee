"""G-DetKD's semantic-guided level attention: the shared embedding and the learnable temperature of SGFI."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GDetKDLevelAttention"]


class GDetKDLevelAttention(nn.Module):
    r"""Attention of each RoI over the student's pyramid levels, queried by the teacher's RoI feature.

    .. math::
        \alpha_r^l = \operatorname{softmax}_l\Big(
            \big\langle f_{embed}(S_r^l), f_{embed}(T_r) \big\rangle / \tau \Big)

    with :math:`f_{embed}` two 3x3 stride-2 convolutions without padding (a 7x7 RoI feature becomes
    one vector; larger inputs are flattened) shared by both sides, and :math:`\tau` a learnable
    temperature (initial value ``temperature``). This follows the third-party re-implementation in
    LutingWang/todd (``SGFILoss``), which has no activation between the two convolutions; the
    paper's description (as summarised by third parties) adds a ReLU, ``activation=True`` here.
    todd also takes the softmax over the RoIs (``dim=1`` of its ``(L, R)`` similarities), so its
    weights sum to 1 over the batch's RoIs for each level rather than over the levels for each RoI;
    ``normalize_over='rois'`` reproduces that, the default ``'levels'`` is the paper's soft matching.

    Args:
        channels: :math:`C` of the RoI features (teacher's, and the adapted student's).
        hidden_channels: output channels of the first convolution (todd: 128).
        embedding_channels: output channels of the second (todd: 64).
        temperature: initial :math:`\tau` (todd: 1.0).
        activation: put a ReLU between the convolutions (todd: no).
        normalize_over: ``'levels'`` (default, the paper): softmax over :math:`l`; ``'rois'``: over
            the RoIs, as todd's code.

    Shape:
        - student: :math:`(L, R, C, h, w)`; teacher: :math:`(R, C, h, w)`; output :math:`(L, R)`,
          summing to 1 over :math:`L` (over :math:`R` with ``normalize_over='rois'``).

    Example:
        >>> import torch
        >>> attention = GDetKDLevelAttention(8)
        >>> weights = attention(torch.randn(4, 3, 8, 7, 7), torch.randn(3, 8, 7, 7))
        >>> weights.shape, torch.allclose(weights.sum(0), torch.ones(3))
        (torch.Size([4, 3]), True)
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden_channels: int = 128,
        embedding_channels: int = 64,
        temperature: float = 1.0,
        activation: bool = False,
        normalize_over: str = "levels",
    ) -> None:
        super().__init__()
        if normalize_over not in ("levels", "rois"):
            raise ValueError(f"normalize_over must be 'levels' or 'rois', got {normalize_over!r}")
        self.normalize_over = normalize_over
        layers = [nn.Conv2d(channels, hidden_channels, 3, 2), nn.Conv2d(hidden_channels, embedding_channels, 3, 2)]
        if activation:
            layers.insert(1, nn.ReLU(inplace=True))
        self.embed = nn.Sequential(*layers)
        self.temperature = nn.Parameter(torch.tensor([float(temperature)]))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        levels, rois = student.shape[:2]
        keys = self.embed(student.flatten(0, 1)).flatten(1).unflatten(0, (levels, rois))
        query = self.embed(teacher).flatten(1)
        similarity = torch.einsum("lrd,rd->lr", keys, query)
        return F.softmax(similarity / self.temperature, dim=0 if self.normalize_over == "levels" else 1)
