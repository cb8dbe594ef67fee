"""ICD's learnable pieces: the instance-query encoder and the one-layer instance-conditional decoder.

Kang et al., "Instance-Conditional Knowledge Distillation for Object Detection", NeurIPS 2021;
MegEngine/ICD@acf2726 (``pytorch_release/models/utils.py``: ``InstanceEncoder``,
``OfficialDecoderLayer``, ``MLP``; ``models/layers/transformer.py``: the attention returning its
logits and value projections). See :mod:`kdimpl.losses.icd` for how they are used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ICDInstanceEncoder", "ICDDecoder"]


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    dims = [in_dim] + [hidden] * (layers - 1)
    blocks: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:] + [out_dim])):
        blocks.append(nn.Linear(a, b))
        if i < layers - 1:
            blocks.append(nn.ReLU())
    return nn.Sequential(*blocks)


class ICDInstanceEncoder(nn.Module):
    """Instance queries from (class, reference point, box size): one-hot ‖ sine embedding ‖ scale one-hot, then an MLP.

    The descriptor of an instance is the one-hot class (``num_classes``), the sine embedding of its
    reference point (``2 * pos_features``: per coordinate, ``sin`` of the even and ``cos`` of the odd
    frequencies of :math:`2\\pi p / 10000^{2\\lfloor j/2 \\rfloor / F}`), and, per side, a 5-way one-hot
    of :math:`\\mathrm{clamp}(1.44 \\ln(\\text{size in pixels}) - 5, 0, 4)` truncated; a 3-layer MLP maps
    it to ``channels``.

    Args:
        num_classes: ``K`` (official 80).
        channels: the query width (official 256, ``HIDDEN_DIM``).
        pos_features: sine features per coordinate (official 128).
        scale_indicator: append the 10 scale features (official ``ADD_SCALE_INDICATOR = True``).

    Notes:
        The official encoder converts every image's box sizes to pixels with the (width, height) of
        the *last* image of the batch (a loop variable left over); here each image uses its own size.
    """

    def __init__(self, num_classes: int, channels: int = 256, *, pos_features: int = 128,
                 scale_indicator: bool = True) -> None:
        super().__init__()
        self.num_classes, self.pos_features, self.scale_indicator = num_classes, pos_features, scale_indicator
        in_dim = num_classes + 2 * pos_features + (10 if scale_indicator else 0)
        self.encoder = _mlp(in_dim, channels, channels, 3)

    def descriptor(self, labels: Tensor, points: Tensor, boxes: Tensor, image_size: Tensor | tuple) -> Tensor:
        """The ``(N, Q, in_dim)`` descriptors (no parameters involved)."""
        n = labels.shape[0]
        dim_t = torch.arange(self.pos_features, dtype=points.dtype, device=points.device)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.pos_features)
        pos = points[..., None] * (2 * math.pi) / dim_t  # (N, Q, 2, F)
        pos = torch.cat([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(2)
        parts = [F.one_hot(labels, self.num_classes).to(points.dtype), pos]
        if self.scale_indicator:
            size = torch.as_tensor(image_size, dtype=points.dtype, device=points.device).reshape(-1, 2).expand(n, 2)
            wh = (boxes[..., 2:] - boxes[..., :2]) * size.flip(-1)[:, None, :]  # pixels (w, h)
            level = (wh.log() * 1.44 - 5.0).clamp(0.0, 4.0).long()
            parts.append(F.one_hot(level, 5).to(points.dtype).flatten(2))
        return torch.cat(parts, dim=-1)

    def forward(self, labels: Tensor, points: Tensor, boxes: Tensor, image_size: Tensor | tuple) -> Tensor:
        """Queries ``(N, Q, channels)`` from ``kdimpl.losses.icd_sample_instances``' labels, points and boxes."""
        return self.encoder(self.descriptor(labels, points, boxes, image_size))


class ICDDecoder(nn.Module):
    """One instance-conditional decoder layer: cross-attention of the queries over the features, no self-attention.

    ``forward(queries, features, pos, query_mask, key_padding_mask)`` returns the decoded queries
    ``(N, Q, C)`` (attention, residual + LayerNorm, FFN ``C -> 4C -> C``, residual + LayerNorm), the
    attention logits ``(N, H, Q, S)`` (scaled by :math:`1/\\sqrt{D}`, ``-inf`` at padded positions) and
    the value projections ``(N, S, H, D)``. Keys get a projected positional embedding
    (``PROJECT_POS``), values do not. :meth:`values` is the student's use (``proj_only``);
    :meth:`predict` the identification head (a 3-layer MLP to ``[confidence, 4 edges]``).

    Args:
        channels: ``C`` (official 256).
        heads: ``H`` (official 8); ``D = C / H``.
    """

    def __init__(self, channels: int = 256, heads: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(channels, channels) for _ in range(3))
        self.out = nn.Linear(channels, channels)
        self.pos_projector = nn.Linear(channels, channels)
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, 4 * channels), nn.ReLU(), nn.Linear(4 * channels, channels))
        self.predictor = _mlp(channels, channels, 5, 3)

    def values(self, features: Tensor) -> Tensor:
        """``(N, S, C)`` features to ``(N, S, H, D)`` value projections."""
        v = self.value(features)
        return v.reshape(*v.shape[:-1], self.heads, -1)

    def predict(self, decoded: Tensor) -> Tensor:
        """``(N, Q, C)`` decoded queries to ``(N, Q, 5)`` identification outputs."""
        return self.predictor(decoded)

    def forward(self, queries: Tensor, features: Tensor, pos: Tensor | None = None,
                key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        n, q_len, c = queries.shape
        keys = features if pos is None else features + self.pos_projector(pos)
        head_dim = c // self.heads
        q = (self.query(queries) * head_dim**-0.5).reshape(n, q_len, self.heads, head_dim).transpose(1, 2)
        k = self.key(keys).reshape(n, -1, self.heads, head_dim).transpose(1, 2)
        values = self.values(features)  # (N, S, H, D)
        logits = q @ k.transpose(-1, -2)  # (N, H, Q, S)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        attended = (logits.softmax(dim=-1) @ values.transpose(1, 2)).transpose(1, 2).reshape(n, q_len, c)
        x = self.norm1(queries + self.out(attended))
        x = self.norm2(x + self.ffn(x))
        return x, logits, values
