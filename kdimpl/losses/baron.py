"""BARON: aligning bags of regions (Wu et al., CVPR 2023), its two distillation losses and the bag sampler.

BARON groups each region proposal with neighbouring boxes into a *bag* (:func:`baron_neighbor_boxes`),
turns every region of the bag into pseudo-words (the detector's region features projected to the
word-embedding space of a CLIP-like text encoder), and encodes the bag's word sequence with the
frozen text encoder. :func:`baron_bag_loss` aligns that bag embedding with the teacher's, the frozen
image encoder's embedding of the crop spanning the bag, by a symmetric InfoNCE;
:func:`baron_region_loss` does the same for single regions (the mean of a region's word tokens
against the teacher's dense features pooled in the region's box). A training step reads::

    words, mask = ...                             # (Q, L, D_w) pseudo-words of Q bags, (Q, L) valid words
    teacher = clip.encode_image(crops_of_bags)    # (Q, D), under no_grad
    loss = baron_bag_loss(words, teacher, mask, bag_ids, text_encoder_student=encoder)

Positional embeddings of the boxes, word dropout and the CLIP encoders are the caller's; the
encoder is any callable ``(words, mask) -> (Q, D)``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import _tracing, check_image_size, check_options, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["baron_contrastive_terms", "baron_neighbor_probabilities", "baron_neighbor_boxes"]

Encoder = Callable[[Tensor, Tensor], Tensor] | nn.Module | None


_ROWS = (0, 0, 0, 1, 1, 1, 2, 2, 2)


def baron_neighbor_probabilities(
    boxes: Tensor,
    image_size: Sequence[int],
    *,
    alpha: float = 3.0,
    cut_off_thr: float = 0.3,
    base_probability: float = 0.3,
    interval: float = -0.1,
) -> tuple[Tensor, Tensor]:
    r"""The 3x3 neighbourhood of each box and the probability that each neighbour joins its bag.

    Cell :math:`(i, j)` of the grid is the box shifted by :math:`(j - 1)(1 + \delta)` widths and
    :math:`(i - 1)(1 + \delta)` heights (:math:`\delta` = ``interval``; the centre cell is the box).
    A side neighbour joins with probability
    :math:`\min(p_0 \cdot \rho^{\alpha}, p_0)` (:math:`\rho = h/w` for left and right,
    :math:`w/h` for up and down), 0 where fewer than ``cut_off_thr + interval`` box sizes remain to
    the image border; a corner cell takes the square root of the product of its two sides'; the
    centre is 1.

    Args:
        boxes: ``(M, 4)`` xyxy boxes in pixels.
        image_size: ``(height, width)`` of the image.
        alpha: exponent of the aspect-ratio term (official 3.0).
        cut_off_thr: room to the border, in box sizes, below which a side is dropped (official 0.3).
        base_probability: :math:`p_0`, the highest side probability (official 0.3).
        interval: :math:`\delta`, the gap between cells in box sizes (official -0.1: they overlap).

    Returns:
        ``(templates, probabilities)``: ``(M, 9, 4)`` unclipped cell boxes, row-major from the top
        left, and ``(M, 9)`` probabilities.
    """
    check_shapes(boxes=(boxes, "M 4"))
    img_h, img_w = (float(v) for v in image_size)
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1 + 1e-12, y2 - y1 + 1e-12
    side = torch.stack([h / w, h / w, w / h, w / h], dim=-1).pow(alpha) * base_probability
    room = torch.stack([x1 / w, (img_w - x2) / w, y1 / h, (img_h - y2) / h], dim=-1)
    side = torch.nan_to_num((side * (room > cut_off_thr + interval)).clamp(0, base_probability), nan=0.0)
    left, right, up, down = side.unbind(-1)
    one = torch.ones_like(left)
    col = torch.stack([left, one, right], dim=-1)  # (M, 3) by column
    row = torch.stack([up, one, down], dim=-1)  # (M, 3) by row
    probabilities = (row[:, :, None] * col[:, None, :]).flatten(1)
    corners = [0, 2, 6, 8]
    probabilities[:, corners] = probabilities[:, corners].sqrt()
    steps = torch.tensor([-1.0, 0.0, 1.0], dtype=boxes.dtype, device=boxes.device) * (1 + interval)
    dx = (w[:, None] * steps[None, :])[:, [0, 1, 2] * 3]
    dy = (h[:, None] * steps[None, :])[:, list(_ROWS)]
    templates = boxes[:, None, :] + torch.stack([dx, dy, dx, dy], dim=-1)
    return templates, probabilities.clamp(0, 1)


def _bag_geometry(templates: Tensor, ids: Sequence[int], image_size: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """The bag's boxes clipped to the image, their spanning box, and the boxes relative to it (0..1)."""
    img_h, img_w = (float(v) for v in image_size)
    boxes = templates[list(ids)]
    limit = boxes.new_tensor([img_w, img_h, img_w, img_h])
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    spanned = torch.cat([boxes[:, :2].amin(0), boxes[:, 2:].amax(0)])
    size = (spanned[2:] - spanned[:2]).repeat(2)
    return boxes, (boxes - spanned[:2].repeat(2)) / (size + 1e-12), spanned


