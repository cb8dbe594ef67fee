r"""Multi-teacher distillation with reinforcement-learned teacher weights (MTKD-RL), Yang et al., AAAI 2025.

The student learns from ``K`` teachers at once; each sample :math:`n` weighs teacher :math:`k`'s
logit term by :math:`w^{logit}_{n,k}` and its feature term by :math:`w^{feat}_{n,k}`:

.. math::
    \mathcal{L} = \mathcal{L}_{task}
        + \sum_{k=1}^{K} \frac{1}{N}\sum_{n} w^{logit}_{n,k}\, \mathcal{L}_{KD}(z^S_n, z^{T_k}_n)
        + \beta \sum_{k=1}^{K} \frac{1}{N}\sum_{n} w^{feat}_{n,k}\, \mathcal{L}_{FD}(F^S_{n,k}, F^{T_k}_n)

(:func:`mtkd_rl_logit_loss`, :func:`mtkd_rl_feature_loss`; official :math:`\beta = 5`). The
weights come from an agent (:class:`kdimpl.MTKDRLPolicy`) that reads a per-sample state
(:func:`mtkd_rl_agent_state`); the negated per-sample training loss, normalised over the batch,
is its reward (:func:`mtkd_rl_reward`), and it is updated by reward-weighted log-likelihood of
its own weights (:func:`mtkd_rl_agent_loss`), every ``agent_step`` (official: 1000) iterations on
the states, weights and rewards stored since the last update. In the first epoch the official
loop uses all-ones weights.

The official code (winycg/MTKD-RL@4e2b62a) covers image classification only (CIFAR-100 teachers
and students, ``train_loops.py::train``); the paper's detection and segmentation experiments
are not in it. Here a "sample" is whatever the caller batches: an image (pooled logits and one
feature map per image, e.g. one FPN level through :func:`kdimpl.multilevel_loss`), as the
official code does for classification.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_shape, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["MTKDRLState", "mtkd_rl_agent_state", "mtkd_rl_reward", "mtkd_rl_agent_loss"]


def _kd_divergence(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))`` summed over the last dimension."""
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1) * temperature**2


def _per_teacher(student: Tensor, teacher: Tensor, dims: str) -> Tensor:
    """``student`` with a teacher dimension: given once per sample (``dims`` without ``K``), it serves every teacher."""
    if isinstance(student, Tensor) and student.dim() == teacher.dim() - 1:
        check_shapes(student=(student, dims.replace(" K", "")), teacher=(teacher, dims))
        return student.unsqueeze(1).expand_as(teacher)
    check_shapes(student=(student, dims), teacher=(teacher, dims))
    return student


def mtkd_rl_logit_loss(
    student: Tensor,
    teacher: Tensor,
    teacher_weights: Tensor,
    *,
    temperature: float = 4.0,
    reduction: str = "mean",
) -> Tensor:
    r"""MTKD-RL's logit term: per-sample teacher weights on the temperature-scaled KL of each teacher.

    .. math::
        \mathcal{L}_{logit} = \sum_{k=1}^{K} \frac{1}{N} \sum_{n=1}^{N} w_{n,k}\, T^2\,
            \mathrm{KL}\big(\sigma(z^{T_k}_n / T) \,\|\, \sigma(z^S_n / T)\big)

    Args:
        student: student logits, one row per sample (``(N, C)``), or one per teacher
            (``(N, K, C)``).
        teacher: the ``K`` teachers' logits, stacked on dimension 1 (detached inside).
        teacher_weights: :math:`w^{logit}_{n,k}`, e.g. the first output of
            :class:`kdimpl.MTKDRLPolicy` (detached inside; the agent is trained by its own loss).
            All ones gives the official first epoch and equal-weight multi-teacher KD.
        temperature: :math:`T` (official ``--kd-T``: 4).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: each teacher's
            weighted terms averaged over the ``N`` samples, summed over the teachers; ``'sum'``
            sums everything; ``'none'`` returns the ``(N, K)`` weighted terms (their ``.sum(1).mean()``
            is ``'mean'``, ``.mean()`` the plain element mean).

    Shape:
        - student: :math:`(N, C)` or :math:`(N, K, C)`
        - teacher: :math:`(N, K, C)`
        - teacher_weights: :math:`(N, K)`
        - output: scalar, or :math:`(N, K)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Chuanguang Yang, Xinqiang Yu, Han Yang, Zhulin An, Chengqing Yu, Libo Huang, Yongjun Xu.
        "Multi-Teacher Knowledge Distillation with Reinforcement Learning for Visual
        Recognition". AAAI 2025. arXiv:2502.18510.
        Official code: winycg/MTKD-RL@4e2b62a ``train_loops.py::train`` (``loss_kd``, with
        ``utils.py::DistillKL``), matched by the parity tests.

    Example:
        >>> import torch
        >>> student, teacher = torch.randn(4, 10), torch.randn(4, 3, 10)
        >>> mtkd_rl_logit_loss(student, teacher, torch.full((4, 3), 1 / 3)).shape
        torch.Size([])

    Notes:
        The official code covers classification; for detection, pass per-image logits (e.g.
        pooled class scores). Dense per-anchor logits are not in the official code.
    """
    check_shapes(teacher=(teacher, "N K C"), teacher_weights=(teacher_weights, "N K"))
    student = _per_teacher(student, teacher, "N K C")
    check_options(temperature=temperature, reduction=reduction)
    s, t = upcast(student), upcast(teacher.detach())
    elements = teacher_weights.detach().to(s.dtype) * _kd_divergence(s, t, temperature)
    if reduction == "none":
        return elements.to(student.dtype)
    return reduce_loss(elements.sum(1), reduction).to(student.dtype)


