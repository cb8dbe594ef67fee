"""UniKD's adaptive knowledge extractor (AKE) and its detection head (Lao et al., ICCV 2023).

No official code was found; the structure follows descriptions of the paper that could not be
checked against its text (see :mod:`kdimpl.losses.unikd`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..masks import image_hw

__all__ = ["UniKDKnowledgeExtractor", "UniKDPredictionHead"]


def _sine_positions(height: int, width: int, channels: int, like: Tensor) -> Tensor:
    """DETR's normalised 2-D sine embedding of a ``height x width`` grid, ``(H W, channels)``."""
    half = channels // 2
    ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(half, device=like.device, dtype=like.dtype) // 2) / half)

    def embed(v: Tensor) -> Tensor:
        v = v[:, None] / freq
        return torch.stack([v[:, 0::2].sin(), v[:, 1::2].cos()], dim=2).flatten(1)

    grid_y = embed(ys)[:, None, :].expand(height, width, half)
    grid_x = embed(xs)[None, :, :].expand(height, width, half)
    return torch.cat([grid_y, grid_x], dim=-1).reshape(height * width, 2 * half)


def _normalised_cxcywh(boxes: Tensor, image_size: Sequence[int] | Tensor) -> Tensor:
    """``(N, M, 4)`` xyxy pixel boxes as ``cx, cy, w, h`` divided by the image's width and height."""
    img_h, img_w = image_hw(image_size, boxes.shape[0], boxes)  # (N, 1) each
    x1, y1, x2, y2 = (boxes / torch.stack([img_w, img_h, img_w, img_h], dim=-1)).unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


