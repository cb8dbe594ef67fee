"""Knowledge diffusion for distillation (DiffKD), Huang et al., NeurIPS 2023."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._base import LossModule
from .._checks import check_modules, check_options, check_shapes
from .._dtypes import upcast
from .._reduce import reduce_loss
from .._registry import register_loss
from ..adapters.channel import ChannelAdapter
from ..adapters.diffkd import DiffKDAutoEncoder, DiffKDDiffusion

__all__: list[str] = []


def _per_image_mean(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)


def diffkd_loss(
    student: Tensor,
    teacher: Tensor,
    diffusion_student: nn.Module,
    *,
    adapter_student: nn.Module | None = None,
    autoencoder_teacher: nn.Module | None = None,
    noise: Tensor | None = None,
    diffusion_noise: Tensor | None = None,
    timesteps: Tensor | None = None,
    rng: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""DiffKD: match the teacher with the student feature denoised by a diffusion model trained on the teacher.

    With the student feature projected to the teacher's (or the autoencoder's latent) channels,
    :math:`F^{stu} = \phi(F^S)`, the teacher target :math:`F^{tea}` (the autoencoder's latent
    :math:`E(F^T)`, detached, or :math:`F^T`), the adaptive noise weight :math:`\gamma` and the
    DDIM sampler of :class:`kdimpl.DiffKDDiffusion`:

    .. math::
        \hat F^{stu} = P\big(\mathrm{DDIM}_\theta(\gamma F^{stu} + (1 - \gamma)\epsilon)\big),\qquad
        \mathcal{L} = \underbrace{\mathrm{MSE}(\hat F^{stu}, F^{tea})}_{\text{distillation}}
            + \underbrace{\mathrm{MSE}\big(\epsilon_\theta(\sqrt{\bar\alpha_t} F^{tea}
                + \sqrt{1 - \bar\alpha_t}\,\epsilon', t), \epsilon'\big)}_{\text{diffusion}}
            + \underbrace{\mathrm{MSE}(D(E(F^T)), F^T)}_{\text{autoencoder}}

    with :math:`\epsilon, \epsilon' \sim \mathcal{N}(0, I)` and one :math:`t` per image uniform
    in :math:`\{0, \dots, T - 1\}`. The student gradient flows through the sampler (the
    diffusion model, noise adapter and projection :math:`P` are trained by the distillation
    term too); the autoencoder term is absent without an autoencoder.

    Args:
        student: student feature map ``(N, C_s, H, W)``.
        teacher: teacher feature map ``(N, C, H, W)`` (detached inside).
        diffusion_student: the :class:`kdimpl.DiffKDDiffusion` on ``D`` channels (``D`` the
            autoencoder's latent channels, else ``C``), or a module with the same
            ``denoise`` and ``noise_prediction_error`` methods.
        adapter_student: maps the student to ``D`` channels (official: a 1x1 convolution,
            :class:`kdimpl.ChannelAdapter`); ``None`` when ``C_s == D`` already.
        autoencoder_teacher: the :class:`kdimpl.DiffKDAutoEncoder` compressing the teacher to
            ``D`` channels (official ImageNet configs: on); ``None``: no autoencoder.
        noise: the ``(N, D, H, W)`` Gaussian noise mixed into the student before denoising;
            drawn from ``rng`` when ``None``.
        diffusion_noise: the ``(N, D, H, W)`` Gaussian noise added to the teacher target for
            the diffusion term; drawn from ``rng`` when ``None``.
        timesteps: the ``(N,)`` integer timesteps of the diffusion term; drawn uniformly from
            ``rng`` when ``None``.
        rng: generator for the draws above (``None``: the global generator).
        reduction: ``'mean'`` (default) applies the paper's own normalisation: each of the
            three terms is the mean over its elements (``N D H W``, ``N D H W`` and ``N C H W``)
            and the terms are summed, as the official code does; ``'sum'`` sums the per-image
            losses; ``'none'`` returns the ``(N,)`` per-image losses (each term's mean over one
            image's elements, summed), whose ``.mean()`` is ``'mean'``.

    Shape:
        - student: :math:`(N, C_s, H, W)`; teacher: :math:`(N, C, H, W)`
        - output: scalar, or :math:`(N,)` with ``reduction='none'``

    Returns:
        The loss, in the dtype of ``student``.

    Reference:
        Tao Huang, Yuan Zhang, Mingkai Zheng, Shan You, Fei Wang, Chen Qian, Chang Xu.
        "Knowledge Diffusion for Distillation". NeurIPS 2023. arXiv:2305.15712.
        Official code: hunto/DiffKD@904a465 (submodule hunto/image_classification_sota@6cb1441)
        ``lib/models/losses/diffkd/diffkd.py::DiffKD`` with the MSE of ``kd_loss.py::KDLoss``
        on feature maps, matched by the parity tests.

    Example:
        >>> import torch
        >>> from kdimpl import DiffKDDiffusion, MultiLevelLoss
        >>> s, t = torch.randn(2, 8, 6, 10), torch.randn(2, 16, 6, 10)
        >>> rng = torch.Generator().manual_seed(0)
        >>> diffkd_loss(s, t, DiffKDDiffusion(16), adapter_student=ChannelAdapter(8, 16), rng=rng).shape
        torch.Size([])
        >>> # three FPN levels, each with its own diffusion model and adapter
        >>> criterion = MultiLevelLoss([DiffKDLoss(student_channels=8, teacher_channels=16) for _ in range(3)])
        >>> students = [torch.randn(2, 8, 12 // 2**l, 20 // 2**l) for l in range(3)]
        >>> teachers = [torch.randn(2, 16, 12 // 2**l, 20 // 2**l) for l in range(3)]
        >>> criterion(students, teachers).shape
        torch.Size([])

    Notes:
        The official code releases the classification setting only (feature maps with the
        MSE above, logits with a second diffusion model of ``kernel_size=1`` and a KL
        divergence); this function is the feature-map part, applied per FPN level for
        detection. It returns the sum of the three terms the official ``KDLoss`` adds with
        weight 1; use :class:`kdimpl.DiffKDDiffusion`'s methods to weight them separately.

        The official DDIM step recomputes the predicted noise from the predicted clean sample
        (``use_clipped_model_output=True`` without clipping): the same value up to rounding;
        here the predicted noise is used directly. The official noise adapter mixes with
        :math:`\gamma` and :math:`1 - \gamma` (not their square roots), kept here. The
        official pipeline draws the student-side noise in the student's dtype and the
        diffusion noise in the default dtype; here both follow the computation dtype.

        The modules use batch norm in training mode, so the images of a batch are coupled
        (``distributed="batch"``): under ``DistributedDataParallel`` each process normalises
        with its own batch's statistics (convert them with
        ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` to share them).
    """
    check_shapes(student=(student, "N S H W"), teacher=(teacher, "N C H W"))
    check_options(reduction=reduction)
    check_modules(diffusion_student=diffusion_student)
    s = upcast(student)
    t = upcast(teacher.detach())
    if adapter_student is not None:
        s = adapter_student(s)
    terms = []
    if autoencoder_teacher is not None:
        hidden, reconstruction = autoencoder_teacher(t)
        terms.append(_per_image_mean((reconstruction - t).square()))
        t = hidden.detach()
    if noise is None:
        noise = torch.randn(s.shape, generator=rng, dtype=s.dtype, device=s.device)
    if diffusion_noise is None:
        diffusion_noise = torch.randn(t.shape, generator=rng, dtype=t.dtype, device=t.device)
    if timesteps is None:
        timesteps = torch.randint(0, diffusion_student.num_train_timesteps, t.shape[:1], generator=rng, device=t.device)
    check_shapes(
        student=(s, "N D H W"), teacher=(t, "N D H W"), noise=(noise, "N D H W"),
        diffusion_noise=(diffusion_noise, "N D H W"), timesteps=(timesteps, "N int"),
    )
    refined = diffusion_student.denoise(s, noise.to(s.dtype))
    terms.append(_per_image_mean((refined - t).square()))
    terms.append(_per_image_mean(diffusion_student.noise_prediction_error(t, diffusion_noise.to(t.dtype), timesteps)))
    return reduce_loss(sum(terms), reduction).to(student.dtype)