def mtkd_rl_feature_loss(
    student: Tensor,
    teacher: Tensor,
    teacher_weights: Tensor,
    *,
    kind: str = "mse",
    temperature: float = 4.0,
    reduction: str = "mean",
) -> Tensor:
    r"""MTKD-RL's feature term: per-sample teacher weights on each teacher's feature-map distance.

    .. math::
        \mathcal{L}_{feat} = \sum_{k=1}^{K} \frac{1}{N} \sum_{n=1}^{N} w_{n,k}\, d(F^S_{n,k}, F^{T_k}_n),
        \qquad d_{mse} = \frac{1}{CHW} \lVert F^S - F^T \rVert^2, \quad
        d_{kl} = \frac{T^2}{C} \sum_{c} \mathrm{KL}\big(\sigma_{hw}(F^T_c / T) \,\|\, \sigma_{hw}(F^S_c / T)\big)

    with :math:`\sigma_{hw}` the softmax over the positions of one channel.

    Args:
        student: the student's feature map projected to each teacher's channels (the official
            ``TransFeat``: one convolutional embedding per teacher, e.g. :class:`kdimpl.ChannelAdapter`),
            stacked on dimension 1; or one map ``(N, C, H, W)`` that serves every teacher.
        teacher: the ``K`` teachers' feature maps, stacked on dimension 1 (detached inside).
        teacher_weights: :math:`w^{feat}_{n,k}`, e.g. the second output of
            :class:`kdimpl.MTKDRLPolicy` (detached inside).
        kind: ``'mse'`` (official default ``--feat-kd mse``) or ``'kl'`` (channel-wise spatial
            KL, ``--feat-kd kl``).
        temperature: :math:`T` of ``kind='kl'`` (official: the logit temperature, 4).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: each teacher's
            weighted distances averaged over the ``N`` samples, summed over the teachers (the
            official loop then multiplies by ``--feat-weight``, 5: pass it as ``loss_weight``);
            ``'sum'`` sums everything; ``'none'`` returns the ``(N, K)`` weighted distances
            (their ``.sum(1).mean()`` is ``'mean'``, ``.mean()`` the plain element mean).

    Shape:
        - student: :math:`(N, K, C, H, W)` or :math:`(N, C, H, W)`
        - teacher: :math:`(N, K, C, H, W)`
        - teacher_weights: :math:`(N, K)`
        - output: scalar, or :math:`(N, K)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Chuanguang Yang, Xinqiang Yu, Han Yang, Zhulin An, Chengqing Yu, Libo Huang, Yongjun Xu.
        "Multi-Teacher Knowledge Distillation with Reinforcement Learning for Visual
        Recognition". AAAI 2025. arXiv:2502.18510. Official code: winycg/MTKD-RL@4e2b62a ``train_loops.py::train`` (``loss_feat``) with
        ``distiller_zoo/feature_mse_mtkd_rl.py::FeatureMSELoss``, ``FeatureKLLoss``, matched by
        the parity tests.

    Example:
        >>> import torch
        >>> from kdimpl import multilevel_loss
        >>> teachers = [torch.randn(2, 3, 8, 12 // 2**l, 20 // 2**l) for l in range(3)]
        >>> students = [t[:, 0] + 0.1 for t in teachers]  # one student map for all teachers
        >>> multilevel_loss(mtkd_rl_feature_loss, students, teachers, teacher_weights=torch.ones(2, 3)).shape
        torch.Size([])

    Notes:
        The official ``kl`` form takes the log of the student's softmax, which is ``-inf`` where
        the softmax underflows; here it is ``log_softmax``. All teachers' maps must share one
        shape to be stacked; teachers of different shapes take one call each with
        ``teacher_weights[:, k:k + 1]``.
    """
    check_shapes(teacher=(teacher, "N K C H W"), teacher_weights=(teacher_weights, "N K"))
    student = _per_teacher(student, teacher, "N K C H W")
    check_options(temperature=temperature, reduction=reduction)
    if kind not in ("mse", "kl"):
        raise ValueError(f"kind must be 'mse' or 'kl', got {kind!r}")
    s, t = upcast(student), upcast(teacher.detach())
    if kind == "mse":
        distance = (s - t).square().flatten(2).mean(2)
    else:
        distance = _kd_divergence(s.flatten(3), t.flatten(3), temperature).mean(2)
    elements = teacher_weights.detach().to(s.dtype) * distance
    if reduction == "none":
        return elements.to(student.dtype)
    return reduce_loss(elements.sum(1), reduction).to(student.dtype)


