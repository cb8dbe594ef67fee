"""FKD's learnable pieces: the non-local relation blocks and the student-side adaptation layers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FKDStudentAdapter", "NonLocalBlock2d"]


class NonLocalBlock2d(nn.Module):
    r"""Dot-product non-local block (Wang et al., CVPR 2018) used by FKD's non-local distillation.

    .. math::
        y_i = x_i + \mathrm{BN}\Big(W_z \frac{1}{K} \sum_{j=1}^{K}
            \theta(x_i)^\top \phi(x)_j \, g(x)_j\Big)

    ``theta``, ``phi``, ``g`` are 1x1 convolutions ``C -> C / reduction``; ``phi`` and ``g`` are
    max-pooled by ``pool`` (so ``K = (H // pool)(W // pool)`` key positions). Without a softmax the
    product is associative, so it is evaluated as ``theta^T (phi g^T)``: cost linear in ``H W``.
    Initialisation follows mmcv's ``NonLocal2d`` (``normal(0, 0.01)`` projections with zero biases,
    Kaiming fan-out output convolution, BN weight and bias zero so the block starts as the identity).

    Args:
        channels: ``C``.
        reduction: channel reduction of the embeddings. Default: 2.
        pool: max-pool size (and stride) of keys and values; 1 disables it. mmrazor's
            ``NonLocal2dMaxpoolNstride(sub_sample=True, maxpool_stride=s)`` pools twice (mmcv's own
            2x2 pool, then ``s``), which equals ``pool = 2 * s``.

    Shape:
        - input: :math:`(N, C, H, W)`; output: the same (``H, W >= pool``).

    Example:
        >>> import torch
        >>> block = NonLocalBlock2d(8, reduction=2, pool=2)
        >>> x = torch.randn(2, 8, 6, 10)
        >>> torch.equal(block(x), x)  # identity at initialisation (BN weight is zero)
        True
    """

    def __init__(self, channels: int, reduction: int = 2, pool: int = 1) -> None:
        super().__init__()
        if reduction < 1 or pool < 1:
            raise ValueError(f"reduction and pool must be >= 1, got reduction={reduction}, pool={pool}")
        inner = max(channels // reduction, 1)
        self.inner = inner
        self.pool = pool
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.out = nn.Conv2d(inner, channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.kaiming_normal_(self.out.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).reshape(n, self.inner, h * w)
        phi, g = self.phi(x), self.g(x)
        if self.pool > 1:
            phi, g = F.max_pool2d(phi, self.pool), F.max_pool2d(g, self.pool)
        phi, g = phi.flatten(2), g.flatten(2)  # (N, C', K)
        keys = phi.shape[-1]
        # sum_j theta_i . phi_j g_j = theta_i^T (phi g^T): an (N, C', C') product instead of the (N, HW, K)
        # affinity (the test's oracle). Benchmark (benchmarks.losses fkd case, CPU, one run): 2.5x faster
        # fwd+bwd eager, 1.45x compiled, 16% less peak memory than the affinity form; with pool=1 the
        # affinity would need (H W)^2 entries per image.
        y = ((phi @ g.transpose(1, 2)).transpose(1, 2) @ theta).reshape(n, self.inner, h, w)
        # Divide after the reshape (the same numbers) so the convolution's input is a computed tensor, not
        # a view: inductor (CPU, dynamic shapes, torch 2.13) fails on a view that feeds a convolution and
        # is saved for backward, sorting its symbolic channels-last strides (pytorch/pytorch#185510).
        return x + self.norm(self.out(y / keys))


class FKDStudentAdapter(nn.Module):
    """Student-side adaptation layers of FKD, as in the released code (via mmrazor's ``FBKDStudentConnector``).

    - ``feature``: 1x1 convolution applied before the attention-masked feature loss;
    - ``channel``: ``Linear(C, C)`` on the student's spatially averaged features (channel loss);
    - ``spatial``: 3x3 convolution ``1 -> 1`` on the channel-averaged map (spatial loss);
    - ``non_local``: the student's :class:`NonLocalBlock2d`, followed by ``relation``, a 1x1 convolution.

    Layers other than the non-local block keep PyTorch's default initialisation, like mmrazor.
    ``FKDLoss(channels=C)`` builds and owns one (``adapter_student``) with the teacher's
    :class:`NonLocalBlock2d` (``non_local_teacher``).

    Args:
        channels: ``C`` (student features must already have the teacher's channel count).
        reduction, pool: passed to :class:`NonLocalBlock2d`.

    Example:
        >>> import torch
        >>> adapter = FKDStudentAdapter(8, pool=2)
        >>> adapter.feature(torch.randn(2, 8, 6, 10)).shape
        torch.Size([2, 8, 6, 10])
    """

    def __init__(self, channels: int, reduction: int = 2, pool: int = 1) -> None:
        super().__init__()
        self.feature = nn.Conv2d(channels, channels, kernel_size=1)
        self.channel = nn.Linear(channels, channels)
        self.spatial = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        self.non_local = NonLocalBlock2d(channels, reduction, pool)
        self.relation = nn.Conv2d(channels, channels, kernel_size=1)
