"""The MTKD-RL agent: a policy network that weighs each teacher per sample (Yang et al., AAAI 2025)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MTKDRLPolicy"]


class MTKDRLPolicy(nn.Module):
    r"""MTKD-RL's agent: per-sample logit and feature weights of ``K`` teachers from the agent state.

    A shared stem (linear, no bias, to ``hidden_channels``; ReLU) reads the concatenated teacher
    information :math:`s_n` (:func:`kdimpl.mtkd_rl_agent_state`); two linear heads with a softmax
    over the teachers give :math:`\pi^{logit}_n, \pi^{feat}_n`. Each is mixed with two rule-based
    weights computed from the state, the teacher's own task loss :math:`\ell^{T_k}_n` and the
    teacher-student gap (logit KL :math:`d_{n,k}`, feature cosine similarity :math:`c_{n,k}`):

    .. math::
        w^{logit}_n = \tfrac{1}{3}\Big(\pi^{logit}_n
            + \frac{1 - \operatorname{softmax}_k(\ell^{T}_n)}{K - 1}
            + \operatorname{softmax}_k(d_n)\Big), \qquad
        w^{feat}_n = \tfrac{1}{3}\Big(\pi^{feat}_n
            + \frac{1 - \operatorname{softmax}_k(\ell^{T}_n)}{K - 1}
            + \operatorname{softmax}_k(c_n)\Big)

    With ``dynamic=True`` (the README's MTKD-RL command) the three terms are mixed by the softmax
    of a learnable 3-vector per output (``logit_mix``, ``feature_mix``, initialised to ones, i.e.
    the equal mix above) instead of :math:`\frac{1}{3}`. Each weight vector sums to 1 over the
    teachers.

    Args:
        info_channels: length of the concatenated teacher information, :math:`\sum_k (D_k + C + 3)`
            for teacher embeddings of :math:`D_k` channels and :math:`C` classes.
        num_teachers: ``K`` (at least 2: the task-loss term divides by ``K - 1``).
        hidden_channels: width of the stem (official: 128).
        dynamic: learn the mix of the three terms (official ``--dynamic``).

    Shape:
        - state: the :class:`kdimpl.MTKDRLState` of ``N`` samples
        - output: two :math:`(N, K)` tensors, the logit weights and the feature weights

    Reference:
        Chuanguang Yang et al. "Multi-Teacher Knowledge Distillation with Reinforcement Learning
        for Visual Recognition". AAAI 2025. arXiv:2502.18510.
        Official code: winycg/MTKD-RL@4e2b62a ``models/policy.py::PolicyTrans``, matched by the
        parity tests (the official parameter names map one to one: ``steam.0`` is ``stem.0``,
        ``logit_weight_factor``/``feature_weight_factor`` are ``logit_mix``/``feature_mix``).

    Example:
        >>> import torch
        >>> from kdimpl import mtkd_rl_agent_state
        >>> emb, logits = torch.randn(4, 3, 8), torch.randn(4, 3, 10)
        >>> state = mtkd_rl_agent_state(emb, emb + 0.1, torch.randn(4, 10), logits, torch.rand(4, 3))
        >>> logit_w, feat_w = MTKDRLPolicy(3 * (8 + 10 + 3), 3)(state)
        >>> logit_w.shape, bool(torch.allclose(logit_w.sum(1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """

    def __init__(self, info_channels: int, num_teachers: int, *, hidden_channels: int = 128, dynamic: bool = False) -> None:
        super().__init__()
        if num_teachers < 2:
            raise ValueError(f"num_teachers must be at least 2 (the task-loss term divides by K - 1), got {num_teachers}")
        self.num_teachers = num_teachers
        self.stem = nn.Sequential(nn.Linear(info_channels, hidden_channels, bias=False), nn.ReLU())
        self.logit_head = nn.Linear(hidden_channels, num_teachers)
        self.feature_head = nn.Linear(hidden_channels, num_teachers)
        self.dynamic = dynamic
        if dynamic:
            self.logit_mix = nn.Parameter(torch.ones(3))
            self.feature_mix = nn.Parameter(torch.ones(3))

    def forward(self, state) -> tuple[Tensor, Tensor]:
        info, task_losses, logit_divergence, feature_similarity = state
        task_term = (1.0 - F.softmax(task_losses, dim=1)) / (self.num_teachers - 1)
        divergence_term = F.softmax(logit_divergence, dim=1)
        similarity_term = F.softmax(feature_similarity, dim=1)
        hidden = self.stem(info)
        logit_policy = F.softmax(self.logit_head(hidden), dim=1)
        feature_policy = F.softmax(self.feature_head(hidden), dim=1)
        if self.dynamic:
            lm, fm = F.softmax(self.logit_mix, dim=0), F.softmax(self.feature_mix, dim=0)
            logit_weights = lm[0] * logit_policy + lm[1] * task_term + lm[2] * divergence_term
            feature_weights = fm[0] * feature_policy + fm[1] * task_term + fm[2] * similarity_term
        else:
            logit_weights = (logit_policy + task_term + divergence_term) / 3.0
            feature_weights = (feature_policy + task_term + similarity_term) / 3.0
        return logit_weights, feature_weights
