r"""Deep structured instance graph (DSIG), Chen et al., ICCV 2021.

DSIG distils a two-stage detector through a graph per image whose nodes are the RoI features of
the student's sampled proposals (RoIAligned from the FPN, before the box head, with the *same*
boxes from the student's and the teacher's pyramid) and whose edges are the cosine similarities
between nodes. :func:`dsig_graph_loss` matches the edges (over the foreground nodes and the
background nodes the teacher finds hard, :func:`dsig_mine_background`) and the nodes (foreground,
and all background nodes with the adaptive weight); :func:`dsig_logit_loss` is the RoI
classification KD used next to it. The per-image node sets of a batch are padded into one tensor
with :func:`dsig_pad_nodes`::

    s_nodes, fg_mask, bg_mask = dsig_pad_nodes(s_fg_feats, s_bg_feats)  # lists, one entry per image
    t_nodes, _, _ = dsig_pad_nodes(t_fg_feats, t_bg_feats)
    loss = dsig_graph_loss(s_nodes, t_nodes, fg_mask, bg_mask, t_roi_logits)
    loss = loss + 3.0 * dsig_logit_loss(s_roi_logits, t_roi_logits_all)

Not here: the RoI pooling, the proposal sampling, the box-regression KD and the plain full-map
feature MSE that the released configs also switch on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import _tracing, check_background_index, check_options, check_same_shape, check_shape, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["dsig_pad_nodes", "dsig_mine_background"]


def dsig_pad_nodes(fg_nodes: Sequence[Tensor], bg_nodes: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """One image's foreground then background node features per row, zero-padded to the batch's largest set.

    Args:
        fg_nodes: per image, the ``(F_i, *)`` features of the foreground RoIs (e.g. ``(F_i, 256, 7, 7)``).
        bg_nodes: per image, the ``(B_i, *)`` features of the sampled background RoIs.

    Returns:
        ``(nodes, fg_mask, bg_mask)``: ``(N, M, *)`` features with ``M = max_i (F_i + B_i)``, and two
        ``(N, M)`` bool masks marking the foreground and the background rows (padding is in neither).

    Example:
        >>> import torch
        >>> nodes, fg, bg = dsig_pad_nodes([torch.randn(2, 8), torch.randn(1, 8)], [torch.randn(3, 8), torch.randn(0, 8)])
        >>> nodes.shape, fg.sum(1).tolist(), bg.sum(1).tolist()
        (torch.Size([2, 5, 8]), [2, 1], [3, 0])
    """
    if len(fg_nodes) != len(bg_nodes):
        raise ValueError(f"fg_nodes and bg_nodes need one entry per image, got {len(fg_nodes)} and {len(bg_nodes)}")
    if not fg_nodes:
        raise ValueError("fg_nodes is empty: pass one (possibly empty) tensor per image")
    rows = [torch.cat([f, b]) for f, b in zip(fg_nodes, bg_nodes)]
    size = max(r.shape[0] for r in rows)
    nodes = rows[0].new_zeros(len(rows), size, *rows[0].shape[1:])
    fg_mask = torch.zeros(len(rows), size, dtype=torch.bool, device=nodes.device)
    bg_mask = torch.zeros_like(fg_mask)
    for i, (f, r) in enumerate(zip(fg_nodes, rows)):
        nodes[i, : r.shape[0]] = r
        fg_mask[i, : f.shape[0]] = True
        bg_mask[i, f.shape[0] : r.shape[0]] = True
    return nodes, fg_mask, bg_mask


@torch.no_grad()
def dsig_mine_background(
    teacher_logits: Tensor, bg_mask: Tensor, *, mining_threshold: float = 0.6, background_index: int = 0
) -> Tensor:
    r"""DSIG's background mining: the background RoIs whose teacher cross-entropy for "background" is high.

    .. math::
        \mathcal{V}_{bg} = \{ r \in \text{bg} : -\log \operatorname{softmax}(z^t_r)_{bg} \ge \theta \}

    Args:
        teacher_logits: ``(N, M, K + 1)`` the teacher's RoI-head class logits on the nodes' boxes.
        bg_mask: ``(N, M)`` bool, the background nodes.
        mining_threshold: :math:`\theta` (official R18-R50 config: 0.6, ``BG_MINING_THRS``).
        background_index: the background column of ``teacher_logits`` (default 0, torchvision;
            detectron2, the official code, puts it last: pass -1).

    Returns:
        ``(N, M)`` bool: the mined background nodes.
    """
    check_shapes(teacher_logits=(teacher_logits, "N M C"), bg_mask=(bg_mask, "N M any"))
    index = check_background_index(background_index, teacher_logits.shape[-1])
    ce = -torch.log_softmax(upcast(teacher_logits.detach()), dim=-1)[..., index]
    return bg_mask.bool() & (ce >= mining_threshold)


def dsig_graph_loss(
    student: Tensor,
    teacher: Tensor,
    fg_mask: Tensor,
    bg_mask: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    mining_threshold: float = 0.6,
    background_index: int = 0,
    edge_weight: float = 2.0,
    fg_weight: float = 0.5,
    bg_weight: float = 0.5,
    adaptive_bg_weight: float = 7.5,
    reduction: str = "mean",
) -> Tensor:
    r"""DSIG instance graph loss: edges (cosine correlations) and nodes (RoI features), summed over images.

    Per image, with foreground nodes :math:`\mathcal{F}`, sampled background nodes :math:`\mathcal{B}`,
    the mined background :math:`\mathcal{B}_m \subseteq \mathcal{B}` (:func:`dsig_mine_background`),
    graph nodes :math:`\mathcal{V} = \mathcal{F} \cup \mathcal{B}_m`, node features :math:`v \in
    \mathbb{R}^D` (flattened RoI features) and edges :math:`e_{ij} = \cos(v_i, v_j)`:

    .. math::
        \mathcal{L}_{edge} = \frac{1}{2 |\mathcal{V}|^2} \sum_{i, j \in \mathcal{V}} (e^t_{ij} - e^s_{ij})^2,
        \qquad
        \mathcal{L}_{fg} = \frac{1}{|\mathcal{F}| D} \sum_{i \in \mathcal{F}} \| v^s_i - v^t_i \|^2,
        \qquad
        \mathcal{L}_{bg} = \alpha \frac{|\mathcal{F}|}{|\mathcal{B}|} \cdot
            \frac{1}{|\mathcal{B}| D} \sum_{i \in \mathcal{B}} \| v^s_i - v^t_i \|^2

    and :math:`\mathcal{L} = \sum_{\text{images}} \lambda_{e} \mathcal{L}_{edge} + \lambda_{fg}
    \mathcal{L}_{fg} + \lambda_{bg} \mathcal{L}_{bg}`.

    Args:
        student: ``(N, M, *)`` the student's node features per image (:func:`dsig_pad_nodes`), e.g.
            ``(N, M, 256, 7, 7)``; flattened from dimension 2.
        teacher: the teacher's node features on the same boxes, same shape (detached inside).
        fg_mask: ``(N, M)`` bool, the foreground nodes (the sampler's positive proposals).
        bg_mask: ``(N, M)`` bool, the sampled background nodes; padding rows are in neither mask.
        teacher_logits: ``(N, M, K + 1)`` the teacher RoI head's class logits on the nodes' boxes,
            for the background mining; ``None`` builds the graph on the foreground nodes only (the
            official code with ``BG_FEATURE_MINING_ON`` off). Detached inside.
        mining_threshold: :math:`\theta` of :func:`dsig_mine_background` (0.6, ``BG_MINING_THRS``).
        background_index: the background column of ``teacher_logits`` (default 0; the official
            detectron2 layout has it last: pass -1).
        edge_weight: :math:`\lambda_e` (2.0, ``REGION_CORRELATION_LOSS_WEIGHT_POOL``, R18-R50 config).
        fg_weight: :math:`\lambda_{fg}` (0.5, ``FEATURE_ROIPOOL_FG_LOSS_WEIGHT``).
        bg_weight: :math:`\lambda_{bg}` (0.5, ``FEATURE_ROIPOOL_BG_LOSS_WEIGHT``).
        adaptive_bg_weight: :math:`\alpha` of the adaptive background weight (7.5, ``BG_WEIGHT_ALPHA``).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: each term is a mean
            within its image (over the :math:`|\mathcal{V}|^2` edges, the foreground elements, the
            background elements) and the images are **summed**, as the official code does (not an
            element mean; ``'none'`` cannot express the plain element mean). ``'sum'`` also sums the
            images; ``'none'`` returns the ``(N,)`` per-image totals.

    Shape:
        - student, teacher: :math:`(N, M, *)`
        - fg_mask, bg_mask: :math:`(N, M)`
        - teacher_logits: :math:`(N, M, K + 1)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Yixin Chen, Pengguang Chen, Shu Liu, Liwei Wang, Jiaya Jia. "Deep Structured Instance Graph
        for Distilling Object Detectors". ICCV 2021. arXiv:2109.12862.
        Official code: dvlab-research/Dsig@c8a534c ``Distillation.forward``
        (``projects/Distillation/model/rcnn_kd.py``) with ``generate_correlation_matrix``,
        ``corr_mat_mse_loss`` (``utils/matrix_utils.py``), ``mse_loss_withmask``
        (``utils/feature_kd_loss.py``) and ``TeacherROILoss.top_bg_idx_with_threshold``; matched by
        the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
        >>> fg = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
        >>> bg = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
        >>> logits = torch.randn(2, 6, 5)
        >>> dsig_graph_loss(s, t, fg, bg, logits).shape
        torch.Size([])
        >>> float(dsig_graph_loss(t, t, fg, bg, logits))
        0.0

    Notes:
        The sum over images makes the loss grow with the images per process (the official batch:
        8 images on 8 GPUs, one each). The background node term uses every sampled background node;
        the mining only chooses the graph's background nodes (the official code passes a
        ``MINE_NUM_BG = 10`` cap that it never uses; it is not reproduced). Cosine similarities
        follow ``F.normalize`` (a zero row has zero similarity to everything). Where the official
        code fails, the terms here are 0: an image without foreground nodes (official: NaN from
        the mean over an empty tensor) and one without background nodes (official: division by zero).
    """
    check_options(edge_weight=edge_weight, fg_weight=fg_weight, bg_weight=bg_weight,
                  adaptive_bg_weight=adaptive_bg_weight, reduction=reduction)
    check_shape(student, "student", "* N M D")
    check_shape(teacher, "teacher", "* N M D")
    check_same_shape(student, teacher, ("student", "teacher"))
    s = upcast(student).flatten(2)
    check_shapes(student=(s, "N M D"), fg_mask=(fg_mask, "N M any"), bg_mask=(bg_mask, "N M any"))
    fg, bg = fg_mask.bool(), bg_mask.bool()
    if not _tracing() and bool((fg & bg).any()):
        raise ValueError("fg_mask and bg_mask overlap: a node is either foreground or background")
    if teacher_logits is None:
        graph = fg
    else:
        check_shapes(student=(s, "N M D"), teacher_logits=(teacher_logits, "N M C"))
        graph = fg | dsig_mine_background(teacher_logits, bg, mining_threshold=mining_threshold,
                                          background_index=background_index)
    t = upcast(teacher.detach()).to(s.dtype).flatten(2)
    dim = s.shape[-1]

    # Benchmark (benchmarks.losses workload: 2 x 512 RoIs of 256x7x7, 128 fg, 23 % of bg mined; whole loss fwd+bwd,
    # CPU, one thread, one interleaved run): all-node matrices 3118-3131 ms, graph nodes gathered per image 881-1019 ms
    # (official 1065-1126 ms). The gathered form has data-dependent shapes, so torch.compile gets the masked one.
    gathered = not torch.compiler.is_compiling()
    edge = (_edges_gathered if gathered else _edges)(s, t, graph)

    # nodes: squared errors of the features, a mean per image and set
    node_error = F.mse_loss(s, t, reduction="none").sum(dim=-1)  # (N, M)
    n_fg, n_bg = fg.sum(dim=1).to(s.dtype), bg.sum(dim=1).to(s.dtype)
    fg_term = (node_error * fg.to(s.dtype)).sum(dim=1) / (n_fg * dim).clamp(min=1)
    bg_mean = (node_error * bg.to(s.dtype)).sum(dim=1) / (n_bg * dim).clamp(min=1)
    bg_term = adaptive_bg_weight * n_fg / n_bg.clamp(min=1) * bg_mean

    per_image = edge_weight * edge + fg_weight * fg_term + bg_weight * bg_term
    return reduce_loss(per_image, "sum" if reduction == "mean" else reduction).to(student.dtype)


def _edges(s: Tensor, t: Tensor, graph: Tensor) -> Tensor:
    """The ``(N,)`` edge terms of :func:`dsig_graph_loss` from the ``(N, M, M)`` correlations of all nodes, masked."""
    s_unit, t_unit = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    edge_error = (t_unit @ t_unit.transpose(1, 2) - s_unit @ s_unit.transpose(1, 2)).square()
    pairs = (graph[:, :, None] & graph[:, None, :]).to(s.dtype)
    n_graph = graph.sum(dim=1).to(s.dtype)
    return 0.5 * (edge_error * pairs).sum(dim=(1, 2)) / n_graph.square().clamp(min=1)


def _edges_gathered(s: Tensor, t: Tensor, graph: Tensor) -> Tensor:
    """:func:`_edges` on each image's graph nodes only (as the official code builds the matrices)."""
    terms = []
    for s_i, t_i, graph_i in zip(s, t, graph):
        index = graph_i.nonzero().squeeze(1)
        s_unit, t_unit = F.normalize(s_i[index], dim=-1), F.normalize(t_i[index], dim=-1)
        error = (t_unit @ t_unit.T - s_unit @ s_unit.T).square()
        terms.append(0.5 * error.sum() / max(index.numel(), 1) ** 2)
    return torch.stack(terms) if terms else s.new_zeros(0)


def dsig_logit_loss(
    student: Tensor, teacher: Tensor, *, temperature: float = 1.0, normalisation: str = "official",
    reduction: str = "mean",
) -> Tensor:
    r"""DSIG's RoI classification distillation: a softened KL of the ``K + 1`` class logits of every sampled RoI.

    .. math::
        \mathcal{L}_{cls} = \frac{T^2}{R \, (K + 1)} \sum_{r=1}^{R} \sum_{c=1}^{K+1}
            p^t_{r,c} \log \frac{p^t_{r,c}}{p^s_{r,c}}, \qquad p_r = \operatorname{softmax}(z_r / T)

    (``normalisation='official'``: ``F.kl_div``'s default element mean; ``'batchmean'`` divides by
    :math:`R` only, the textbook KD).

    Args:
        student: ``(R, K + 1)`` the student RoI head's class logits on the sampled RoIs.
        teacher: ``(R, K + 1)`` the teacher RoI head's logits on the same RoIs (detached inside).
        temperature: :math:`T` (official: 1.0, ``KD.TEMPERATURE``).
        normalisation: ``'official'`` (default): divide by :math:`R (K + 1)` as the official
            ``F.kl_div`` call does (so the released weight 3.0 acts as about ``3 / (K + 1)`` per RoI);
            ``'batchmean'``: divide by :math:`R`.
        reduction: ``'mean'`` (default) applies the paper's own normalisation, the one
            ``normalisation`` names (``'official'`` is the element mean of ``'none'``); ``'sum'`` sums;
            ``'none'`` returns the ``(R, K + 1)`` element terms (times :math:`T^2`).

    Shape:
        - student, teacher: :math:`(R, K + 1)`
        - output: scalar, or :math:`(R, K + 1)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Yixin Chen, Pengguang Chen, Shu Liu, Liwei Wang, Jiaya Jia. "Deep Structured Instance Graph
        for Distilling Object Detectors". ICCV 2021. arXiv:2109.12862.
        Official code: dvlab-research/Dsig@c8a534c ``DistillROILoss.softmax_cross_entropy_loss``
        (``projects/Distillation/model/roi_heads.py``); matched by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(4, 81), torch.randn(4, 81)
        >>> dsig_logit_loss(s, t).shape
        torch.Size([])
        >>> float(dsig_logit_loss(t, t))
        0.0

    Notes:
        The teacher's RoI head runs on the student's proposals, so both rows index the same RoIs.
        The official call leaves ``F.kl_div`` at its default ``'mean'`` (PyTorch warns that it is
        not the KL's batch mean); that is the default here because the released weights were tuned
        with it.
    """
    check_shapes(student=(student, "R C"), teacher=(teacher, "R C"))
    check_options(temperature=temperature, reduction=reduction)
    if normalisation not in ("official", "batchmean"):
        raise ValueError(f"normalisation must be 'official' or 'batchmean', got {normalisation!r}")
    log_q = torch.log_softmax(upcast(student) / temperature, dim=-1)
    log_p = torch.log_softmax(upcast(teacher.detach()) / temperature, dim=-1).to(log_q.dtype)
    terms = F.kl_div(log_q, log_p, reduction="none", log_target=True) * temperature**2  # p_t (log p_t - log p_s)
    if reduction == "mean" and normalisation == "batchmean":
        return (terms.sum() / max(terms.shape[0], 1)).to(student.dtype)
    return reduce_loss(terms, reduction).to(student.dtype)


@register_loss("dsig_graph", function=dsig_graph_loss, distributed="sum")
class DSIGGraphLoss(LossModule):
    """Module twin of :func:`dsig_graph_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        mining_threshold: float = 0.6,
        background_index: int = 0,
        edge_weight: float = 2.0,
        fg_weight: float = 0.5,
        bg_weight: float = 0.5,
        adaptive_bg_weight: float = 7.5,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            mining_threshold=mining_threshold, background_index=background_index, edge_weight=edge_weight,
            fg_weight=fg_weight, bg_weight=bg_weight, adaptive_bg_weight=adaptive_bg_weight, reduction=reduction,
            loss_weight=loss_weight,
        )


@register_loss("dsig_logit", function=dsig_logit_loss)
class DSIGLogitLoss(LossModule):
    """Module twin of :func:`dsig_logit_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self, *, temperature: float = 1.0, normalisation: str = "official", reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(temperature=temperature, normalisation=normalisation, reduction=reduction,
                         loss_weight=loss_weight)
