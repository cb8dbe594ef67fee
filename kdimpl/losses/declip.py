"""DeCLIP: decoupled content/context self-distillation of a CLIP ViT for dense perception, Wang et al., CVPR 2025."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_options, check_shape
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__: list[str] = []


def declip_context_loss(student: Tensor, teacher: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""DeCLIP context distillation: the student's token-to-token cosine similarities imitate a vision foundation model's.

    With :math:`s_i` the student's context feature at position :math:`i` (the CLIP ViT's
    last-layer query projection, bilinearly resized to the teacher's grid when the sizes differ)
    and :math:`t_i` the frozen foundation model's (DINOv2, SAM or DINO) feature at position
    :math:`i` of its :math:`H \times W` grid, each L2-normalised over channels, per image:

    .. math::
        G^S_{ij} = \hat s_i \cdot \hat s_j, \qquad G^T_{ij} = \hat t_i \cdot \hat t_j, \qquad
        \mathcal{L} = \frac{1}{N H W} \sum_{n=1}^{N} \sum_{i=1}^{HW}
            \bigl\lVert G^T_{n,i,:} - G^S_{n,i,:} \bigr\rVert_2

    Args:
        student: ``(N, C, h, w)`` student context features (the official ``qq_vfm_distill``
            mode: the query projection of the last attention block, as a map).
        teacher: ``(N, D, H, W)`` foundation-model features (detached inside); ``C`` and ``D``
            may differ, only the similarity matrices are compared.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the L2 distance
            between the two similarity rows averaged over the ``N H W`` teacher positions, the
            plain element mean; ``'sum'`` sums; ``'none'`` returns the ``(N, H, W)`` row
            distances.

    Shape:
        - student: :math:`(N, C, h, w)`; teacher: :math:`(N, D, H, W)`
        - output: scalar, or :math:`(N, H, W)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Junjie Wang, Bin Chen, Yulin Li, Bin Kang, Yichi Chen, Zhuotao Tian.
        "DeCLIP: Decoupled Learning for Open-Vocabulary Dense Perception". CVPR 2025.
        arXiv:2505.04410.
        Official code: xiaomoguhz/DeCLIP@2c0b3de ``src/training/declip.py::DeCLIP``
        (``get_student_context_similarity``, ``get_teacher_context_similarity`` and
        ``loss_context``; matched by the parity tests). The content term is
        :func:`kdimpl.losses.clipself.clipself_loss` (the same cosine loss; matched against
        DeCLIP's ``loss_content`` by the parity tests).

    Example:
        >>> import torch
        >>> student, teacher = torch.randn(2, 16, 5, 5), torch.randn(2, 32, 6, 6)
        >>> declip_context_loss(student, teacher).shape
        torch.Size([])
        >>> abs(float(declip_context_loss(teacher, teacher))) < 1e-6
        True

    Notes:
        The released scripts weight this term by ``loss_context_weight = 0.1`` (use the twin's
        ``loss_weight``) and the content term by 1. The official code reshapes the student's
        ``(N, hw, C)`` tokens to a square grid, so it requires ``h = w``; any ``h x w`` map is
        accepted here. When the grids differ, the official code reads the resized ``(C, W, H)``
        buffer back as ``(HW, C)`` tokens, mixing channels and positions; the released scripts
        size the foundation model's input so that both grids agree and never take that path.
        Here the resized map is flattened position by position (the parity tests pin both). Its ``csa_vfm_distill`` and ``all_vfm_distill`` modes average the
        similarity matrices of two or three projections (q, k, v) before the distance, without
        resizing: average the Gram matrices yourself for those; they are not covered here.
    """
    check_shape(student, "student", "N C h w")
    check_shape(teacher, "teacher", "N D H W")
    check_options(reduction=reduction)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student and teacher must have the same batch size, got {student.shape[0]} and {teacher.shape[0]}")
    height, width = teacher.shape[-2:]
    s = upcast(student)
    if s.shape[-2:] != teacher.shape[-2:]:
        s = F.interpolate(s, size=(height, width), mode="bilinear", align_corners=False)
    s = F.normalize(s.flatten(2), dim=1)
    t = F.normalize(upcast(teacher.detach()).flatten(2), dim=1)
    student_gram = s.transpose(1, 2) @ s  # (N, HW, HW)
    teacher_gram = t.transpose(1, 2) @ t
    distance = (teacher_gram - student_gram).norm(p=2, dim=-1).unflatten(1, (height, width))
    return reduce_loss(distance, reduction).to(student.dtype)


@register_loss("declip_context", function=declip_context_loss, distributed="exact")
class DeCLIPContextLoss(LossModule):
    """Module twin of :func:`declip_context_loss`; ``loss_weight`` multiplies the result (official ``loss_context_weight``: 0.1)."""

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight)
