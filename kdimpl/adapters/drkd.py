"""Learnable pieces of DRKD (Ni et al., IJCAI 2023): the GloRe graph unit and the instance relation module.

Both sides (student and teacher) get their own copy in the official code and both copies are
trained. :func:`kdimpl.losses.drkd.drkd_pixel_loss` and :func:`kdimpl.losses.drkd.drkd_instance_loss`
take them as keyword arguments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GloReUnit", "InstanceRelation"]

RELATION_FILTERS = ("learnable", "random", "none")


class GloReUnit(nn.Module):
    r"""Graph-based global reasoning unit (Chen et al., CVPR 2019) used by DRKD's pixel-wise relation.

    Pixels are projected onto ``m`` graph nodes, one graph-convolution layer mixes nodes and states,
    and the result is projected back and added to the input:

    .. math::
        V = (W_s X)(W_p X)^\top, \quad
        Z = W_g\,\mathrm{ReLU}\big(V + V A^\top\big), \quad
        Y = X + \mathrm{BN}\big(W_e\, Z (W_p X)\big)

    with :math:`W_s: C \to 2m` (state), :math:`W_p: C \to m` (projection), :math:`A` the
    ``m x m`` node-mixing matrix (with bias), :math:`W_g` the ``2m x 2m`` state-mixing matrix and
    :math:`W_e: 2m \to C`, all 1x1.

    Args:
        channels: input channels ``C``.
        num_nodes: graph nodes ``m`` (DRKD: 64 on P2-P3, 256 on P4-P6); the state has ``2m`` channels.
        normalize: divide the node features by ``H W`` (off in DRKD).

    Shape:
        - input: :math:`(N, C, H, W)`; output: same.

    Reference:
        Zhen-Liang Ni, Fukui Yang, Shengzhao Wen, Gang Zhang. "Dual Relation Knowledge Distillation for
        Object Detection". IJCAI 2023. arXiv:2302.05637. Official code:
        nizhenliang/Dual-Relation-Knowledge-Distillation@78ea05b (``mmdet/models/detectors/GloRe.py``,
        ``GloRe_Unit_2D``), matched to 1e-6 by ``tests/kdimpl/test_drkd.py``.

    Example:
        >>> import torch
        >>> unit = GloReUnit(16, 4)
        >>> unit(torch.randn(2, 16, 6, 9)).shape
        torch.Size([2, 16, 6, 9])
    """

    def __init__(self, channels: int, num_nodes: int, *, normalize: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.num_nodes = num_nodes
        self.normalize = normalize
        self.state = nn.Conv2d(channels, 2 * num_nodes, kernel_size=1)
        self.proj = nn.Conv2d(channels, num_nodes, kernel_size=1)
        self.node_mix = nn.Linear(num_nodes, num_nodes)
        self.state_mix = nn.Linear(2 * num_nodes, 2 * num_nodes, bias=False)
        self.extend = nn.Conv2d(2 * num_nodes, channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(channels, eps=1e-4)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        states = self.state(x).flatten(2)  # (N, 2m, HW)
        proj = self.proj(x).flatten(2)  # (N, m, HW)
        nodes = states @ proj.transpose(1, 2)  # (N, 2m, m)
        if self.normalize:
            nodes = nodes / (h * w)
        hidden = F.relu(self.node_mix(nodes) + nodes)  # node mixing acts on the last (node) axis
        hidden = self.state_mix.weight @ hidden  # state mixing acts on the state axis
        back = (hidden @ proj).reshape(n, 2 * self.num_nodes, h, w)
        return x + self.norm(self.extend(back))

    @staticmethod
    def convert_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a ``GloRe_Unit_2D`` state dict of the official DRKD code to this module's keys."""
        renames = {
            "conv_state.": "state.",
            "conv_proj.": "proj.",
            "gcn.conv1.": "node_mix.",
            "gcn.conv2.": "state_mix.",
            "conv_extend.": "extend.",
            "blocker.": "norm.",
        }
        out = {}
        for key, value in state_dict.items():
            new = key
            for old, repl in renames.items():
                if key.startswith(old):
                    new = repl + key[len(old) :]
            if new.startswith(("node_mix.weight", "state_mix.weight")):
                value = value.squeeze(-1)  # Conv1d (k=1) -> Linear
            out[new] = value
        return out