def baron_neighbor_boxes(
    box: Tensor,
    image_size: Sequence[int],
    *,
    max_groups: int = 3,
    max_permutations: int = 2,
    alpha: float = 3.0,
    cut_off_thr: float = 0.3,
    base_probability: float = 0.3,
    interval: float = -0.1,
    rng: torch.Generator | None = None,
) -> list[tuple[Tensor, Tensor, Tensor, list[int]]]:
    r"""BARON's bags around one region: random groups of its neighbours, each in a few word orders.

    Each group keeps the centre cell (the region) and every other cell with its probability from
    :func:`baron_neighbor_probabilities` (distinct groups only); there are
    :math:`\min(G, n!)` groups for :math:`n` neighbours of non-zero probability, and each group
    gives :math:`\min(P, |g|!)` distinct random orders of its boxes (a bag each).

    Args:
        box: ``(4,)`` xyxy region in pixels.
        image_size: ``(height, width)`` of the image (cells are clipped to it).
        max_groups: :math:`G`, the most groups per region (official 3 on COCO, 6 on LVIS).
        max_permutations: :math:`P`, the most orders per group (official 2).
        alpha: see :func:`baron_neighbor_probabilities`.
        cut_off_thr: see :func:`baron_neighbor_probabilities`.
        base_probability: see :func:`baron_neighbor_probabilities`.
        interval: see :func:`baron_neighbor_probabilities`.
        rng: optional ``torch.Generator`` for the draws.

    Returns:
        One ``(boxes, normed_boxes, spanned_box, cell_ids)`` per bag: the ``(n, 4)`` boxes in word
        order, the same boxes relative to the bag's spanning box (``0..1``, for the positional
        embeddings), the ``(4,)`` spanning box (the teacher's crop) and the cells (0..8, 4 is the
        region; equal sorted cells mean the same bag under another order).

    Notes:
        The official sampler draws with numpy/``random``; the same distribution is drawn here with
        ``torch``. The number of groups is also capped at :math:`2^n` (the official loop would not
        end when :math:`G > 2^n`).
    """
    check_image_size(image_size, 1)
    templates, probabilities = baron_neighbor_probabilities(
        box[None], image_size, alpha=alpha, cut_off_thr=cut_off_thr, base_probability=base_probability,
        interval=interval)
    templates, probabilities = templates[0], probabilities[0].to(torch.float64)
    valid = int((probabilities > 0).sum()) - 1
    num_groups = min(max_groups, math.factorial(valid), 2**valid)
    groups: list[list[int]] = []
    while len(groups) < num_groups:
        draw = torch.bernoulli(probabilities, generator=rng).nonzero().flatten().tolist()
        if draw not in groups:
            groups.append(draw)
    bags = []
    for ids in groups:
        orders: list[list[int]] = []
        while len(orders) < min(math.factorial(len(ids)), max_permutations):
            order = torch.randperm(len(ids), generator=rng).tolist()
            if order not in orders:
                orders.append(order)
        boxes, normed, spanned = _bag_geometry(templates, ids, image_size)
        bags.extend((boxes[order], normed[order], spanned, [ids[i] for i in order]) for order in orders)
    return bags