@register_loss("diffkd", function=diffkd_loss, distributed="batch")
class DiffKDLoss(LossModule):
    """Module twin of :func:`diffkd_loss`; ``loss_weight`` multiplies the result (official: 1).

    Args:
        teacher_channels: ``C``. Given, the loss owns the level's learnable pieces: the
            ``diffusion_student`` (:class:`kdimpl.DiffKDDiffusion`), the ``adapter_student``
            (1x1 convolution from ``student_channels``, also when the counts are equal) and, with
            ``autoencoder_channels``, the ``autoencoder_teacher``; ``None`` (default): pass
            them to ``forward``.
        student_channels: ``C_s`` (default: ``teacher_channels``).
        autoencoder_channels: latent channels ``D`` of the owned autoencoder (official ImageNet
            configs: 1024); ``None`` (default): no autoencoder, ``D = C``.
        kernel_size: 3 (default, feature maps) or 1, for the owned diffusion model.
        inference_steps: DDIM steps of the owned diffusion model (official: 5).
        num_train_timesteps: ``T`` of the owned diffusion model (official: 1000).
    """

    def __init__(
        self,
        *,
        teacher_channels: int | None = None,
        student_channels: int | None = None,
        autoencoder_channels: int | None = None,
        kernel_size: int = 3,
        inference_steps: int = 5,
        num_train_timesteps: int = 1000,
        rng: torch.Generator | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        pieces: dict[str, nn.Module] = {}
        if teacher_channels is not None:
            latent = teacher_channels if autoencoder_channels is None else autoencoder_channels
            if autoencoder_channels is not None:
                pieces["autoencoder_teacher"] = DiffKDAutoEncoder(teacher_channels, autoencoder_channels)
            # a 1x1 convolution even when the channel counts match, as in the official code
            pieces["adapter_student"] = nn.Conv2d(student_channels or teacher_channels, latent, 1)
            pieces["diffusion_student"] = DiffKDDiffusion(
                latent, kernel_size=kernel_size, inference_steps=inference_steps, num_train_timesteps=num_train_timesteps
            )
        super().__init__(**pieces, rng=rng, reduction=reduction, loss_weight=loss_weight)