class MTKDRLState(NamedTuple):
    """The agent state of :func:`mtkd_rl_agent_state`, input of :class:`kdimpl.MTKDRLPolicy` (all detached)."""

    teacher_info: Tensor  #: ``(N, sum_k (D_k + C + 3))``: per teacher [similarity, divergence, task loss, embedding, logits]
    task_losses: Tensor  #: ``(N, K)`` each teacher's own task loss
    logit_divergence: Tensor  #: ``(N, K)`` T^2 KL(teacher || student) of the logits
    feature_similarity: Tensor  #: ``(N, K)`` cosine similarity of the pooled features


def mtkd_rl_agent_state(
    student_embeddings: Tensor | Sequence[Tensor],
    teacher_embeddings: Tensor | Sequence[Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    teacher_task_losses: Tensor,
    *,
    temperature: float = 4.0,
) -> MTKDRLState:
    r"""The per-sample state the MTKD-RL agent reads: teacher performance and teacher-student gaps.

    For each teacher :math:`k`: the cosine similarity :math:`c_{n,k}` of the student's embedding
    (its projected feature map, average-pooled) and the teacher's, the logit divergence
    :math:`d_{n,k} = T^2 \mathrm{KL}(\sigma(z^{T_k}_n/T) \| \sigma(z^S_n/T))`, the teacher's own
    task loss :math:`\ell^{T_k}_n`, the teacher's embedding and logits, concatenated in that
    order and then over the teachers.

    Args:
        student_embeddings: per teacher, the pooled student feature projected to that teacher's
            channels: ``(N, K, D)`` or a sequence of ``K`` ``(N, D_k)`` tensors.
        teacher_embeddings: the teachers' pooled features, same layout.
        student_logits: ``(N, C)``.
        teacher_logits: ``(N, K, C)``.
        teacher_task_losses: ``(N, K)``, each teacher's per-sample task loss (official: the
            cross-entropy of its logits with the labels; for detection the caller's per-image
            detection loss of the teacher).
        temperature: :math:`T` of the divergence (official: the KD temperature, 4).

    Returns:
        An :class:`MTKDRLState`, detached.

    Example:
        >>> import torch
        >>> emb = torch.randn(4, 3, 8)
        >>> state = mtkd_rl_agent_state(emb, emb, torch.randn(4, 10), torch.randn(4, 3, 10), torch.rand(4, 3))
        >>> state.teacher_info.shape, bool(torch.allclose(state.feature_similarity, torch.ones(4, 3)))
        (torch.Size([4, 63]), True)
    """
    check_shapes(student_logits=(student_logits, "N C"), teacher_logits=(teacher_logits, "N K C"),
                 teacher_task_losses=(teacher_task_losses, "N K"))
    check_options(temperature=temperature)
    num_teachers = teacher_logits.shape[1]
    s_emb = list(student_embeddings.unbind(1)) if torch.is_tensor(student_embeddings) else list(student_embeddings)
    t_emb = list(teacher_embeddings.unbind(1)) if torch.is_tensor(teacher_embeddings) else list(teacher_embeddings)
    if len(s_emb) != num_teachers or len(t_emb) != num_teachers:
        raise ValueError(f"expected embeddings of {num_teachers} teachers, got {len(s_emb)} student and {len(t_emb)} teacher")
    with torch.no_grad():
        similarity = torch.stack([F.cosine_similarity(s, t, dim=1) for s, t in zip(s_emb, t_emb)], dim=1)
        divergence = _kd_divergence(student_logits.unsqueeze(1).expand_as(teacher_logits), teacher_logits, temperature)
        task = teacher_task_losses.detach()
        info = torch.cat([
            torch.cat([similarity[:, k:k + 1], divergence[:, k:k + 1], task[:, k:k + 1], t_emb[k], teacher_logits[:, k]], dim=1)
            for k in range(num_teachers)
        ], dim=1)
    return MTKDRLState(info, task, divergence, similarity)


def mtkd_rl_reward(per_sample_loss: Tensor) -> Tensor:
    r"""The agent's reward: the negated per-sample training loss, standardised over the batch, clipped to [0, 1].

    .. math::
        r_n = \operatorname{clip}\Big(\frac{-\mathcal{L}_n - \mu}{\sigma}, 0, 1\Big)

    with :math:`\mu, \sigma` the mean and (unbiased) standard deviation of :math:`-\mathcal{L}_n`
    over the batch; :math:`\mathcal{L}_n` is the student's task loss plus its weighted logit and
    feature terms for sample ``n`` (``reduction='none'`` of the two losses, summed over
    teachers, the feature term times its loss weight). The batch statistics couple the samples:
    under DDP each process standardises over its own batch, as the official code does.

    Args:
        per_sample_loss: ``(N,)``, ``N >= 2``.

    Returns:
        ``(N,)`` rewards, detached.

    Example:
        >>> mtkd_rl_reward(torch.tensor([1.0, 2.0, 3.0]))
        tensor([1., 0., 0.])
    """
    check_shape(per_sample_loss, "per_sample_loss", "N")
    reward = -per_sample_loss.detach()
    return ((reward - reward.mean()) / reward.std()).clamp(min=0, max=1)


def mtkd_rl_agent_loss(logit_weights: Tensor, feature_weights: Tensor, rewards: Tensor) -> Tensor:
    r"""The agent's update: reward-weighted log-likelihood of its weights (official binary cross-entropy to 1).

    .. math::
        \mathcal{L}_{agent} = -\frac{1}{NK} \sum_{n,k} r_n
            \big(\log w^{logit}_{n,k} + \log w^{feat}_{n,k}\big)

    computed on the agent's weights recomputed from the stored states (with gradient), each log
    clamped at -100 as ``binary_cross_entropy`` does. Official optimiser: SGD, learning rate 0.1,
    one step per stored batch.

    Args:
        logit_weights, feature_weights: ``(N, K)`` outputs of :class:`kdimpl.MTKDRLPolicy`.
        rewards: ``(N,)`` from :func:`mtkd_rl_reward`.

    Returns:
        A scalar.

    Example:
        >>> w = torch.full((2, 3), 0.5, requires_grad=True)
        >>> mtkd_rl_agent_loss(w, w, torch.tensor([1.0, 0.0]))
        tensor(0.6931, grad_fn=<AddBackward0>)
    """
    check_shapes(logit_weights=(logit_weights, "N K"), feature_weights=(feature_weights, "N K"), rewards=(rewards, "N"))
    r = rewards.detach()[:, None]
    return (-(r * logit_weights.log().clamp(min=-100)).mean()) + (-(r * feature_weights.log().clamp(min=-100)).mean())


@register_loss("mtkd_rl_logit", function=mtkd_rl_logit_loss, distributed="exact")
class MTKDRLLogitLoss(LossModule):
    """Module twin of :func:`mtkd_rl_logit_loss`; ``loss_weight`` multiplies the result (official: 1)."""

    def __init__(self, *, temperature: float = 4.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)


@register_loss("mtkd_rl_feature", function=mtkd_rl_feature_loss, distributed="exact")
class MTKDRLFeatureLoss(LossModule):
    """Module twin of :func:`mtkd_rl_feature_loss`; ``loss_weight`` multiplies the result (official ``--feat-weight``: 5)."""

    def __init__(
        self, *, kind: str = "mse", temperature: float = 4.0, reduction: str = "mean", loss_weight: float = 1.0
    ) -> None:
        super().__init__(kind=kind, temperature=temperature, reduction=reduction, loss_weight=loss_weight)