def baron_contrastive_terms(
    student: Tensor,
    teacher: Tensor,
    same_target: Tensor | None = None,
    image_ids: Tensor | None = None,
    student_queue: Tensor | None = None,
    teacher_queue: Tensor | None = None,
    queue_image_ids: Tensor | None = None,
    *,
    temperature: float,
) -> Tensor:
    r"""Per-query symmetric InfoNCE of BARON: :math:`\tfrac12` (student-to-teacher + teacher-to-student) cross-entropy.

    Both sides are L2-normalised; the keys of each direction are the other side's current embeddings
    followed by its queue. Keys ``j != i`` with ``same_target[i, j]`` and queue keys from the query's
    own image are left out of the softmax.

    Returns:
        ``(Q,)`` terms in the compute dtype (float32 for half-precision inputs).
    """
    s = F.normalize(upcast(student), dim=-1)
    t = F.normalize(upcast(teacher.detach()), dim=-1).to(s.dtype)
    num = s.shape[0]
    keys_t, keys_s = t, s
    excluded = torch.zeros(num, num, dtype=torch.bool, device=s.device)
    if same_target is not None:
        excluded = same_target & ~torch.eye(num, dtype=torch.bool, device=s.device)
    if student_queue is not None and teacher_queue is not None:
        keys_t = torch.cat([t, F.normalize(upcast(teacher_queue.detach()), dim=-1).to(s.dtype)])
        keys_s = torch.cat([s, F.normalize(upcast(student_queue.detach()), dim=-1).to(s.dtype)])
        if image_ids is not None and queue_image_ids is not None:
            own_image = image_ids[:, None] == queue_image_ids[None, :]
        else:
            own_image = torch.zeros(num, teacher_queue.shape[0], dtype=torch.bool, device=s.device)
        excluded = torch.cat([excluded, own_image], dim=1)
    target = torch.arange(num, device=s.device)
    to_teacher = (s @ keys_t.T / temperature).masked_fill(excluded, float("-inf"))
    to_student = (t @ keys_s.T / temperature).masked_fill(excluded, float("-inf"))
    return 0.5 * (F.cross_entropy(to_teacher, target, reduction="none")
                  + F.cross_entropy(to_student, target, reduction="none"))


def _check_queue(student_queue, teacher_queue, queue_image_ids, image_ids, dim_of: Tensor) -> None:
    if (student_queue is None) != (teacher_queue is None):
        raise ValueError("student_queue and teacher_queue go together: pass both or neither")
    if student_queue is None:
        return
    check_shapes(embeddings=(dim_of, "* D"), student_queue=(student_queue, "K D"), teacher_queue=(teacher_queue, "K D"))
    if queue_image_ids is not None:
        check_shapes(teacher_queue=(teacher_queue, "K D"), queue_image_ids=(queue_image_ids, "K int"))
        if image_ids is None:
            raise ValueError("queue_image_ids needs image_ids (the image of every query)")


