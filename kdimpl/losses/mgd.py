"""Masked Generative Distillation (MGD), Yang et al., ECCV 2022."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .._checks import _tracing, check_feature_pair, check_reduction, check_tensor, check_unit_interval
from .._dtypes import upcast
from .._registry import register_loss

__all__ = ["mgd_random_mask", "mgd_loss", "MGDLoss"]


def mgd_random_mask(
    features: Tensor,
    mask_ratio: float = 0.65,
    *,
    rng: torch.Generator | None = None,
    per_channel: bool = False,
) -> Tensor:
    r"""Draw MGD's random keep-mask :math:`M` (Yang et al.).

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
    n, c, h, w = features.shape
    shape = (n, c, 1, 1) if per_channel else (n, 1, h, w)
    if rng is None:
        u = torch.rand(shape, device=features.device)
    else:
        u = torch.rand(shape, generator=rng, device=rng.device).to(features.device)
    return (u <= 1.0 - mask_ratio).to(features.dtype)


class _SquaredError(torch.autograd.Function):
    """``sum (x - target)^2``, in total or per image, with the analytic gradient ``2 g (x - target)``.

    Only the inputs are saved: a half teacher is kept as it is, not as the float32 copy that
    ``F.mse_loss`` on upcast inputs would save. The numbers are those of ``F.mse_loss`` and its
    backward (the factor 2 is exact wherever it is applied).
    """

    @staticmethod
    def forward(ctx, x: Tensor, target: Tensor, per_image: bool) -> Tensor:
        squares = torch.sub(x, target).square_()
        ctx.save_for_backward(x, target)
        ctx.per_image = per_image
        return squares.flatten(1).sum(dim=1) if per_image else squares.sum()

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        x, target = ctx.saved_tensors
        scale = 2.0 * grad_total
        if ctx.per_image:
            scale = scale.reshape(-1, *([1] * (x.dim() - 1)))
        if torch.is_grad_enabled():  # double backward: differentiable, out of place
            return (x - target) * scale, None, None
        return torch.sub(x, target).mul_(scale), None, None


def mgd_loss(
    student: Tensor,
    teacher: Tensor,
    generator: Callable[[Tensor], Tensor],
    *,
    mask: Tensor | None = None,
    mask_ratio: float = 0.65,
    rng: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Masked generative distillation: rebuild the teacher's features from masked student features.

    The aligned student feature is masked at random positions and a small generation block
    :math:`\mathcal{G}` must reconstruct the full teacher feature (Yang et al.):

    .. math::
        \mathcal{L}_{dis} = \frac{1}{N} \sum_{n,c,h,w}
            \Big(T_{n,c,h,w} - \mathcal{G}\big(f_{align}(S) \odot M\big)_{n,c,h,w}\Big)^2

    Args:
        student: aligned student features :math:`f_{align}(S)` (apply :class:`kdimpl.ChannelAdapter`
            first when the widths differ).
        teacher: teacher features of the same shape (detached inside).
        generator: the learnable generation block, normally :class:`kdimpl.adapters.mgd.MGDGenerator`;
            it receives the masked student features in float32 for half inputs.
        mask: optional keep-mask broadcastable to ``student`` (e.g. :math:`(N, 1, H, W)` or
            :math:`(N, C, 1, 1)`, 1 = keep). With a mask the loss is deterministic; build one with
            :func:`mgd_random_mask`. Without it one is drawn with ``mask_ratio`` and ``rng``.
        mask_ratio: drop probability :math:`\lambda` used when ``mask`` is not given (default 0.65).
        rng: ``torch.Generator`` for the mask when ``mask`` is not given (see :func:`mgd_random_mask`).
        reduction: ``'none'``: the :math:`(N,)` per-image sums of squared errors; ``'sum'``: their
            total; ``'mean'`` (default): their mean over the batch, i.e. the sum divided by
            :math:`N` as in the official code (not a per-element mean: the official weight
            :math:`\alpha = 2 \cdot 10^{-5}` assumes this scale).

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss for one feature level, in the dtype of ``student``; the paper multiplies it by
        :math:`\alpha` (pass it as ``loss_weight`` to :class:`MGDLoss`) and sums over FPN levels,
        each level with its own generator.

    Reference:
        Zhendong Yang, Zhe Li, Mingqi Shao, Dachuan Shi, Zehuan Yuan, Chun Yuan. "Masked Generative
        Distillation". ECCV 2022. arXiv:2205.01529. Official code: yzd-v/MGD@2c9da0b
        ``det/mmdet/distillation/losses/mgd.py::FeatureLoss``; port in open-mmlab/mmrazor@90c7af1
        (``MGDConnector`` + ``MGDLoss``). Both are matched by the parity tests.

    Example:
        >>> import torch
        >>> from kdimpl.adapters.mgd import MGDGenerator
        >>> s, t = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
        >>> generator = MGDGenerator(8)
        >>> mask = mgd_random_mask(s, 0.65, rng=torch.Generator().manual_seed(0))
        >>> mgd_loss(s, t, generator, mask=mask).shape
        torch.Size([])

    Notes:
        The squared error has an analytic gradient, :math:`2 (\mathcal{G} - T)` times the incoming
        gradient, rebuilt in backward from the saved generator output and the teacher (half
        teachers are not kept as float32 copies); it rounds exactly as ``F.mse_loss(...,
        reduction='sum')`` and its backward. The official code draws the mask inside the loss from
        the global CPU generator; here the randomness is an explicit argument. Drawing with ``rng``
        inside ``torch.compile`` may break the graph: draw the mask outside (``mgd_random_mask``)
        and pass it in.
    """
    check_reduction(reduction)
    check_feature_pair(student, teacher)
    if mask is None:
        mask = mgd_random_mask(student, mask_ratio, rng=rng)
    elif not _tracing():
        check_tensor(mask, "mask")
        try:
            torch.broadcast_shapes(mask.shape, student.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the student's {tuple(student.shape)}; "
                "expected (N, 1, H, W) or (N, C, 1, 1)"
            ) from None
    target = teacher.detach()
    generated = upcast(generator(upcast(student) * upcast(mask)))
    if not _tracing() and generated.shape != target.shape:
        raise ValueError(
            f"the generator returned shape {tuple(generated.shape)} but the teacher has {tuple(target.shape)}; "
            "it must keep (N, C, H, W) (MGDGenerator(C) does)"
        )
    total = _SquaredError.apply(generated, target, reduction == "none")
    if reduction == "mean":
        total = total / student.shape[0]
    return total.to(student.dtype)


@register_loss("mgd", function=mgd_loss)
class MGDLoss(nn.Module):
    """Module twin of :func:`mgd_loss`; ``loss_weight`` (the paper's :math:`\\alpha`) multiplies the result.

    The generation block is not owned by the loss: pass it to ``forward`` (it is trained with the student).
    """

    def __init__(self, *, mask_ratio: float = 0.65, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_unit_interval(mask_ratio, "mask_ratio")
        check_reduction(reduction)
        self.mask_ratio = mask_ratio
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        generator: Callable[[Tensor], Tensor],
        *,
        mask: Tensor | None = None,
        rng: torch.Generator | None = None,
    ) -> Tensor:
        return self.loss_weight * mgd_loss(
            student, teacher, generator, mask=mask, mask_ratio=self.mask_ratio, rng=rng, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
