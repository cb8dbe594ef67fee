import torch

from kdimpl import DiffKDDiffusion
from kdimpl._dtypes import compute_dtype

from . import LossCase, feature_pair

CHANNELS = 8


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    diffusion = DiffKDDiffusion(CHANNELS, inference_steps=2, num_train_timesteps=100)
    with torch.no_grad():  # seeded weights, identical for every dtype of the same seed
        for p in diffusion.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    diffusion = diffusion.to(device=device, dtype=compute_dtype(student))
    # the draws passed explicitly, so that repeated calls with the same inputs see the same noise
    noise = torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype)
    diffusion_noise = torch.randn(batch, CHANNELS, height, width, generator=generator).to(device, dtype)
    timesteps = torch.randint(0, 100, (batch,), generator=generator).to(device)
    kwargs = {"diffusion_student": diffusion, "noise": noise, "diffusion_noise": diffusion_noise, "timesteps": timesteps}
    return (student, teacher), kwargs


# Not zero at student == teacher: the denoised student differs from the teacher, and the
# diffusion term trains the noise predictor on the teacher.
CASES = [LossCase("diffkd", _inputs, uses_boxes=False, zero_when_equal=False)]