def baron_bag_loss(
    student_words: Tensor,
    teacher_embeddings: Tensor,
    word_mask: Tensor | None = None,
    bag_ids: Tensor | None = None,
    image_ids: Tensor | None = None,
    *,
    text_encoder_student: Encoder = None,
    student_queue: Tensor | None = None,
    teacher_queue: Tensor | None = None,
    queue_image_ids: Tensor | None = None,
    temperature: float = 1 / 30,
    reduction: str = "mean",
) -> Tensor:
    r"""BARON's bag-of-regions alignment: symmetric InfoNCE between encoded pseudo-word bags and the teacher's bag crops.

    .. math::
        f_b = \frac{\mathcal{T}(w_b)}{\|\mathcal{T}(w_b)\|}, \qquad
        L_{bag} = \frac{1}{Q} \sum_{b=1}^{Q} \frac12 \Big(
            -\log \frac{e^{\langle f_b, g_b\rangle / \tau}}{\sum_{k} e^{\langle f_b, g_k\rangle / \tau}}
            -\log \frac{e^{\langle g_b, f_b\rangle / \tau}}{\sum_{k} e^{\langle g_b, f_k\rangle / \tau}} \Big)

    with :math:`w_b` the pseudo-word sequence of bag :math:`b` (the words of its regions, in order),
    :math:`\mathcal{T}` the frozen text encoder, :math:`g_b` the teacher's normalised image embedding
    of the box spanning the bag, and :math:`k` over the batch's bags and the queue (older embeddings
    of the other side). Keys of the same bag (``bag_ids`` equal: other permutations of the same
    boxes) and queue keys from the query's own image are left out of the sums.

    Args:
        student_words: pseudo-words of the bags, padded: ``(Q, L, D_w)`` (positional embeddings of
            the boxes already added, as the official code).
        teacher_embeddings: :math:`g_b`, the teacher image encoder's embeddings of the bags' spanning
            crops (normalised and detached inside).
        word_mask: ``(Q, L)`` bool, ``True`` for a word of the sequence (after word dropout; padding
            ``False``); ``None``: every word.
        bag_ids: ``(Q,)`` integer id of each bag's set of boxes; bags with the same id are not each
            other's negatives. ``None``: all bags differ.
        image_ids: ``(Q,)`` integer image id of each bag, to leave out queue keys of the same image.
        text_encoder_student: :math:`\mathcal{T}`, a callable ``(student_words, word_mask) -> (Q, D)``
            (official: CLIP's text encoder with start and end tokens, the end token's projected
            output). Required.
        student_queue: ``(K, D)`` student bag embeddings of earlier iterations (detached inside).
        teacher_queue: ``(K, D)`` teacher bag embeddings of earlier iterations; with ``student_queue``.
        queue_image_ids: ``(K,)`` image ids of the queue entries.
        temperature: :math:`\tau` (1/30; the official code multiplies the cosines by ``bag_temp=30``).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over the
            :math:`Q` bags of the two directions' average cross-entropy; ``'sum'``: the sum over
            bags; ``'none'``: the ``(Q,)`` per-bag terms.

    Shape:
        - student_words: :math:`(Q, L, D_w)`; word_mask: :math:`(Q, L)`
        - teacher_embeddings: :math:`(Q, D)`; bag_ids, image_ids: :math:`(Q,)`
        - output: scalar, or :math:`(Q,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_words``.

    Reference:
        Size Wu, Wenwei Zhang, Sheng Jin, Wentao Liu, Chen Change Loy. "Aligning Bag of Regions for
        Open-Vocabulary Object Detection". CVPR 2023. arXiv:2302.13996.
        Official code: wusize/ovdet@d74a20c (``ovdet/methods/baron/baron_kd.py::BaronKD.get_losses``,
        ``loss_bag``).

    Example:
        >>> import torch
        >>> encoder = lambda words, mask: (words * mask[..., None]).sum(1)
        >>> words, teacher = torch.randn(12, 18, 512), torch.randn(12, 512)
        >>> baron_bag_loss(words, teacher, text_encoder_student=encoder).shape
        torch.Size([])

    Notes:
        The official code takes the bag embeddings normalised from the encoder and weights the loss
        by ``bag_weight=1.0``; its queues hold 1024 entries. Within the batch, bags of the same image
        stay negatives (only queue entries are filtered by image).

        Under ``DistributedDataParallel`` the contrast runs over the bags of the process's own images only,
        so no normaliser makes the gradients equal those of one process on the union batch
        (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    if text_encoder_student is None:
        raise ValueError("text_encoder_student is required: a callable (words, word_mask) -> (Q, D), "
                         "e.g. the frozen CLIP text encoder")
    check_shapes(student_words=(student_words, "Q L W"), teacher_embeddings=(teacher_embeddings, "Q D"))
    if word_mask is not None:
        check_shapes(student_words=(student_words, "Q L W"), word_mask=(word_mask, "Q L any"))
    for name, ids in (("bag_ids", bag_ids), ("image_ids", image_ids)):
        if ids is not None:
            check_shapes(teacher_embeddings=(teacher_embeddings, "Q D"), **{name: (ids, "Q int")})
    _check_queue(student_queue, teacher_queue, queue_image_ids, image_ids, teacher_embeddings)
    check_options(temperature=temperature, reduction=reduction)
    if word_mask is None:
        word_mask = torch.ones(student_words.shape[:2], dtype=torch.bool, device=student_words.device)
    student = text_encoder_student(student_words, word_mask.bool())
    if not _tracing() and (student.dim() != 2 or student.shape != teacher_embeddings.shape):
        raise ValueError(f"text_encoder_student must return one embedding per bag, the shape of teacher_embeddings "
                         f"{tuple(teacher_embeddings.shape)}, got {tuple(student.shape)}")
    same_bag = None if bag_ids is None else bag_ids[:, None] == bag_ids[None, :]
    terms = baron_contrastive_terms(student, teacher_embeddings, same_bag, image_ids, student_queue, teacher_queue,
                                    queue_image_ids, temperature=temperature)
    return reduce_loss(terms, reduction).to(student_words.dtype)


@register_loss("baron_bag", function=baron_bag_loss, distributed="batch")
class BARONBagLoss(LossModule):
    """Module twin of :func:`baron_bag_loss`; ``loss_weight`` multiplies the result (official ``bag_weight`` 1.0).

    A text encoder given as a module becomes a submodule (freeze it, as the official code does).
    """

    def __init__(
        self,
        *,
        text_encoder_student: Encoder = None,
        temperature: float = 1 / 30,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(text_encoder_student=text_encoder_student, temperature=temperature, reduction=reduction,
                         loss_weight=loss_weight)


def baron_region_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    region_ids: Tensor | None = None,
    image_ids: Tensor | None = None,
    *,
    student_queue: Tensor | None = None,
    teacher_queue: Tensor | None = None,
    queue_image_ids: Tensor | None = None,
    temperature: float = 1 / 50,
    reduction: str = "mean",
) -> Tensor:
    r"""BARON's individual-region alignment: the same symmetric InfoNCE on single regions.

    .. math::
        L_{single} = \frac{1}{R} \sum_{r=1}^{R} \frac12 \Big(
            -\log \frac{e^{\langle f_r, g_r\rangle / \tau}}{\sum_{k} e^{\langle f_r, g_k\rangle / \tau}}
            -\log \frac{e^{\langle g_r, f_r\rangle / \tau}}{\sum_{k} e^{\langle g_r, f_k\rangle / \tau}} \Big)

    with :math:`f_r` the normalised mean of region :math:`r`'s output word tokens from the text
    encoder (within its bag's sequence) and :math:`g_r` the normalised teacher feature of the region:
    the image encoder's dense tokens of the bag crop, average-pooled (RoIAlign to 1x1) in the
    region's box. Keys of the same underlying box (``region_ids`` equal) and queue keys of the
    query's own image are left out.

    Args:
        student_embeddings: :math:`f_r`, one per region occurrence (normalised inside).
        teacher_embeddings: :math:`g_r` (normalised and detached inside).
        region_ids: ``(R,)`` integer id of the box behind each occurrence (a box appears in several
            bags and permutations); equal ids are not each other's negatives. ``None``: all differ.
        image_ids: ``(R,)`` integer image id of each region, to leave out queue keys of the same image.
        student_queue: ``(K, D)`` student region embeddings of earlier iterations (detached inside).
        teacher_queue: ``(K, D)`` teacher region embeddings of earlier iterations; with ``student_queue``.
        queue_image_ids: ``(K,)`` image ids of the queue entries.
        temperature: :math:`\tau` (1/50; the official code multiplies by ``single_temp=50``).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over the
            :math:`R` regions of the two directions' average cross-entropy; ``'sum'``: the sum;
            ``'none'``: the ``(R,)`` per-region terms.

    Shape:
        - student_embeddings, teacher_embeddings: :math:`(R, D)`; region_ids, image_ids: :math:`(R,)`
        - output: scalar, or :math:`(R,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student_embeddings``.

    Reference:
        Size Wu, Wenwei Zhang, Sheng Jin, Wentao Liu, Chen Change Loy. "Aligning Bag of Regions for
        Open-Vocabulary Object Detection". CVPR 2023. arXiv:2302.13996.
        Official code: wusize/ovdet@d74a20c (``ovdet/methods/baron/baron_kd.py::BaronKD.get_losses``,
        ``loss_single``).

    Example:
        >>> import torch
        >>> words, patches = torch.randn(40, 512), torch.randn(40, 512)
        >>> baron_region_loss(words, patches).shape
        torch.Size([])

    Notes:
        The official configurations weight this term by ``single_weight=0.1`` (COCO). It is not in
        the paper's equations; the official code adds it to the bag loss.

        Under ``DistributedDataParallel`` the contrast runs over the regions of the process's own images
        only, so no normaliser makes the gradients equal those of one process on the union batch
        (:mod:`kdimpl.distributed`, behaviour ``'batch'``).
    """
    check_shapes(student_embeddings=(student_embeddings, "R D"), teacher_embeddings=(teacher_embeddings, "R D"))
    for name, ids in (("region_ids", region_ids), ("image_ids", image_ids)):
        if ids is not None:
            check_shapes(student_embeddings=(student_embeddings, "R D"), **{name: (ids, "R int")})
    _check_queue(student_queue, teacher_queue, queue_image_ids, image_ids, teacher_embeddings)
    check_options(temperature=temperature, reduction=reduction)
    same_box = None if region_ids is None else region_ids[:, None] == region_ids[None, :]
    terms = baron_contrastive_terms(student_embeddings, teacher_embeddings, same_box, image_ids, student_queue,
                                    teacher_queue, queue_image_ids, temperature=temperature)
    return reduce_loss(terms, reduction).to(student_embeddings.dtype)


@register_loss("baron_region", function=baron_region_loss, distributed="batch")
class BARONRegionLoss(LossModule):
    """Module twin of :func:`baron_region_loss`; ``loss_weight`` multiplies the result (official ``single_weight`` 0.1)."""

    def __init__(self, *, temperature: float = 1 / 50, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, reduction=reduction, loss_weight=loss_weight)
