"""Masked Generative Distillation (MGD), Yang et al., ECCV 2022."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import LossModule
from .._checks import _tracing, check_feature_pair, check_options, check_shape, check_unit_interval
from .._dtypes import upcast
from .._registry import register_loss
from ..adapters.channel import ChannelAdapter
from ..adapters.mgd import MGDGenerator

__all__ = ["mgd_random_mask"]


def mgd_random_mask(
    features: Tensor,
    mask_ratio: float = 0.65,
    *,
    rng: torch.Generator | None = None,
    per_channel: bool = False,
) -> Tensor:
    r"""Draw MGD's random keep-mask :math:`M` (Yang et al., Eq. 1).

    .. math::
        M_{n,i,j} = \begin{cases} 0 & u_{n,i,j} > 1 - \lambda \\ 1 & \text{otherwise} \end{cases},
        \qquad u \sim \mathcal{U}(0, 1)

    so each position is dropped with probability :math:`\lambda` (``mask_ratio``).

    Args:
        features: the (aligned) student features; only their shape, dtype and device are used.
        mask_ratio: drop probability :math:`\lambda` (0.65 for RetinaNet/RepPoints, 0.45 for
            Faster/Mask R-CNN in the official configs).
        rng: optional ``torch.Generator``; the uniforms are drawn on its device and the mask moved
            to the features' device. A CPU generator seeded with ``s`` reproduces the official code
            after ``torch.manual_seed(s)`` (it draws ``torch.rand`` on the CPU). Without ``rng`` the
            mask is drawn on the features' device from the global generator.
        per_channel: mask whole channels, shape :math:`(N, C, 1, 1)` (the classification variant
            and mmrazor's ``mask_on_channel``), instead of positions, :math:`(N, 1, H, W)`.

    Returns:
        A 0/1 mask in the dtype and on the device of ``features``.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 8, 5, 7)
        >>> mask = mgd_random_mask(x, 0.5, rng=torch.Generator().manual_seed(0))
        >>> mask.shape, sorted(mask.unique().tolist())
        (torch.Size([2, 1, 5, 7]), [0.0, 1.0])
    """
    check_unit_interval(mask_ratio, "mask_ratio")
    check_shape(features, "features", "N C H W")
    n, c, h, w = features.shape
    shape = (n, c, 1, 1) if per_channel else (n, 1, h, w)
    if rng is None:
        u = torch.rand(shape, device=features.device)
    else:
        u = torch.rand(shape, generator=rng, device=rng.device).to(features.device)
    return (u <= 1.0 - mask_ratio).to(features.dtype)


def _check_mask(mask: Tensor, student: Tensor) -> None:
    if _tracing():
        return
    check_shape(mask, "mask", "N C H W", floating=False)
    try:
        torch.broadcast_shapes(mask.shape, student.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the student's {tuple(student.shape)}; "
            "expected (N, 1, H, W) or (N, C, 1, 1)"
        ) from None


def mgd_loss(
    student: Tensor,
    teacher: Tensor,
    generator_student: Callable[[Tensor], Tensor],
    mask: Tensor | None = None,
    *,
    adapter_student: Callable[[Tensor], Tensor] | None = None,
    mask_ratio: float = 0.65,
    rng: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Masked generative distillation: rebuild the teacher's features from masked student features.

    The aligned student feature is masked at random positions and a small generation block
    :math:`\mathcal{G}` must reconstruct the full teacher feature (Yang et al., Eq. 2–3):

    .. math::
        \mathcal{L}_{dis} = \frac{1}{N} \sum_{n,c,h,w}
            \Big(T_{n,c,h,w} - \mathcal{G}\big(f_{align}(S) \odot M\big)_{n,c,h,w}\Big)^2

    Args:
        student: student features :math:`S` (aligned to the teacher's channels unless
            ``adapter_student`` is given).
        teacher: teacher features of shape :math:`(N, C, H, W)` (detached inside).
        generator_student: the learnable generation block :math:`\mathcal{G}`, normally
            :class:`kdimpl.MGDGenerator`; it receives the masked student features in float32 for
            half inputs.
        mask: optional keep-mask broadcastable to the aligned student (e.g. :math:`(N, 1, H, W)`
            or :math:`(N, C, 1, 1)`, 1 = keep). With a mask the loss is deterministic; build one
            with :func:`mgd_random_mask`. Without it one is drawn with ``mask_ratio`` and ``rng``.
        adapter_student: optional :math:`f_{align}`, the official ``align`` 1x1 convolution
            (:class:`kdimpl.ChannelAdapter`) for student and teacher widths that differ.
        mask_ratio: drop probability :math:`\lambda` used when ``mask`` is not given (default 0.65).
        rng: ``torch.Generator`` for the mask when ``mask`` is not given (see :func:`mgd_random_mask`).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the sum of squared
            errors divided by the batch size :math:`N` (the official code's; its weight
            :math:`\alpha_{mgd} = 2 \cdot 10^{-5}` assumes this scale). Use ``reduction='none'``
            and ``.mean()`` for the plain element mean; ``'sum'`` sums; ``'none'`` returns the
            :math:`(N, C, H, W)` squared errors.

    Shape:
        - student: :math:`(N, C_s, H, W)` (:math:`C_s = C` without ``adapter_student``),
          teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C, H, W)` with ``reduction='none'``

    Returns:
        The loss for one feature level, in the dtype of ``student``; the paper multiplies it by
        :math:`\alpha_{mgd}` (``loss_weight`` of :class:`MGDLoss`) and sums over FPN levels,
        each level with its own generation block (:class:`kdimpl.MultiLevelLoss` of
        ``MGDLoss(student_channels=..., teacher_channels=...)``, one per level).

    Reference:
        Zhendong Yang, Zhe Li, Mingqi Shao, Dachuan Shi, Zehuan Yuan, Chun Yuan. "Masked Generative
        Distillation". ECCV 2022. arXiv:2205.01529. Official code: yzd-v/MGD@2c9da0b
        ``det/mmdet/distillation/losses/mgd.py::FeatureLoss``; port in open-mmlab/mmrazor@90c7af1
        (``MGDConnector`` + ``MGDLoss``). Both are matched by the parity tests.

    Example:
        >>> import torch
        >>> from kdimpl import MGDGenerator
        >>> s, t = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
        >>> mask = mgd_random_mask(s, 0.65, rng=torch.Generator().manual_seed(0))
        >>> mgd_loss(s, t, MGDGenerator(8), mask).shape
        torch.Size([])

    Notes:
        The official code draws the mask inside the loss from the global CPU generator; here the
        randomness is an explicit argument. Drawing with ``rng`` inside ``torch.compile`` may
        break the graph: draw the mask outside (:func:`mgd_random_mask`) and pass it in.
    """
    check_options(reduction=reduction, mask_ratio=mask_ratio)
    check_shape(student, "student", "N C H W")
    s = upcast(student)
    if adapter_student is not None:
        s = adapter_student(s)
    check_feature_pair(s, teacher)
    if mask is None:
        mask = mgd_random_mask(s, mask_ratio, rng=rng)
    else:
        _check_mask(mask, s)
    target = upcast(teacher.detach())
    generated = upcast(generator_student(s * mask.to(s.dtype)))
    if not _tracing() and generated.shape != target.shape:
        raise ValueError(
            f"generator_student returned shape {tuple(generated.shape)} but the teacher has "
            f"{tuple(target.shape)}; it must keep (N, C, H, W) (MGDGenerator(C) does)"
        )
    loss = F.mse_loss(generated, target, reduction="none" if reduction == "none" else "sum")
    if reduction == "mean":
        loss = loss / max(student.shape[0], 1)
    return loss.to(student.dtype)


