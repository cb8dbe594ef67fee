"""DenseVLM: unbiased region-language alignment distilled from a frozen VLM, Li et al., ICCV 2025."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__: list[str] = []


def _kl_rows(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(softmax(teacher) || softmax(student))`` per row, in log space."""
    teacher_log = teacher_logits.log_softmax(dim=-1)
    return (teacher_log.exp() * (teacher_log - student_logits.log_softmax(dim=-1))).sum(dim=-1)


def densevlm_loss(
    student: Tensor,
    teacher: Tensor,
    student_text: Tensor,
    teacher_text: Tensor,
    *,
    num_thing_classes: int,
    valid_mask: Tensor | None = None,
    score_threshold: float = 0.3,
    temperature: float = 0.01,
    reduction: str = "mean",
) -> Tensor:
    r"""DenseVLM: distil the frozen VLM's category distribution of each region, things and stuff decoupled.

    With L2-normalised region embeddings :math:`f^S_r` (the student VLM being fine-tuned) and
    :math:`f^T_r` (the frozen pre-trained VLM, both pooled from their dense maps over the same
    boxes, e.g. :func:`kdimpl.losses.clipself.clipself_region_embeddings`) and each model's text
    embeddings :math:`E^S, E^T` of the :math:`C` categories, the first ``num_thing_classes`` of
    which are things (foreground) and the rest stuff (background):

    .. math::
        p^T_r = \mathrm{softmax}(E^T f^T_r / \tau),\quad
        \hat c_r = \arg\max_c p^T_{r,c},\quad
        \mathcal{R} = \{r : \max_c p^T_{r,c} > \theta\}

    The retrieved category splits the kept regions into things :math:`\mathcal{R}_{th} =
    \{r \in \mathcal{R} : \hat c_r < K_{th}\}`, aligned over the thing categories only, and
    stuff :math:`\mathcal{R}_{st} = \mathcal{R} \setminus \mathcal{R}_{th}`, aligned over all
    categories:

    .. math::
        \mathcal{L} = \frac{1}{|\mathcal{R}_{th}|} \sum_{r \in \mathcal{R}_{th}}
            \mathrm{KL}\big(\sigma(E^T_{<K_{th}} f^T_r / \tau)\,\big\|\,\sigma(E^S_{<K_{th}} f^S_r / \tau)\big)
            + \frac{1}{|\mathcal{R}_{st}|} \sum_{r \in \mathcal{R}_{st}}
            \mathrm{KL}\big(\sigma(E^T f^T_r / \tau)\,\big\|\,\sigma(E^S f^S_r / \tau)\big)

    (a term with no region is 0).

    Args:
        student: ``(N, M, D_s)`` student region embeddings (padded per image; normalised inside).
        teacher: ``(N, M, D_t)`` frozen-VLM region embeddings of the same boxes (detached,
            normalised inside).
        student_text: ``(C, D_s)`` the student's text embeddings of the categories, used as
            given (the official ones are L2-normalised prompt-ensemble embeddings).
        teacher_text: ``(C, D_t)`` the frozen VLM's text embeddings (detached, used as given).
        num_thing_classes: :math:`K_{th}`, the number of leading categories that are things.
            The official code passes one less than its embedding file's thing count (see Notes).
        valid_mask: ``(N, M)`` bool mask of the real boxes; ``None``: all are real.
        score_threshold: :math:`\theta`, the frozen VLM's confidence a region needs (official 0.3).
        temperature: :math:`\tau` of both softmaxes (official: logit scale 100, i.e. 0.01).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the thing
            regions' KL summed and divided by their number plus the stuff regions' KL summed
            and divided by theirs (averaged over processes inside
            :func:`kdimpl.distributed.global_normalisers`); ``'sum'`` sums over all kept regions;
            ``'none'`` returns the ``(N, M)`` per-region KL (zero for padding and dropped
            regions). ``'none'`` cannot give ``'mean'`` by one division: split it by the
            retrieved category as above.

    Shape:
        - student: :math:`(N, M, D_s)`; teacher: :math:`(N, M, D_t)`
        - student_text: :math:`(C, D_s)`; teacher_text: :math:`(C, D_t)`
        - output: scalar, or :math:`(N, M)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Yunheng Li, Yuxuan Li, Quansheng Zeng, Wenhai Wang, Qibin Hou, Ming-Ming Cheng.
        "Unbiased Region-Language Alignment for Open-Vocabulary Dense Prediction". ICCV 2025.
        arXiv:2412.06244.
        Official code: HVision-NKU/DenseVLM@8ca50f7 ``src/training/densevlm.py::DenseVLM``,
        matched by the parity tests.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> text = F.normalize(torch.randn(6, 16), dim=-1)  # 4 things, 2 stuff
        >>> teacher = (text[torch.tensor([[0, 5, 2], [4, 1, 3]])] + 0.1 * torch.randn(2, 3, 16))
        >>> student = teacher + 0.5 * torch.randn(2, 3, 16)
        >>> densevlm_loss(student, teacher, text, text, num_thing_classes=4).shape
        torch.Size([])

    Notes:
        Official quirks kept: the thing/stuff boundary is read from the embedding file's name
        ``Thing<K>_STUFF`` as ``K - 1``, so the released configs (``Thing204``) treat the last
        thing category as stuff and leave it out of the thing regions' softmax; pass
        ``num_thing_classes=K - 1`` to reproduce that, ``K`` for the split the name states.
        Stuff regions are aligned over all categories, not the stuff ones only. The text
        embeddings are not normalised by the loss. Not kept: with no kept region the official
        ``batchmean`` divides by zero (NaN); here that gives 0. A region whose confidence is NaN
        is kept, so a NaN teacher gives a NaN loss.

        The official training averages the student's weights with the pre-trained ones after
        training (``--alpha``, off in the released script); that is outside the loss.

        Under ``DistributedDataParallel`` each process divides by its own region counts unless
        the call runs inside :func:`kdimpl.distributed.global_normalisers` (``distributed="count"``).
    """
    check_shapes(
        student=(student, "N M D"), teacher=(teacher, "N M E"), student_text=(student_text, "C D"),
        teacher_text=(teacher_text, "C E"),
    )
    check_options(reduction=reduction, temperature=temperature)
    if not 0 <= num_thing_classes <= student_text.shape[0]:
        raise ValueError(f"num_thing_classes must be in [0, {student_text.shape[0]}] (the categories); got {num_thing_classes}")
    if valid_mask is None:
        valid_mask = torch.ones(student.shape[:2], dtype=torch.bool, device=student.device)
    check_shapes(student=(student, "N M D"), valid_mask=(valid_mask, "N M any"))
    s = F.normalize(upcast(student), dim=-1)
    t = F.normalize(upcast(teacher.detach()), dim=-1)
    text_s = upcast(student_text).to(s.dtype)
    text_t = upcast(teacher_text.detach()).to(t.dtype)
    teacher_logits = t @ text_t.T / temperature  # (N, M, C)
    student_logits = s @ text_s.T / temperature
    confidence, retrieved = teacher_logits.softmax(dim=-1).max(dim=-1)
    kept = valid_mask.bool() & ~(confidence <= score_threshold)  # NaN confidence is kept: NaN in, NaN out
    thing = retrieved < num_thing_classes
    k = num_thing_classes
    kl_thing = _kl_rows(student_logits[..., :k], teacher_logits[..., :k])
    kl_all = _kl_rows(student_logits, teacher_logits)
    thing_kl = torch.where(kept & thing, kl_thing, 0.0)
    stuff_kl = torch.where(kept & ~thing, kl_all, 0.0)
    if reduction != "mean":
        return reduce_loss(thing_kl + stuff_kl, reduction).to(student.dtype)
    num_thing = (kept & thing).sum().to(s.dtype)
    num_stuff = (kept & ~thing).sum().to(s.dtype)
    loss = reduce_loss(thing_kl, reduction, avg_factor=num_thing) + reduce_loss(stuff_kl, reduction, avg_factor=num_stuff)
    return loss.to(student.dtype)


@register_loss("densevlm", function=densevlm_loss, distributed="count")
class DenseVLMLoss(LossModule):
    """Module twin of :func:`densevlm_loss`; ``loss_weight`` multiplies the result (official: 1)."""

    def __init__(
        self,
        *,
        num_thing_classes: int,
        score_threshold: float = 0.3,
        temperature: float = 0.01,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            num_thing_classes=num_thing_classes, score_threshold=score_threshold, temperature=temperature,
            reduction=reduction, loss_weight=loss_weight,
        )
