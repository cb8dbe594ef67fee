"""DiffKD's lightweight diffusion model, noise adapter and teacher autoencoder (Huang et al., NeurIPS 2023)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DiffKDAutoEncoder", "DiffKDDiffusion"]


def _bottleneck(channels: int, hidden: int) -> nn.Sequential:
    # 1x1 -> 3x3 -> 1x1, each followed by batch norm; the residual is added by _Residual
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1),
        nn.BatchNorm2d(hidden),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.BatchNorm2d(hidden),
        nn.ReLU(),
        nn.Conv2d(hidden, channels, 1),
        nn.BatchNorm2d(channels),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.block = _bottleneck(channels, channels // reduction)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _pointwise_mlp(channels: int, expansion: int, depth: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [
            nn.Conv2d(channels, channels * expansion, 1),
            nn.BatchNorm2d(channels * expansion),
            nn.ReLU(),
            nn.Conv2d(channels * expansion, channels, 1),
            nn.BatchNorm2d(channels),
        ]
    return layers


class DiffKDDiffusion(nn.Module):
    r"""DiffKD's diffusion model on features of ``channels`` channels, with its noise adapter and projection.

    * ``noise_predictor(x, t)``: :math:`\epsilon_\theta(x_t, t)`, the feature plus a learned
      embedding of the timestep, through two residual bottlenecks and a 1x1 convolution with
      batch norm (``kernel_size=3``, for feature maps) or two 1x1 MLPs (``kernel_size=1``, for
      logits viewed as ``(N, K, 1, 1)``).
    * ``noise_adapter(x)``: :math:`\gamma \in (0, 1)` per image, the softmax's first output of a
      linear layer on the pooled (``kernel_size=3``: after a residual bottleneck) feature.
    * :meth:`denoise`: starts from :math:`x_T = \gamma F^{stu} + (1 - \gamma) \epsilon` and runs
      ``inference_steps`` deterministic DDIM steps (:math:`\eta = 0`) over the timesteps
      :math:`(S - 1) r, \dots, r, 0` with :math:`r = \lfloor T / 2S \rfloor` (the lower half of a
      :math:`2S`-step schedule), then applies ``projection`` (1x1 convolution and batch norm).
    * :meth:`noise_prediction_error`: :math:`(\epsilon_\theta(\sqrt{\bar\alpha_t} F^{tea} +
      \sqrt{1 - \bar\alpha_t}\,\epsilon, t) - \epsilon)^2`, the diffusion model's training error
      on teacher features.

    The noise schedule is DDPM's linear :math:`\beta` from ``beta_start`` to ``beta_end`` over
    ``num_train_timesteps`` steps, :math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`, computed
    in float32 as the official code does. The modules use batch norm, so the batch's images
    are coupled in training mode.

    Example:
        >>> import torch
        >>> diffusion = DiffKDDiffusion(16)
        >>> x = torch.randn(2, 16, 6, 10)
        >>> diffusion.denoise(x, torch.randn(2, 16, 6, 10)).shape
        torch.Size([2, 16, 6, 10])
        >>> diffusion.noise_prediction_error(x, torch.randn(2, 16, 6, 10), torch.tensor([3, 700])).shape
        torch.Size([2, 16, 6, 10])
    """

    alphas_cumprod: Tensor

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 3,
        inference_steps: int = 5,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3; got {kernel_size}")
        if not 1 <= inference_steps <= num_train_timesteps // 2:
            raise ValueError(f"inference_steps must be in [1, num_train_timesteps // 2]; got {inference_steps}")
        self.inference_steps = inference_steps
        self.num_train_timesteps = num_train_timesteps
        # 1280 embeddings as in the official model (only the first num_train_timesteps are used)
        self.time_embedding = nn.Embedding(max(1280, num_train_timesteps), channels)
        if kernel_size == 3:
            predictor = [_Residual(channels, 4), _Residual(channels, 4), nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels)]
            adapter: list[nn.Module] = [_Residual(channels, 8), nn.AdaptiveAvgPool2d(1)]
        else:
            predictor = _pointwise_mlp(channels, 4, 2)[:-1]  # the last 1x1 convolution has no batch norm
            adapter = _pointwise_mlp(channels, 2, 1)
        self.predictor = nn.Sequential(*predictor)
        self.adapter_features = nn.Sequential(*adapter)
        self.adapter_logits = nn.Linear(channels, 2)
        self.projection = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, dim=0), persistent=False)

    def noise_predictor(self, x: Tensor, timesteps: Tensor) -> Tensor:
        """:math:`\\epsilon_\\theta(x, t)` for ``timesteps`` of shape ``(N,)`` or a scalar."""
        return self.predictor(x + self.time_embedding(timesteps)[..., None, None])

    def noise_adapter(self, x: Tensor) -> Tensor:
        """The ``(N,)`` weights :math:`\\gamma` of the student feature in the initial noisy sample."""
        return self.adapter_logits(self.adapter_features(x).flatten(1)).softmax(dim=1)[:, 0]

    def denoise(self, student: Tensor, noise: Tensor) -> Tensor:
        """The projected DDIM-denoised student feature; ``noise`` is the Gaussian :math:`\\epsilon` of :math:`x_T`."""
        gamma = self.noise_adapter(student)[:, None, None, None]
        x = gamma * student + (1 - gamma) * noise
        ratio = self.num_train_timesteps // (2 * self.inference_steps)
        alphas = self.alphas_cumprod.to(x.dtype)
        for step in reversed(range(self.inference_steps)):
            t = step * ratio
            alpha, alpha_prev = alphas[t], (alphas[t - ratio] if t >= ratio else alphas.new_ones(()))
            eps = self.noise_predictor(x, torch.tensor(t, device=x.device))
            original = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
            x = alpha_prev.sqrt() * original + (1 - alpha_prev).sqrt() * eps
        return self.projection(x)

    def noise_prediction_error(self, teacher: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Element-wise squared error of the predicted noise on ``teacher`` noised to ``timesteps`` ``(N,)``."""
        alpha = self.alphas_cumprod.to(teacher.dtype)[timesteps][:, None, None, None]
        noisy = alpha.sqrt() * teacher + (1 - alpha).sqrt() * noise
        return (self.noise_predictor(noisy, timesteps) - noise).square()


class DiffKDAutoEncoder(nn.Module):
    """DiffKD's teacher autoencoder: ``encoder`` (1x1 convolution, batch norm) to ``latent_channels``, ``decoder`` back.

    The diffusion model then works on the encoder's output (detached), which the autoencoder is
    trained to reconstruct the teacher feature from.

    Example:
        >>> import torch
        >>> ae = DiffKDAutoEncoder(16, 8)
        >>> hidden, reconstruction = ae(torch.randn(2, 16, 6, 10))
        >>> hidden.shape, reconstruction.shape
        (torch.Size([2, 8, 6, 10]), torch.Size([2, 16, 6, 10]))
    """

    def __init__(self, channels: int, latent_channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, latent_channels, 1), nn.BatchNorm2d(latent_channels))
        self.decoder = nn.Conv2d(latent_channels, channels, 1)

    def forward(self, teacher: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(teacher)
        return hidden, self.decoder(hidden)