@register_loss("mgd", function=mgd_loss)
class MGDLoss(LossModule):
    """Module twin of :func:`mgd_loss`; ``loss_weight`` is the paper's :math:`\\alpha_{mgd}` (official: 2e-5).

    Built with ``teacher_channels`` the loss owns its learnable pieces, as the official
    ``FeatureLoss`` does: ``generator_student`` (:class:`kdimpl.MGDGenerator`) and, when
    ``student_channels`` differs, ``adapter_student`` (:class:`kdimpl.ChannelAdapter`); then
    ``MultiLevelLoss([MGDLoss(...) for each level])`` holds every level's pieces (per-level masks go
    by keyword: ``criterion(students, teachers, mask=kdimpl.PerLevel(masks))``). Without channel
    counts pass ``generator_student`` (and ``mask``, by keyword when the loss owns its generator)
    to ``forward``.

    Args:
        student_channels: student width :math:`C_s` (default: ``teacher_channels``).
        teacher_channels: teacher width :math:`C`; builds the learnable pieces.
    """

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        mask_ratio: float = 0.65,
        rng: torch.Generator | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        pieces: dict[str, nn.Module] = {}
        if teacher_channels is not None:
            pieces["generator_student"] = MGDGenerator(teacher_channels)
            if student_channels is not None and student_channels != teacher_channels:
                pieces["adapter_student"] = ChannelAdapter(student_channels, teacher_channels)
        elif student_channels is not None:
            raise ValueError("student_channels needs teacher_channels (the width the generator rebuilds)")
        super().__init__(mask_ratio=mask_ratio, rng=rng, reduction=reduction, loss_weight=loss_weight, **pieces)