class InstanceRelation(nn.Module):
    r"""DRKD's instance relation module: non-local attention between the instances of one image.

    For the ``G`` instance features :math:`X \in \mathbb{R}^{G \times D}` of an image
    (flattened RoI features):

    .. math::
        f = \theta(X)\,\phi(X)^\top \odot \operatorname{softmax}_{row}\big(R(X)\big), \quad
        A = \operatorname{softmax}_{row}(f), \quad
        Z = X + W\big(A\, g(X)\big)

    where :math:`\theta, \phi, g: D \to D/2` and :math:`W: D/2 \to D` are linear layers and
    :math:`R: D \to G` is the relation filter. Images are processed together as a padded batch;
    padded instances are excluded from every softmax and their outputs are meaningless.

    Args:
        in_features: ``D`` = channels x RoI height x RoI width (DRKD: 256 x 3 x 3).
        relation_filter: ``"learnable"``: a trained ``Linear(D, max_instances)`` whose first ``G``
            outputs are used (the official structure with persistent weights; default);
            ``"random"``: a freshly initialised ``Linear(D, G)`` on every call, as the official code does
            (non-deterministic, untrained); ``"none"``: no filter.
        max_instances: width of the learnable filter, the largest number of boxes per image it accepts.
        rng: ``torch.Generator`` for the ``"random"`` filter's draws (default: the global one).

    Shape:
        - x: :math:`(N, M, D)` padded instance features; valid: :math:`(N, M)` bool mask of real ones.
        - output: :math:`(N, M, D)`.

    Notes:
        The paper describes a "relation filter module" that highlights valuable relations; the only
        filter in the official code is the per-call random ``Linear`` (``ObjectRelation_1.resize``),
        reproduced by ``relation_filter="random"``. Neither that filter nor the learnable one is
        equivariant to the order of the boxes (output ``j`` of the filter weighs the relation to box
        ``j``).

    Example:
        >>> import torch
        >>> rel = InstanceRelation(36)
        >>> x, valid = torch.randn(2, 5, 36), torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
        >>> rel(x, valid).shape
        torch.Size([2, 5, 36])
    """

    def __init__(
        self,
        in_features: int,
        *,
        relation_filter: str = "learnable",
        max_instances: int = 100,
        rng: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if relation_filter not in RELATION_FILTERS:
            raise ValueError(f"relation_filter must be one of {RELATION_FILTERS}, got {relation_filter!r}")
        inter = in_features // 2
        self.in_features = in_features
        self.relation_filter = relation_filter
        self.max_instances = max_instances
        self.rng = rng
        self.theta = nn.Linear(in_features, inter)
        self.phi = nn.Linear(in_features, inter)
        self.g = nn.Linear(in_features, inter)
        self.out = nn.Linear(inter, in_features)
        self.filter = nn.Linear(in_features, max_instances) if relation_filter == "learnable" else None

    def _filter_logits(self, x: Tensor) -> Tensor:
        m = x.shape[1]
        if self.filter is not None:
            if m > self.max_instances:
                raise ValueError(
                    f"InstanceRelation got {m} boxes in an image but max_instances={self.max_instances}; "
                    "build it with a larger max_instances"
                )
            return F.linear(x, self.filter.weight[:m], self.filter.bias[:m])
        # Same distribution as a freshly constructed nn.Linear(D, G): U(-1/sqrt(D), 1/sqrt(D)).
        bound = 1.0 / math.sqrt(self.in_features)
        draw = dict(generator=self.rng, device=x.device, dtype=x.dtype)
        weight = (torch.rand(m, self.in_features, **draw) * 2 - 1) * bound
        bias = (torch.rand(m, **draw) * 2 - 1) * bound
        return F.linear(x, weight, bias)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        column = valid[:, None, :]  # (N, 1, M): which instances may be attended to
        low = torch.finfo(x.dtype).min
        relation = self.theta(x) @ self.phi(x).transpose(1, 2)  # (N, M, M)
        if self.relation_filter != "none":
            weights = F.softmax(self._filter_logits(x).masked_fill(~column, low), dim=-1)
            relation = relation * weights
        attention = F.softmax(relation.masked_fill(~column, low), dim=-1)
        return x + self.out(attention @ self.g(x))

    @staticmethod
    def convert_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map an ``ObjectRelation_1`` state dict of the official DRKD code to this module's keys."""
        out = {}
        for key, value in state_dict.items():
            for name in ("theta", "phi", "g"):
                if key.startswith(f"{name}.0."):
                    key = f"{name}." + key[len(name) + 3 :]
            if key.startswith("W."):
                key = "out." + key[2:]
            out[key] = value
        return out
