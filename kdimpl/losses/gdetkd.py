r"""G-DetKD, Yao et al., ICCV 2021: semantic-guided feature imitation (SGFI) and contrastive KD (CKD).

No official code exists. Both losses here follow the third-party re-implementation in
LutingWang/todd@e4ce698 (``todd/tasks/object_detection_knowledge_distillation/models/losses/``:
``rcnn.py::SGFILoss`` and ``ckd.py::ckd_loss``/``CKDLoss``, by HEAD's first author), matched to
float32 rounding by the parity tests. The paper's text could not be read here (only its abstract);
what it says beyond the abstract is known from third-party summaries, which differ from todd in:

* SGFI: todd's softmax runs over the RoIs of the batch instead of over the levels of each RoI (a
  bug, by the paper's "soft matching across all pyramid levels"): the default here is over the
  levels, ``normalize_over='rois'`` of :class:`kdimpl.adapters.GDetKDLevelAttention` reproduces
  todd. The summaries put a ReLU between the two stride-2 convolutions of the embedding; todd has
  none (``activation=``, default as todd). Both apply the student's
  channel adapter :math:`f_{adap}` before the embedding and in the fusion (todd leaves it outside the
  loss: pass ``adapter_student``).
* CKD: the summaries write the InfoNCE denominator with the positive pair in it; todd leaves the
  positive out (``positive_in_denominator=``). The projection head, the memory length (todd: the
  last 10 batches) and the IoU filter of negatives (todd: 0.5) are todd's choices.

Not here: the RoI pooling (the student's RoI features from every FPN level, e.g.
:func:`gdetkd_pool_levels`; the teacher's from the RoI's own level), the region embeddings of the
detectors' heads that CKD compares, the class-aware regression KD and head transfer of the
homogeneous setting, and the student-proposal sampling of the heterogeneous one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import _tracing, check_modules, check_options, check_same_shape, check_shape
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..adapters.gdetkd import GDetKDLevelAttention
from ..masks import pad_boxes
from ..ops import box_iou, roi_align_padded

__all__ = ["GDetKDMemory", "gdetkd_pool_levels"]

Module = Callable[[Tensor], Tensor] | nn.Module | None


def gdetkd_pool_levels(
    features: Sequence[Tensor], boxes: Tensor, image_size: Sequence[int] | Tensor, output_size: int = 7
) -> Tensor:
    """RoIAlign of the same ``(N, M, 4)`` pixel boxes on every FPN level: the student input of :func:`gdetkd_sgfi_loss`.

    Returns ``(L, N * M, C, output_size, output_size)`` (:func:`kdimpl.ops.roi_align_padded`, adaptive
    sampling, ``aligned=False`` as mmdetection's default RoIAlign).
    """
    return torch.stack([roi_align_padded(f, boxes, image_size, output_size).flatten(0, 1) for f in features])


def gdetkd_sgfi_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    attention_student: Module = None,
    adapter_student: Module = None,
    reduction: str = "mean",
) -> Tensor:
    r"""G-DetKD semantic-guided feature imitation: each RoI's student features over all levels, fused by attention.

    For RoI :math:`r`, the teacher's feature :math:`T_r` (pooled from the RoI's own FPN level) queries
    the student's features :math:`S_r^l` pooled from every level :math:`l`
    (:class:`kdimpl.adapters.GDetKDLevelAttention`):

    .. math::
        \alpha_r^l = \operatorname{softmax}_l\Big(\big\langle f_{embed}(f_{adap}(S_r^l)),
            f_{embed}(T_r)\big\rangle / \tau\Big), \qquad
        \mathcal{L}_{SGFI} = \frac{1}{R C h w} \sum_{r=1}^{R}
            \Big\| \sum_{l} \alpha_r^l f_{adap}(S_r^l) - T_r \Big\|_2^2

    Args:
        student: the student's RoI features from every level, ``(L, R, C_s, h, w)``
            (:func:`gdetkd_pool_levels`; todd: ``L = 4``, ``h = w = 7``).
        teacher: the teacher's RoI features from each RoI's own level, ``(R, C, h, w)`` (detached
            inside; the embedding still learns through the query).
        attention_student: the level attention (:class:`kdimpl.adapters.GDetKDLevelAttention`:
            :math:`f_{embed}` and the learnable :math:`\tau`), a module mapping
            ``(L, R, C, h, w)`` and ``(R, C, h, w)`` to ``(L, R)`` weights.
        adapter_student: :math:`f_{adap}`, applied to every level's ``(R, C_s, h, w)`` student features
            before the attention and the fusion, or ``None`` (todd: none, ``C_s = C``).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the element mean
            over :math:`R C h w` (todd's ``MSELoss``), which is also the element mean of ``'none'``;
            ``'sum'`` sums; ``'none'`` returns the ``(R, C, h, w)`` squared errors.

    Shape:
        - student: :math:`(L, R, C_s, h, w)`; teacher: :math:`(R, C, h, w)`
        - output: scalar, or :math:`(R, C, h, w)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Lewei Yao, Renjie Pi, Hang Xu, Wei Zhang, Zhenguo Li, Tong Zhang. "G-DetKD: Towards General
        Distillation Framework for Object Detectors via Contrastive and Semantic-guided Feature
        Imitation". ICCV 2021. arXiv:2108.07482. No official code; this follows the third-party
        LutingWang/todd@e4ce698 ``SGFILoss`` (matched by the parity test).

    Example:
        >>> import torch
        >>> from kdimpl.adapters import GDetKDLevelAttention
        >>> s, t = torch.randn(4, 6, 8, 7, 7), torch.randn(6, 8, 7, 7)
        >>> gdetkd_sgfi_loss(s, t, attention_student=GDetKDLevelAttention(8)).shape
        torch.Size([])

    Notes:
        With identical keys for every level the attention is uniform and the fused feature is the
        mean over levels. The teacher input is detached, so only the student, :math:`f_{adap}` and the
        attention's parameters learn.
    """
    check_options(reduction=reduction)
    check_modules(attention_student=attention_student)
    check_shape(student, "student", "L R C H W")
    check_shape(teacher, "teacher", "R C H W")
    levels, rois = student.shape[:2]
    s = upcast(student)
    if adapter_student is not None:
        s = adapter_student(s.flatten(0, 1))
        s = s.reshape(levels, rois, *s.shape[1:])
    t = upcast(teacher.detach()).to(s.dtype)
    check_same_shape(s[0], t, ("student (one level, after adapter_student)", "teacher"),
                     hint="Pass adapter_student when the channels differ.")
    attention = attention_student(s, t)  # (L, R)
    fused = torch.einsum("lrchw,lr->rchw", s, attention)
    error = F.mse_loss(fused, t, reduction="none")
    return reduce_loss(error, reduction).to(student.dtype)


def gdetkd_contrastive_loss(
    student: Tensor,
    teacher: Tensor,
    rois: Sequence[Tensor] | Tensor | None = None,
    roi_mask: Tensor | None = None,
    memory: Tensor | None = None,
    *,
    temperature: float = 0.07,
    iou_threshold: float = 0.5,
    positive_in_denominator: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""G-DetKD contrastive KD: each student RoI embedding picks its teacher embedding out of the others.

    With :math:`s_i`, :math:`t_j` the L2-normalised region embeddings of the batch's :math:`R` RoIs,
    :math:`t_j` for :math:`j > R` those of a memory of earlier batches, and :math:`\gamma` the
    temperature:

    .. math::
        \mathcal{L}_{CKD} = \frac{1}{R} \sum_{i=1}^{R} -\log
            \frac{\exp(t_i^\top s_i / \gamma)}{\sum_{j \in \mathcal{N}(i)} \exp(t_j^\top s_i / \gamma)}

    where the negatives :math:`\mathcal{N}(i)` are every other RoI of the batch (all images) and
    every memory row, except the RoIs of the same image that overlap RoI :math:`i` with IoU above
    ``iou_threshold``; the positive :math:`j = i` is not in :math:`\mathcal{N}(i)` (todd), or is
    with ``positive_in_denominator=True`` (the InfoNCE form of the paper's summaries).

    Args:
        student: the student's region embeddings, ``(N, R, D)`` (normalised inside).
        teacher: the teacher's embeddings of the same RoIs, ``(N, R, D)`` (normalised and detached
            inside).
        rois: the RoIs' boxes, ``(N, R, 4)`` xyxy pixels or ``N`` tensors of ``(R, 4)``, for the
            overlap filter of negatives; ``None``: no filter (only the positive is left out).
        roi_mask: ``(N, R)`` bool, the real RoIs (others are neither anchors nor negatives); default:
            all.
        memory: ``(M, D)`` L2-normalised teacher embeddings of earlier batches, used as given
            (:class:`GDetKDMemory` stores them normalised, as todd's ``MemoryPool``); negatives only,
            never filtered; or ``None``.
        temperature: :math:`\gamma` (todd: 0.07).
        iou_threshold: RoIs of one image overlapping more than this are not each other's negatives
            (todd: 0.5).
        positive_in_denominator: put the positive pair into the denominator (InfoNCE); default
            ``False`` as todd.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum over RoIs
            divided by the number of real RoIs :math:`R` (at least 1; todd's mean), which is the
            element mean of ``'none'`` when every RoI is real; ``'sum'`` sums; ``'none'`` returns the
            ``(N, R)`` per-RoI losses, 0 for RoIs that are not real.

    Shape:
        - student, teacher: :math:`(N, R, D)`; memory: :math:`(M, D)`
        - output: scalar, or :math:`(N, R)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Yao et al., "G-DetKD: Towards General Distillation Framework for Object Detectors via
        Contrastive and Semantic-guided Feature Imitation", ICCV 2021, arXiv:2108.07482. No official
        code; this follows the third-party LutingWang/todd@e4ce698 ``ckd_loss`` and ``CKDLoss``
        (matched by the parity tests, memory and overlap filter included).

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
        >>> memory = torch.nn.functional.normalize(torch.randn(30, 16), dim=-1)
        >>> gdetkd_contrastive_loss(s, t, memory=memory).shape
        torch.Size([])

    Notes:
        A RoI left without any negative (a batch of one RoI, no memory) gives 0 here; todd's
        ``ckd_loss`` divides by an empty sum and returns ``-inf``. The positive is always left out of
        the negatives (todd leaves it in for a zero-area RoI, whose IoU with itself is 0). The
        logits are exact log-space (``logsumexp``); todd exponentiates directly, which is safe only
        because the embeddings are normalised. todd's memory also gathers the batches of every GPU.

        Under ``DistributedDataParallel`` the negatives are the RoIs of the process's own images only, so no
        normaliser makes the gradients equal those of one process on the union batch
        (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    check_options(temperature=temperature, reduction=reduction)
    check_shape(student, "student", "N R D")
    check_shape(teacher, "teacher", "N R D")
    check_same_shape(student, teacher, ("student", "teacher"))
    n, r, _ = student.shape
    if rois is not None:
        boxes, valid = pad_boxes(rois, roi_mask, batch_size=n, name="rois", mask_name="roi_mask")
        if not _tracing() and boxes.shape[1] != r:
            raise ValueError(f"rois has {boxes.shape[1]} boxes per image but student has {r} RoIs per image")
    else:
        valid = torch.ones(n, r, dtype=torch.bool, device=student.device) if roi_mask is None else roi_mask
    valid = valid.to(student.device).reshape(-1)
    s = F.normalize(upcast(student).flatten(0, 1), dim=-1)
    t = F.normalize(upcast(teacher.detach()).flatten(0, 1).to(s.dtype), dim=-1)
    s = s / temperature  # scaling the (NR, D) rows, not the (NR, NR + M) logits
    logits = s @ t.T  # (NR, NR): row i holds t_j . s_i / gamma
    positive = logits.diagonal()
    eye = torch.eye(n * r, dtype=torch.bool, device=s.device)
    allowed = ~eye & valid[None, :]
    if rois is not None:
        flat = boxes.to(s).reshape(n * r, 4)
        image = torch.arange(n, device=s.device).repeat_interleave(r)
        allowed = allowed & ~((image[:, None] == image[None, :]) & (box_iou(flat, flat) > iou_threshold))
    has_negative = allowed.any(dim=1)
    if positive_in_denominator:
        allowed = allowed | eye
    # the batch's and the memory's terms of the denominator, each a logsumexp; a row with no allowed
    # batch column sums over its positive instead and is then set to -inf (finite gradient, none used)
    in_batch = allowed.any(dim=1)
    safe = allowed | (eye & ~in_batch[:, None])
    denominator = torch.logsumexp(logits.masked_fill(~safe, float("-inf")), dim=1)
    denominator = torch.where(in_batch, denominator, torch.full_like(denominator, float("-inf")))
    if memory is not None:
        check_shape(memory, "memory", "M D")
    if memory is not None and memory.shape[0] > 0:
        memory_logits = s @ upcast(memory.detach()).to(s.dtype).T  # (NR, M)
        denominator = torch.logaddexp(denominator, torch.logsumexp(memory_logits, dim=1))
        has_negative = torch.ones_like(has_negative)
    loss = torch.where(valid & has_negative, denominator - positive, torch.zeros_like(positive))
    loss = loss.reshape(n, r)
    if reduction == "mean":
        return (loss.sum() / valid.sum().clamp(min=1)).to(student.dtype)
    return reduce_loss(loss, reduction).to(student.dtype)


class GDetKDMemory:
    """The memory of :func:`gdetkd_contrastive_loss`: the teacher embeddings of the last ``size`` batches.

    ``push`` stores a batch's (detached, normalised) real rows after the loss of that batch, so the
    memory never holds the current batch (todd's ``MemoryPool`` puts the current batch first and
    passes it with the memory; the rows are the same). Single process: gather across GPUs yourself.

    Example:
        >>> import torch
        >>> memory = GDetKDMemory(size=2)
        >>> for _ in range(3):
        ...     memory.push(torch.randn(2, 4, 8))
        >>> memory.tensor().shape
        torch.Size([16, 8])
    """

    def __init__(self, size: int = 10) -> None:
        self.size = size
        self._batches: list[Tensor] = []

    def push(self, teacher: Tensor, roi_mask: Tensor | None = None) -> None:
        rows = teacher.detach().reshape(-1, teacher.shape[-1])
        if roi_mask is not None:
            rows = rows[roi_mask.reshape(-1)]
        self._batches.insert(0, F.normalize(rows, dim=-1))
        del self._batches[self.size:]

    def tensor(self) -> Tensor | None:
        """The stored rows, newest batch first, or ``None`` when empty."""
        return torch.cat(self._batches) if self._batches else None


@register_loss("gdetkd_sgfi", function=gdetkd_sgfi_loss)
class GDetKDSGFILoss(LossModule):
    """Module twin of :func:`gdetkd_sgfi_loss`; ``loss_weight`` multiplies the result.

    Args:
        channels: with it, the loss owns ``attention_student``, a
            :class:`kdimpl.adapters.GDetKDLevelAttention` over ``channels``-channel RoI features.
        hidden_channels: see :class:`kdimpl.adapters.GDetKDLevelAttention` (todd: 128).
        embedding_channels: see :class:`kdimpl.adapters.GDetKDLevelAttention` (todd: 64).
        initial_temperature: the learnable :math:`\\tau`'s initial value (todd: 1.0).
        activation: a ReLU inside the embedding (todd: no).
        normalize_over: the softmax's axis, ``'levels'`` (the paper) or ``'rois'`` (todd).
    """

    def __init__(
        self,
        *,
        channels: int | None = None,
        hidden_channels: int = 128,
        embedding_channels: int = 64,
        initial_temperature: float = 1.0,
        activation: bool = False,
        normalize_over: str = "levels",
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        attention = {} if channels is None else {"attention_student": GDetKDLevelAttention(
            channels, hidden_channels=hidden_channels, embedding_channels=embedding_channels,
            temperature=initial_temperature, activation=activation, normalize_over=normalize_over)}
        super().__init__(**attention, reduction=reduction, loss_weight=loss_weight)


@register_loss("gdetkd_contrastive", function=gdetkd_contrastive_loss, distributed="batch")
class GDetKDContrastiveLoss(LossModule):
    """Module twin of :func:`gdetkd_contrastive_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        temperature: float = 0.07,
        iou_threshold: float = 0.5,
        positive_in_denominator: bool = False,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            temperature=temperature, iou_threshold=iou_threshold, positive_in_denominator=positive_in_denominator,
            reduction=reduction, loss_weight=loss_weight,
        )
