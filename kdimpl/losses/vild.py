"""ViLD: vision and language knowledge distillation (Gu et al., ICLR 2022), its two distillation losses.

ViLD trains a two-stage detector whose region embeddings (the box head's output projected to the
vision-language model's embedding size) live in the space of a frozen CLIP-like teacher:

- :func:`vild_text_loss` (ViLD-text) classifies the region embeddings of the sampled RoIs against the
  teacher's *text* embeddings of the base categories plus one learned background embedding;
- :func:`vild_image_loss` (ViLD-image) pulls the region embeddings of pre-computed proposals onto
  the teacher's *image* embeddings of the same proposals (crops run through the image encoder
  offline).

Both take pre-computed embeddings: the detector, RoI pooling, projection layer and the CLIP encoders
stay the caller's. The losses act on regions pooled from all FPN levels at once, so there is no
per-level form. A training step reads::

    loss = (vild_text_loss(head(rois), text_embeddings, labels, background_embedding)
            + 0.5 * vild_image_loss(head(proposals), clip_image_embeddings, valid_mask))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import _tracing, check_background_index, check_labels, check_options, check_shapes
from .._dtypes import upcast
from .._registry import register_loss
from ..distributed import reduce_normaliser

__all__ = ["vild_region_logits"]


def vild_region_logits(
    student_embeddings: Tensor,
    teacher_text_embeddings: Tensor,
    background_embedding: Tensor,
    *,
    temperature: float = 0.01,
    background_index: int = 0,
) -> Tensor:
    r"""ViLD's classifier: scaled cosine similarities of regions to the background and class embeddings.

    :math:`z(r) = [\cos(e_r, e_{bg}), \cos(e_r, t_1), \dots, \cos(e_r, t_C)] / \tau`, with the
    background column at ``background_index``; the text embeddings are detached.

    Args:
        student_embeddings: ``(..., D)`` region embeddings :math:`e_r`.
        teacher_text_embeddings: ``(C, D)`` text embeddings :math:`t_c` of the categories.
        background_embedding: ``(D,)`` learned background embedding :math:`e_{bg}`.
        temperature: :math:`\tau` (0.01: the official code multiplies by 100).
        background_index: column of the background logit (0: first, as the official code; -1: last).

    Returns:
        ``(..., C + 1)`` logits, in the compute dtype (float32 for half-precision inputs).
    """
    region = F.normalize(upcast(student_embeddings), dim=-1)
    text = F.normalize(upcast(teacher_text_embeddings.detach()), dim=-1).to(region.dtype)
    background = F.normalize(upcast(background_embedding), dim=-1).to(region.dtype)
    logits = region @ text.T
    background_logit = (region * background).sum(dim=-1, keepdim=True)
    bg = check_background_index(background_index, text.shape[0] + 1)
    return torch.cat([logits[..., :bg], background_logit, logits[..., bg:]], dim=-1) / temperature


def vild_text_loss(
    student_embeddings: Tensor,
    teacher_text_embeddings: Tensor,
    labels: Tensor,
    background_embedding: Tensor | None = None,
    *,
    temperature: float = 0.01,
    background_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    r"""ViLD-text: region embeddings classified by the teacher's text embeddings (cross-entropy).

    .. math::
        z(r) = \Big[\cos(e_r, e_{bg}),\ \cos(e_r, t_1),\ \dots,\ \cos(e_r, t_{C})\Big], \qquad
        L_{\text{ViLD-text}} = \frac{1}{R} \sum_{r} \mathcal{L}_{CE}\big(\operatorname{softmax}(z(r) / \tau),\, y_r\big)

    with :math:`e_r` the region embedding of a sampled RoI, :math:`t_c` the frozen text embedding
    of base category :math:`c`, :math:`e_{bg}` a learned background embedding, :math:`y_r` the RoI's
    label (background included) and :math:`R` the number of RoIs in the batch.

    Args:
        student_embeddings: region embeddings :math:`e_r` of the sampled RoIs, the box head's output
            after the projection to the text embedding size (normalised inside).
        teacher_text_embeddings: :math:`t_c`, the teacher's text embeddings of the ``C`` training
            categories (normalised and detached inside).
        labels: ``y_r``, integer labels in ``[0, C]``; ``background_index`` is the background.
        background_embedding: :math:`e_{bg}`, the learned background embedding (normalised inside;
            it receives a gradient). Required: pass it, or build :class:`ViLDTextLoss` with
            ``embed_dim`` so the twin owns it.
        temperature: :math:`\tau` (0.01; the official code multiplies the cosines by 100).
        background_index: the label of the background (0: torchvision's convention and the
            official code's; mmdetection puts it last: -1).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum of the
            per-RoI cross-entropies divided by the number of RoIs (every sampled RoI, background
            ones included); ``'sum'``: the sum; ``'none'``: the per-RoI cross-entropies.

    Shape:
        - student_embeddings: :math:`(N, R, D)` (any leading dims); labels: :math:`(N, R)`
        - teacher_text_embeddings: :math:`(C, D)`; background_embedding: :math:`(D,)`
        - output: scalar, or :math:`(N, R)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_embeddings``.

    Reference:
        Xiuye Gu, Tsung-Yi Lin, Weicheng Kuo, Yin Cui. "Open-vocabulary Object Detection via Vision
        and Language Knowledge Distillation". ICLR 2022. arXiv:2104.13921.
        Official code (TensorFlow): tensorflow/tpu@6fc7708
        (``models/official/detection/projects/vild/modeling/vild_head.py::ViLDFastrcnnHead``,
        ``vild_losses.py::FastrcnnClassLoss``).

    Example:
        >>> import torch
        >>> regions, text = torch.randn(2, 16, 512), torch.randn(5, 512)
        >>> labels = torch.randint(0, 6, (2, 16))
        >>> vild_text_loss(regions, text, labels, torch.randn(512)).shape
        torch.Size([])

    Notes:
        Follows the official head: region, text and background embeddings are L2-normalised
        (its ``normalize_visual``/``normalize_classifier``), the background logit comes first and
        the cosines are multiplied by ``1 / tau = 100``; the cross-entropy is averaged over every
        sampled RoI. The official LVIS configuration keeps the text embeddings of all 1203
        categories and multiplies the logits of the rare (novel) ones by 0 (``mask_rare``), so they
        stay in the softmax with logit 0 instead of leaving it; passing zero vectors as those
        categories' text embeddings reproduces that (a zero vector normalises to zero here too).
    """
    check_shapes(
        student_embeddings=(student_embeddings, "* D"),
        teacher_text_embeddings=(teacher_text_embeddings, "C D"),
    )
    if background_embedding is None:
        raise ValueError("background_embedding is required (ViLD learns it): pass a (D,) tensor, or build "
                         "ViLDTextLoss(embed_dim=D), which owns one")
    check_shapes(student_embeddings=(student_embeddings, "* D"), background_embedding=(background_embedding, "D"))
    check_labels(labels, teacher_text_embeddings.shape[0] + 1)
    if not _tracing() and labels.shape != student_embeddings.shape[:-1]:
        raise ValueError(f"labels must have the shape of student_embeddings without its last dim, "
                         f"{tuple(student_embeddings.shape[:-1])}, got {tuple(labels.shape)}")
    check_options(temperature=temperature, reduction=reduction)
    num_classes = teacher_text_embeddings.shape[0] + 1
    logits = vild_region_logits(student_embeddings, teacher_text_embeddings, background_embedding,
                                temperature=temperature, background_index=background_index)
    terms = F.cross_entropy(logits.reshape(-1, num_classes), labels.reshape(-1), reduction="none")
    terms = terms.reshape(labels.shape)
    if reduction == "none":
        return terms.to(student_embeddings.dtype)
    total = terms.sum()
    if reduction == "mean":
        total = total / max(terms.numel(), 1)
    return total.to(student_embeddings.dtype)


@register_loss("vild_text", function=vild_text_loss)
class ViLDTextLoss(LossModule):
    """Module twin of :func:`vild_text_loss`; ``loss_weight`` multiplies the result (official 1.0).

    Args:
        embed_dim: with a value, the twin owns the learned background embedding
            (``background_embedding``, a ``(embed_dim,)`` parameter initialised from
            :math:`\\mathcal{N}(0, 0.01^2)` as the official code) and passes it on every call.
    """

    def __init__(
        self,
        *,
        embed_dim: int | None = None,
        temperature: float = 0.01,
        background_index: int = 0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        pieces = {}
        if embed_dim is not None:
            pieces["background_embedding"] = nn.Parameter(0.01 * torch.randn(embed_dim))
        super().__init__(temperature=temperature, background_index=background_index, reduction=reduction,
                         loss_weight=loss_weight, **pieces)


def vild_image_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    valid_mask: Tensor | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""ViLD-image: L1 distance between region embeddings and the teacher's image embeddings of the proposals.

    .. math::
        L_{\text{ViLD-image}} = \frac{1}{M} \sum_{\tilde r} \Big\| \frac{e_{\tilde r}}{\|e_{\tilde r}\|_2}
            - \frac{v_{\tilde r}}{\|v_{\tilde r}\|_2} \Big\|_1

    over the :math:`M` valid pre-computed proposals :math:`\tilde r` of the batch, with
    :math:`e_{\tilde r}` the detector's region embedding of the proposal and :math:`v_{\tilde r}` the
    teacher image encoder's embedding of its crop.

    Args:
        student_embeddings: region embeddings :math:`e_{\tilde r}` of the proposals (the same head and
            projection as for ViLD-text; normalised inside).
        teacher_embeddings: :math:`v_{\tilde r}`, the teacher's image embeddings of the proposals
            (normalised and detached inside).
        valid_mask: ``(N, M)`` bool or 0/1, ``True`` for a real proposal (official: a box with a
            positive coordinate; padding slots are all-zero boxes); ``None``: all valid.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the summed absolute
            differences divided by the number of valid proposals (not by the number of elements: use
            ``reduction='none'`` and ``.mean()`` for the plain element mean); ``'sum'``: the sum;
            ``'none'``: the ``(N, M, D)`` absolute differences, zero at invalid proposals.

    Shape:
        - student_embeddings, teacher_embeddings: :math:`(N, M, D)`; valid_mask: :math:`(N, M)`
        - output: scalar, or :math:`(N, M, D)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_embeddings``.

    Reference:
        Xiuye Gu, Tsung-Yi Lin, Weicheng Kuo, Yin Cui. "Open-vocabulary Object Detection via Vision
        and Language Knowledge Distillation". ICLR 2022. arXiv:2104.13921.
        Official code (TensorFlow): tensorflow/tpu@6fc7708
        (``models/official/detection/projects/vild/modeling/vild_model.py::ViLDModel.build_loss_fn``,
        ``feat_distill_loss``).

    Example:
        >>> import torch
        >>> regions, clip = torch.randn(2, 300, 512), torch.randn(2, 300, 512)
        >>> vild_image_loss(regions, clip).shape
        torch.Size([])

    Notes:
        The official code takes ``tf.losses.absolute_difference`` with the per-proposal mask
        broadcast over the embedding and ``SUM_BY_NONZERO_WEIGHTS`` (a division by ``M * D``), then
        multiplies by ``D``: the division by ``M`` above. The official configuration weights this
        term by 0.5 (``feat_distill_weight``) and uses up to 300 proposals per image.

        Under ``DistributedDataParallel`` each process divides by its own number of valid proposals; inside
        :func:`kdimpl.distributed.global_normalisers` it divides by the mean over processes and the
        gradients equal those of one process on the union batch (behaviour ``'count'``).
    """
    check_shapes(
        student_embeddings=(student_embeddings, "N M D"),
        teacher_embeddings=(teacher_embeddings, "N M D"),
    )
    if valid_mask is not None:
        check_shapes(student_embeddings=(student_embeddings, "N M D"), valid_mask=(valid_mask, "N M any"))
    check_options(reduction=reduction)
    s = F.normalize(upcast(student_embeddings), dim=-1)
    t = F.normalize(upcast(teacher_embeddings.detach()), dim=-1).to(s.dtype)
    terms = (s - t).abs()
    if valid_mask is not None:
        terms = torch.where(valid_mask.bool()[..., None], terms, torch.zeros_like(terms))
    if reduction == "none":
        return terms.to(student_embeddings.dtype)
    total = terms.sum()
    if reduction == "mean":
        count = terms.shape[0] * terms.shape[1] if valid_mask is None else valid_mask.bool().sum()
        total = total / reduce_normaliser(torch.as_tensor(count, dtype=total.dtype, device=total.device)).clamp(min=1)
    return total.to(student_embeddings.dtype)


@register_loss("vild_image", function=vild_image_loss, distributed="count")
class ViLDImageLoss(LossModule):
    """Module twin of :func:`vild_image_loss`; ``loss_weight`` multiplies the result (official 0.5)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
