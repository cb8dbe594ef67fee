"""LGD's dynamic teacher, after the label encoder: the inter-object relation adapter and the intra-object knowledge mapper.

Both work per FPN level on padded objects: ``(N, M, C)`` embeddings with an ``(N, M)`` validity
mask and ``(N, M, H, W)`` inside-box masks (:func:`kdimpl.losses.lgd.lgd_inside_box_masks`);
:func:`kdimpl.losses.lgd.lgd_teacher_features` wires them over the levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LGDKnowledgeMapper", "LGDLabelEncoder", "LGDPointTransform", "LGDRelationAdapter", "lgd_mask_pool"]


def lgd_mask_pool(features: Tensor, masks: Tensor) -> Tensor:
    r"""Mean of each object's cells: :math:`a_i = \sum_{xy} M_i(x, y) F(x, y) / \max(1, \sum_{xy} M_i(x, y))`.

    Args:
        features: ``(N, C, H, W)`` feature map.
        masks: ``(N, M, H, W)`` 0/1 masks of the objects' cells.

    Returns:
        ``(N, M, C)`` pooled features (zeros for an object that covers no cell).

    Example:
        >>> import torch
        >>> lgd_mask_pool(torch.arange(4.0).view(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
        tensor([[[0.5000]]])
    """
    masks = masks.to(features.dtype)
    pooled = torch.einsum("nmhw,nchw->nmc", masks, features)
    return pooled / masks.sum(dim=(2, 3)).clamp(min=1)[..., None]


class LGDRelationAdapter(nn.Module):
    r"""Inter-object relation adapter: each object's appearance attends to the label embeddings of its image.

    .. math::
        a_i = \mathrm{pool}_{M_i}\big(\mathrm{ReLU}(\mathrm{LN}(\mathrm{conv}_{3\times3}(P)))\big), \quad
        e'_j = \mathrm{ReLU}(\mathrm{LN}(W e_j)), \quad
        o_i = \mathrm{MHA}(q = a_i,\; k = v = \{e'_j\}_{j \in \text{image}(i)})

    with :math:`P` the student's features of one level, :math:`M_i` the object's inside-box mask,
    :math:`e_j` the label embeddings and LN normalisations without affine parameters (a one-group
    ``GroupNorm`` on the map). The official ``DynamicTeacher`` (megvii-research/LGD@e03357d,
    ``interact_pattern='stuGuided'``) holds these as ``student_proj_2D``, ``canoni_proj_1D`` and
    ``multi_head_attn``.

    Args:
        channels: embedding and feature width :math:`C` (256 in the paper).
        num_heads: attention heads (8 in the paper).

    Shape:
        - forward(label_embeddings :math:`(N, M, C)`, features :math:`(N, C, H, W)`, masks
          :math:`(N, M, H, W)`, valid :math:`(N, M)`) -> :math:`(N, M, C)`; invalid slots are zeros.

    Example:
        >>> import torch
        >>> adapter = LGDRelationAdapter(16, num_heads=2)
        >>> masks = torch.zeros(2, 3, 4, 5); masks[..., :2, :2] = 1
        >>> adapter(torch.randn(2, 3, 16), torch.randn(2, 16, 4, 5), masks, torch.ones(2, 3, dtype=torch.bool)).shape
        torch.Size([2, 3, 16])
    """

    def __init__(self, channels: int = 256, num_heads: int = 8) -> None:
        super().__init__()
        self.label_proj = nn.Linear(channels, channels)
        self.appearance_proj = nn.Conv2d(channels, channels, 3, padding=1)
        self.attention = nn.MultiheadAttention(channels, num_heads, batch_first=True)

    def forward(self, label_embeddings: Tensor, features: Tensor, masks: Tensor, valid: Tensor) -> Tensor:
        labels = F.relu(F.layer_norm(self.label_proj(label_embeddings), label_embeddings.shape[-1:]))
        appearance = lgd_mask_pool(F.relu(F.group_norm(self.appearance_proj(features), 1)), masks)
        # attention stays within an image; an image without objects attends to its padding (then discarded)
        ignored = ~valid & valid.any(dim=1, keepdim=True)
        out, _ = self.attention(appearance, labels, labels, key_padding_mask=ignored, need_weights=False)
        return torch.where(valid[..., None], out, torch.zeros_like(out))


class LGDKnowledgeMapper(nn.Module):
    r"""Intra-object knowledge mapper: paints the objects' embeddings back onto the map, then refines it.

    .. math::
        T = \mathcal{R}\Big(\mathrm{ReLU}\big(\mathrm{conv}_{3\times3}\big(\textstyle\sum_i M_i \, W_o o_i\big)
            + W_c o_{ctx}\big)\Big)

    with :math:`o_i` the relation adapter's outputs, :math:`M_i` the inside-box masks, the optional
    context term :math:`W_c o_{ctx}` (the whole-image box's output, a per-image bias) and
    :math:`\mathcal{R}` three ``conv3x3 + GroupNorm(1)`` blocks with ReLUs between (no affine).
    Official names (``DynamicTeacher.rendering`` and ``refinement_module``): ``local_inst_proj_1D``
    (:math:`W_o`), ``local_inst_proj_2D``, ``global_ctx_proj_1D`` (:math:`W_c`).

    Args:
        channels: width :math:`C` (256 in the paper).

    Shape:
        - forward(objects :math:`(N, M, C)`, masks :math:`(N, M, H, W)`, valid :math:`(N, M)`,
          context :math:`(N, C)` or ``None``) -> :math:`(N, C, H, W)`

    Example:
        >>> import torch
        >>> mapper = LGDKnowledgeMapper(16)
        >>> masks = torch.zeros(2, 3, 4, 5); masks[..., :2, :2] = 1
        >>> mapper(torch.randn(2, 3, 16), masks, torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 16)).shape
        torch.Size([2, 16, 4, 5])
    """

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.object_proj = nn.Linear(channels, channels)
        self.context_proj = nn.Linear(channels, channels)
        self.paint_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(1, channels, affine=False), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(1, channels, affine=False), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(1, channels, affine=False),
        )

    def forward(self, objects: Tensor, masks: Tensor, valid: Tensor, context: Tensor | None = None) -> Tensor:
        projected = self.object_proj(objects) * valid[..., None].to(objects.dtype)
        painted = self.paint_conv(torch.einsum("nmc,nmhw->nchw", projected, masks.to(objects.dtype)))
        if context is not None:
            painted = painted + self.context_proj(context)[..., None, None]
        return self.refine(F.relu(painted))


def _normalised(layer: nn.Linear, x: Tensor) -> Tensor:
    """``ReLU(LayerNorm(layer(x)))`` with the normalisation over the features and no affine parameters."""
    out = layer(x)
    return F.relu(F.layer_norm(out, out.shape[-1:]))


class LGDPointTransform(nn.Module):
    r"""A learned ``k x k`` transform per object (a spatial transformer as in PointNet, without the identity shortcut).

    Three per-object layers (``k -> 64 -> 128 -> 1024``) and three FC layers (``1024 -> 512 -> 256 -> k^2``),
    each but the last followed by a LayerNorm without affine parameters and a ReLU; the output is
    reshaped to ``(k, k)`` and multiplies the object's vector from the right. The official ``STN``
    (megvii-research/LGD@e03357d, ``spatial_transformer.py``) writes the per-object layers as 1x1
    ``Conv1d``; their weights load here after dropping the last axis.

    Args:
        features: ``k``.

    Example:
        >>> import torch
        >>> LGDPointTransform(6)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.mlp1, self.mlp2, self.mlp3 = nn.Linear(features, 64), nn.Linear(64, 128), nn.Linear(128, 1024)
        self.fc1, self.fc2, self.fc3 = nn.Linear(1024, 512), nn.Linear(512, 256), nn.Linear(256, features * features)

    def forward(self, x: Tensor) -> Tensor:
        hidden = _normalised(self.mlp3, _normalised(self.mlp2, _normalised(self.mlp1, x)))
        hidden = _normalised(self.fc2, _normalised(self.fc1, hidden))
        transform = self.fc3(hidden).unflatten(-1, (self.features, self.features))
        return (x.unsqueeze(-2) @ transform).squeeze(-2)


class LGDLabelEncoder(nn.Module):
    r"""LGD's label encoder: a PointNet over each image's box descriptors, giving one label embedding per object.

    .. math::
        h_i = \phi_1(\mathcal{T}_1(d_i)), \quad l_i = \mathcal{T}_2(h_i), \quad
        g = \max_{j \in \text{image}} \phi_3(\phi_2(l_j)), \quad e_i = \phi_4([l_i, g])

    with descriptors :math:`d_i` (:func:`kdimpl.losses.lgd.lgd_label_descriptors`), learned transforms
    :math:`\mathcal{T}` (:class:`LGDPointTransform`), per-object layers :math:`\phi` (``k -> 64``,
    ``64 -> 128``, ``128 -> 1024``, ``1088 -> C``, each with a LayerNorm without affine parameters and
    a ReLU) and a max over the objects of the image. The official ``LabelEncoder``
    (``label_encoder.py``, one-hot classes, no noise, one repetition) writes the layers as 1x1 ``Conv1d``.

    Args:
        num_classes: foreground classes ``K`` of the one-hot part (80 on COCO); ``k = 4 + K``.
        channels: embedding width ``C`` (256).

    Shape:
        - forward(descriptors :math:`(N, M, 4 + K)`, valid :math:`(N, M)`) -> :math:`(N, M, C)`;
          padding slots are zeros and do not enter the image's max.

    Example:
        >>> import torch
        >>> encoder = LGDLabelEncoder(num_classes=3, channels=16)
        >>> encoder(torch.rand(2, 5, 7) * 2 - 1, torch.ones(2, 5, dtype=torch.bool)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, num_classes: int = 80, channels: int = 256) -> None:
        super().__init__()
        features = 4 + num_classes
        self.descriptor_transform = LGDPointTransform(features)
        self.feature_transform = LGDPointTransform(64)
        self.local1, self.local2, self.local3 = nn.Linear(features, 64), nn.Linear(64, 128), nn.Linear(128, 1024)
        self.fuse = nn.Linear(64 + 1024, channels)

    def forward(self, descriptors: Tensor, valid: Tensor) -> Tensor:
        local = self.feature_transform(_normalised(self.local1, self.descriptor_transform(descriptors)))
        point = _normalised(self.local3, _normalised(self.local2, local))
        pooled = point.masked_fill(~valid[..., None], float("-inf")).amax(dim=1, keepdim=True)
        pooled = torch.where(valid.any(dim=1)[:, None, None], pooled, torch.zeros_like(pooled))  # images without objects
        out = _normalised(self.fuse, torch.cat([local, pooled.expand(-1, local.shape[1], -1)], dim=-1))
        return torch.where(valid[..., None], out, torch.zeros_like(out))
