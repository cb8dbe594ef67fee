"""Structural knowledge distillation (SSIM on feature maps), de Rijk et al., NeurIPS 2022."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._base import LossModule
from .._checks import check_feature_pair, check_options, check_positive, check_same_shape, check_shape
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss

__all__ = ["structural_kd_ssim_map"]

_PADDINGS = ("same", "valid")


def _check_window(window_size: int, padding: str) -> None:
    if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd int, got {window_size!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")


def _effective_window(window_size: int, height: int, width: int, padding: str) -> int:
    # 'same' reflect padding needs window // 2 < side; 'valid' needs window <= side.
    side = min(height, width)
    limit = 2 * side - 1 if padding == "same" else side - (1 - side % 2)
    return max(1, min(window_size, limit))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size // 2)
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _blur(z: Tensor, g: Tensor, padding: str) -> Tensor:
    """Separable Gaussian filter of every channel (grouped convolutions, reflect padding for 'same')."""
    k, groups = g.numel(), z.shape[1]
    if padding == "same":
        p = k // 2
        z = F.pad(z, (p, p, p, p), mode="reflect")
    z = F.conv2d(z, g.reshape(1, 1, 1, k).expand(groups, 1, 1, k), groups=groups)
    return F.conv2d(z, g.reshape(1, 1, k, 1).expand(groups, 1, k, 1), groups=groups)


def structural_kd_ssim_map(
    x: Tensor,
    y: Tensor,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    max_val: float = 1.0,
    eps: float | None = None,
    padding: str = "same",
) -> Tensor:
    r"""Per-position structural similarity of two feature maps, channel by channel.

    .. math::
        \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
            {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2) + \epsilon},
        \qquad C_1 = (0.01 L)^2,\; C_2 = (0.03 L)^2

    with local moments from a separable Gaussian window (size ``window_size``, std ``sigma``),
    variances as :math:`E[x^2] - \mu^2`, and reflect padding for ``padding='same'``: the
    definition of ``kornia.metrics.ssim``, which this matches to float32 rounding.

    Args:
        x, y: feature maps of the same shape.
        window_size: odd Gaussian window size (default 11). Shrunk to the largest odd size the
            map allows when a side is too short (kornia raises instead).
        sigma: Gaussian std (1.5, kornia's fixed value).
        max_val: dynamic range :math:`L` (default 1.0, kornia's default).
        eps: added to the denominator (default ``torch.finfo(dtype).tiny``; kornia adds 1e-12).
            The denominator is at least :math:`C_1 C_2 > 0`, so this only guards underflow; the
            parity tests give the same numbers with either value.
        padding: ``'same'`` (reflect, keeps ``H x W``) or ``'valid'`` (crop the border).

    Returns:
        The :math:`(N, C, H', W')` SSIM map in float32 for half inputs, else in the input dtype.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 16, 20)
        >>> bool(structural_kd_ssim_map(x, x).min() > 0.99)
        True
    """
    _check_window(window_size, padding)
    check_shape(x, "x", "N C H W")
    check_same_shape(x, y, ("x", "y"))
    x, y = upcast(x), upcast(y)
    h, w = x.shape[-2:]
    k = _effective_window(window_size, h, w, padding)
    g = _gaussian_window(k, sigma, x.dtype, x.device)
    # Two grouped (depthwise) passes: the maps that carry the student's gradient, and the
    # teacher-only ones whose filtering needs no backward (y is detached in the loss).
    mu_x, e_xx, e_xy = _blur(torch.cat([x, x * x, x * y], dim=1), g, padding).chunk(3, dim=1)
    mu_y, e_yy = _blur(torch.cat([y, y * y], dim=1), g, padding).chunk(2, dim=1)
    if eps is None:
        eps = torch.finfo(x.dtype).tiny
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    mu_xy = mu_x * mu_y
    mu_xx = mu_x * mu_x
    mu_yy = mu_y * mu_y
    num = (2.0 * mu_xy + c1) * (2.0 * (e_xy - mu_xy) + c2)
    den = (mu_xx + mu_yy + c1) * ((e_xx - mu_xx) + (e_yy - mu_yy) + c2)
    return num / (den + eps)


def structural_kd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    window_size: int = 11,
    max_val: float = 1.0,
    eps: float | None = None,
    padding: str = "same",
    reduction: str = "mean",
) -> Tensor:
    r"""Structural KD: structural dissimilarity (SSIM loss) between student and teacher features.

    The paper replaces the :math:`\ell_p` feature-imitation loss by an SSIM-based one computed with
    kornia; this is kornia's ``ssim_loss`` (structural dissimilarity) per channel and position:

    .. math::
        \mathcal{L} = \frac{1}{N C H W} \sum_{n,c,h,w}
            \operatorname{clip}\Big(\frac{1 - \mathrm{SSIM}(F^S, F^T)_{n,c,h,w}}{2}, 0, 1\Big)

    Args:
        student: (aligned) student features.
        teacher: teacher features of the same shape (detached inside).
        window_size: odd Gaussian window size (default 11); see :func:`structural_kd_ssim_map`.
        max_val: dynamic range :math:`L` in :math:`C_1, C_2` (default 1.0).
        eps: denominator guard (default ``torch.finfo(dtype).tiny``); see :func:`structural_kd_ssim_map`.
        padding: ``'same'`` (default) or ``'valid'``.
        reduction: ``'mean'`` (default) applies the paper's own normalisation: the mean over all
            :math:`N C H' W'` elements, as kornia's ``ssim_loss``, which is the element mean of the
            ``'none'`` output; ``'sum'`` sums; ``'none'`` returns the per-position map.

    Shape:
        - student, teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N, C, H', W')` with ``reduction='none'``

    Returns:
        The loss for one feature level, in the dtype of ``student``.

    Reference:
        Philip de Rijk, Lukas Schneider, Marius Cordts, Dariu M. Gavrila. "Structural Knowledge
        Distillation for Object Detection". NeurIPS 2022. arXiv:2211.13133. No official code;
        the SSIM part is matched against kornia 0.9.0 ``kornia.losses.ssim_loss`` by the parity tests.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 8, 12, 20), torch.randn(2, 8, 12, 20)
        >>> structural_kd_loss(s, t).shape
        torch.Size([])

    Notes:
        Only the paper's abstract and introduction could be read: how it weights the loss per
        FPN level and which window size and :math:`L` it uses are not verified; the defaults are
        kornia's. Features are unbounded, so with :math:`L = 1` the constants are negligible and
        the loss is mostly a local correlation. For signed features the luminance and structure
        factors can both be negative: :math:`\mathrm{SSIM}(-x, x) \approx 1`, so a sign flip goes
        almost unpenalised. Windows larger than a small map are shrunk instead of raising.
    """
    check_feature_pair(student, teacher)
    check_options(reduction=reduction)
    check_positive(max_val, "max_val")
    ssim = structural_kd_ssim_map(
        student, teacher.detach(), window_size=window_size, max_val=max_val, eps=eps, padding=padding
    )
    loss = ((1.0 - ssim) * 0.5).clamp(0.0, 1.0)
    return reduce_loss(loss, reduction).to(student.dtype)


@register_loss("structural_kd", function=structural_kd_loss)
class StructuralKDLoss(LossModule):
    """Module twin of :func:`structural_kd_loss`; ``loss_weight`` multiplies the result."""

    def __init__(
        self,
        *,
        window_size: int = 11,
        max_val: float = 1.0,
        eps: float | None = None,
        padding: str = "same",
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        _check_window(window_size, padding)
        check_positive(max_val, "max_val")
        super().__init__(
            window_size=window_size, max_val=max_val, eps=eps, padding=padding, reduction=reduction,
            loss_weight=loss_weight,
        )