class UniKDKnowledgeExtractor(nn.Module):
    r"""Adaptive knowledge extractor: knowledge queries read from the teacher, then from any feature set.

    A query generator (one transformer decoder layer) turns the input embeddings into knowledge
    queries :math:`q` by attending to the *teacher's* features; the knowledge extractor (a
    second decoder layer) attends with :math:`q` to the features it is given, so the same
    queries extract :math:`z^T = f_e(q, F^T)` and :math:`z^S = f_e(q, \phi(F^S))`:

    - ``mode='content'``: :math:`N_q` learnable input embeddings :math:`E`
      (:math:`\text{AKE}_{ct}`);
    - ``mode='position'``: the input embeddings are boxes (``(N, N_q, 4)`` xyxy pixels,
      see :func:`kdimpl.unikd_sample_position_boxes`) embedded by a linear layer
      (:math:`\text{AKE}_{pos}`).

    Features are one ``(N, C, H, W)`` map or a sequence of FPN levels; their positions enter as
    DETR's sine embedding plus a learned level embedding, added to the tokens.

    Args:
        channels: feature and query width :math:`C`.
        num_queries: :math:`N_q` (content mode; the described setting: 200).
        mode: ``'content'`` or ``'position'``.
        num_levels: how many feature levels the level embedding covers.
        num_heads: attention heads.
        ffn_channels: hidden width of the feed-forward blocks.

    Example:
        >>> import torch
        >>> ake = UniKDKnowledgeExtractor(16, num_queries=10, num_heads=2, ffn_channels=32)
        >>> teacher = [torch.randn(2, 16, 8, 8), torch.randn(2, 16, 4, 4)]
        >>> queries = ake.queries(teacher)
        >>> ake.extract(queries, teacher).shape
        torch.Size([2, 10, 16])

    Notes:
        The paper's layers use deformable attention (as described); these use dense multi-head
        attention, whose cost grows with the number of feature positions: pass the coarser
        levels for large inputs.
    """

    def __init__(
        self,
        channels: int = 256,
        num_queries: int = 200,
        *,
        mode: str = "content",
        num_levels: int = 5,
        num_heads: int = 8,
        ffn_channels: int = 1024,
    ) -> None:
        super().__init__()
        if mode not in ("content", "position"):
            raise ValueError(f"mode must be 'content' or 'position', got {mode!r}")
        self.mode = mode
        self.num_queries = num_queries
        if mode == "content":
            self.embedding = nn.Parameter(torch.randn(num_queries, channels) * channels**-0.5)
        else:
            self.box_embedding = nn.Linear(4, channels)
        self.level_embedding = nn.Parameter(torch.zeros(num_levels, channels))

        def layer() -> nn.TransformerDecoderLayer:
            return nn.TransformerDecoderLayer(channels, num_heads, ffn_channels, dropout=0.0, batch_first=True)

        self.query_generator = layer()
        self.extractor = layer()

    def tokens(self, features: Tensor | Sequence[Tensor]) -> Tensor:
        """``(N, S, C)`` tokens of one map or of FPN levels, with position and level embeddings added."""
        levels = [features] if isinstance(features, Tensor) else list(features)
        if len(levels) > self.level_embedding.shape[0]:
            raise ValueError(f"{len(levels)} feature levels but num_levels={self.level_embedding.shape[0]}")
        out = []
        for index, x in enumerate(levels):
            n, c, h, w = x.shape
            pos = _sine_positions(h, w, c, x) + self.level_embedding[index]
            out.append(x.flatten(2).transpose(1, 2) + pos)
        return torch.cat(out, dim=1)

    def queries(
        self,
        teacher: Tensor | Sequence[Tensor],
        boxes: Tensor | None = None,
        image_size: Sequence[int] | Tensor | None = None,
    ) -> Tensor:
        """Knowledge queries :math:`q` ``(N, N_q, C)`` generated from the teacher's features.

        ``boxes`` (``(N, N_q, 4)`` xyxy pixels) and ``image_size`` are needed in position mode.
        """
        memory = self.tokens(teacher)
        n = memory.shape[0]
        if self.mode == "content":
            inputs = self.embedding.to(memory.dtype)[None].expand(n, -1, -1)
        else:
            if boxes is None or image_size is None:
                raise ValueError("a position extractor needs boxes (N, N_q, 4) and image_size")
            inputs = self.box_embedding(_normalised_cxcywh(boxes, image_size).to(memory.dtype))
        return self.query_generator(inputs, memory)

    def extract(self, queries: Tensor, features: Tensor | Sequence[Tensor]) -> Tensor:
        """Knowledge :math:`z = f_e(q, F)` ``(N, N_q, C)`` of ``features`` (teacher's, or the adapted student's)."""
        return self.extractor(queries, self.tokens(features))

    def forward(
        self,
        teacher: Tensor | Sequence[Tensor],
        features: Tensor | Sequence[Tensor] | None = None,
        boxes: Tensor | None = None,
        image_size: Sequence[int] | Tensor | None = None,
    ) -> Tensor:
        """:math:`f_e(q(F^T), F)` with ``features`` :math:`F` (default: the teacher's own)."""
        return self.extract(self.queries(teacher, boxes, image_size), teacher if features is None else features)


class UniKDPredictionHead(nn.Module):
    """DETR-style head on extracted knowledge for the extractor's training: class logits and boxes.

    Class logits come from a linear layer (sigmoid classification, one logit per foreground
    class), boxes from a three-layer MLP with a sigmoid: ``cx, cy, w, h`` normalised by the image.

    Args:
        channels: knowledge width :math:`C`.
        num_classes: foreground classes :math:`K`.

    Example:
        >>> import torch
        >>> logits, boxes = UniKDPredictionHead(16, 3)(torch.randn(2, 10, 16))
        >>> logits.shape, boxes.shape
        (torch.Size([2, 10, 3]), torch.Size([2, 10, 4]))
    """

    def __init__(self, channels: int = 256, num_classes: int = 80) -> None:
        super().__init__()
        self.classifier = nn.Linear(channels, num_classes)
        self.box_mlp = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, 4)
        )

    def forward(self, knowledge: Tensor) -> tuple[Tensor, Tensor]:
        return self.classifier(knowledge), self.box_mlp(knowledge).sigmoid()
