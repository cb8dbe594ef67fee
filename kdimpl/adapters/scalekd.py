"""Learnable pieces of ScaleKD (Zhu et al., CVPR 2023): the scale-decoupled feature block and the
multi-scale cross-attention of the cross-scale assistant.

Verification level: unverified. The paper's text could not be read here and there is no official
code; the structure follows secondary descriptions of the paper (see the Notes of each class).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ScaleDecoupledFeature", "MultiScaleCrossAttention"]


class ScaleDecoupledFeature(nn.Module):
    r"""Scale-decoupled feature (SDF) block: one feature map to ``B`` scale-specific embeddings.

    Each branch is a residual bottleneck whose middle 3x3 convolution has its own dilation
    :math:`d_b`; the weights are shared between branches, so the branches differ only in receptive field:

    .. math::
        E_b(X) = X + W_3\,\mathrm{ReLU}\big(W_2^{(d_b)} * \mathrm{ReLU}(W_1 X)\big), \qquad b = 1..B

    Args:
        channels: input channels ``C``.
        dilations: one dilation per branch (default ``(1, 2, 3)``: small dilations for small objects).
        hidden_channels: width of the bottleneck (default ``C // 4``).

    Shape:
        - input: :math:`(N, C, H, W)`; output: :math:`(N, B, C, H, W)`.

    Reference:
        Yichen Zhu, Qiqi Zhou, Ning Liu, Zhiyuan Xu, Zhicai Ou, Xiaofeng Mou, Jian Tang. "ScaleKD:
        Distilling Scale-Aware Knowledge in Small Object Detector". CVPR 2023, pp. 19723-19733.
        No official code (deep-optimization/ScaleKD is an unrelated NeurIPS 2024 paper).

    Notes:
        Unverified: three parallel ResNet-style 1x1/3x3/1x1 branches with dilations {1, 2, 3} and shared
        weights come from secondary summaries of the paper; normalisation layers and the per-branch
        MLP that the summaries mention before concatenation are not included.

    Example:
        >>> import torch
        >>> sdf = ScaleDecoupledFeature(16)
        >>> sdf(torch.randn(2, 16, 6, 9)).shape
        torch.Size([2, 3, 16, 6, 9])
    """

    def __init__(
        self, channels: int, *, dilations: Sequence[int] = (1, 2, 3), hidden_channels: int | None = None
    ) -> None:
        super().__init__()
        if not dilations:
            raise ValueError("dilations must name at least one branch")
        hidden = hidden_channels or max(channels // 4, 1)
        self.dilations = tuple(int(d) for d in dilations)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1)
        self.spatial = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        reduced = F.relu(self.reduce(x))
        branches = [
            x + self.expand(F.relu(F.conv2d(reduced, self.spatial.weight, self.spatial.bias, padding=d, dilation=d)))
            for d in self.dilations  # a fixed, small number of branches
        ]
        return torch.stack(branches, dim=1)


class MultiScaleCrossAttention(nn.Module):
    r"""Multi-scale cross-attention (MSC): student queries attend to teacher keys/values at several scales.

    The heads are split into groups, one per reduction ratio :math:`r_i`; group ``i`` attends to the
    teacher map downsampled by :math:`r_i` (strided convolution + LayerNorm), and its values get a
    depth-wise 3x3 positional term:

    .. math::
        Q_i = X^S W^Q_i, \quad K_i, V_i = \mathrm{MSC}(X^T, r_i)\,W^K_i,\ \mathrm{MSC}(X^T, r_i)\,W^V_i, \quad
        V_i \leftarrow V_i + \mathrm{DWConv}(V_i), \quad
        O = \big[\operatorname{softmax}(Q_i K_i^\top / \sqrt{d})\,V_i\big]_i W^O

    Args:
        channels: feature channels ``C`` (student and teacher, after any channel adapter).
        num_heads: attention heads, divisible by ``len(sr_ratios)``; ``C`` divisible by ``num_heads``.
        sr_ratios: spatial reduction ratio of each head group (default ``(1, 2)``).

    Shape:
        - student, teacher: :math:`(N, C, H, W)` (same size); output: :math:`(N, C, H, W)`.

    Reference:
        Zhu et al., "ScaleKD", CVPR 2023 (see :class:`ScaleDecoupledFeature`). The head-group design is
        that of shunted self-attention (Ren et al., "Shunted Self-Attention via Multi-Scale Token
        Aggregation", CVPR 2022), used here across student and teacher.

    Notes:
        Unverified: reconstructed from secondary descriptions (student queries; teacher keys/values
        aggregated at different downsampling rates; depth-wise convolution on the values; different heads
        cover different scales). The residual connection to the student feature is our choice.

    Example:
        >>> import torch
        >>> msc = MultiScaleCrossAttention(16, num_heads=4)
        >>> msc(torch.randn(2, 16, 6, 10), torch.randn(2, 16, 6, 10)).shape
        torch.Size([2, 16, 6, 10])
    """

    def __init__(self, channels: int, *, num_heads: int = 4, sr_ratios: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        groups = len(sr_ratios)
        if groups == 0 or num_heads % groups or channels % num_heads:
            raise ValueError(
                f"need num_heads divisible by len(sr_ratios) and channels divisible by num_heads, got "
                f"channels={channels}, num_heads={num_heads}, sr_ratios={tuple(sr_ratios)}"
            )
        self.num_heads = num_heads
        self.sr_ratios = tuple(int(r) for r in sr_ratios)
        self.head_dim = channels // num_heads
        group_dim = channels // groups
        self.query = nn.Linear(channels, channels)
        self.reduce = nn.ModuleList(
            [nn.Identity() if r == 1 else nn.Conv2d(channels, channels, r, stride=r) for r in self.sr_ratios]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in self.sr_ratios])
        self.key_value = nn.ModuleList([nn.Linear(channels, 2 * group_dim) for _ in self.sr_ratios])
        self.local = nn.ModuleList(
            [nn.Conv2d(group_dim, group_dim, 3, padding=1, groups=group_dim) for _ in self.sr_ratios]
        )
        self.out = nn.Linear(channels, channels)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        n, c, h, w = student.shape
        heads_per_group = self.num_heads // len(self.sr_ratios)
        q = self.query(student.flatten(2).transpose(1, 2))  # (N, HW, C)
        q = q.reshape(n, h * w, self.num_heads, self.head_dim).transpose(1, 2)  # (N, heads, HW, d)
        outputs = []
        for i, (reduce, norm, kv, local) in enumerate(zip(self.reduce, self.norms, self.key_value, self.local)):
            t = reduce(teacher)
            th, tw = t.shape[-2:]
            tokens = norm(t.flatten(2).transpose(1, 2))  # (N, L_i, C)
            k, v = kv(tokens).chunk(2, dim=-1)  # (N, L_i, C / groups) each
            v = v + local(v.transpose(1, 2).reshape(n, -1, th, tw)).flatten(2).transpose(1, 2)
            k = k.reshape(n, -1, heads_per_group, self.head_dim).transpose(1, 2)
            v = v.reshape(n, -1, heads_per_group, self.head_dim).transpose(1, 2)
            q_i = q[:, i * heads_per_group : (i + 1) * heads_per_group]
            outputs.append(F.scaled_dot_product_attention(q_i, k, v))
        attended = torch.cat(outputs, dim=1).transpose(1, 2).reshape(n, h * w, c)
        return student + self.out(attended).transpose(1, 2).reshape(n, c, h, w)
