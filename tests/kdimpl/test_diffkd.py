"""DiffKD: parity with hunto/DiffKD (loss, student and parameter gradients), the DDIM sampler, checks, levels."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import DiffKDAutoEncoder, DiffKDDiffusion, MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.diffkd import DiffKDLoss, diffkd_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "diffkd" / "official_diffkd.pt"

# official parameter prefixes -> ours
_NAMES = [
    ("trans.", "adapter_student."),
    ("ae.encoder.", "autoencoder_teacher.encoder."),
    ("ae.decoder.0.", "autoencoder_teacher.decoder."),
    ("model.time_embedding.", "diffusion_student.time_embedding."),
    ("model.pred.", "diffusion_student.predictor."),
    ("noise_adapter.feat.", "diffusion_student.adapter_features."),
    ("noise_adapter.pred.", "diffusion_student.adapter_logits."),
    ("proj.", "diffusion_student.projection."),
]


def _ours(name):
    for official, ours in _NAMES:
        if name.startswith(official):
            return ours + name[len(official):]
    raise KeyError(name)


def _unpack(packed):
    out, offset = {}, 0
    for name, shape in zip(packed["names"], packed["shapes"]):
        size = int(torch.Size(shape).numel())
        out[name] = packed["values"][offset : offset + size].reshape(shape)
        offset += size
    return out


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _official_loss(case):
    teacher_channels = case["teacher"].shape[1]
    latent = case["noise"].shape[1]
    loss = DiffKDLoss(
        teacher_channels=teacher_channels,
        student_channels=case["student"].shape[1],
        autoencoder_channels=latent if case["reconstruction"] is not None else None,
    )
    state = {_ours(k): v for k, v in _unpack(case["state"]).items()}
    embedding = torch.zeros(1280, latent)
    embedding[case["time_embedding_index"]] = case["time_embedding_rows"]
    state["diffusion_student.time_embedding.weight"] = embedding
    model_state = loss.state_dict()
    loss.load_state_dict({k: v.to(model_state[k].dtype) for k, v in state.items()})
    return loss.double()


@pytest.mark.parity
@pytest.mark.parametrize("config", ["autoencoder", "plain"])
def test_matches_official(official, config):
    case = official[config]
    loss = _official_loss(case)
    student = case["student"].clone().requires_grad_(True)
    value = loss(student, case["teacher"], noise=case["noise"], diffusion_noise=case["diffusion_noise"], timesteps=case["timesteps"])
    value.backward()
    torch.testing.assert_close(value.detach(), case["loss"], rtol=1e-12, atol=0)
    torch.testing.assert_close(student.grad, case["student_grad"], rtol=1e-9, atol=1e-15)
    params = dict(loss.named_parameters())
    for name, grad in _unpack(case["param_grads"]).items():
        torch.testing.assert_close(params[_ours(name)].grad, grad, rtol=1e-9, atol=1e-15, msg=name)


@pytest.mark.parity
def test_official_terms(official):
    case = official["autoencoder"]
    loss = _official_loss(case)
    s = loss.adapter_student(case["student"])
    hidden, reconstruction = loss.autoencoder_teacher(case["teacher"])
    refined = loss.diffusion_student.denoise(s, case["noise"])
    diffusion = loss.diffusion_student.noise_prediction_error(hidden, case["diffusion_noise"], case["timesteps"])
    torch.testing.assert_close((refined - hidden).square().mean(), case["distill"], rtol=1e-12, atol=0)
    torch.testing.assert_close(diffusion.mean(), case["diffusion"], rtol=1e-12, atol=0)
    torch.testing.assert_close((reconstruction - case["teacher"]).square().mean(), case["reconstruction"], rtol=1e-12, atol=0)


def test_ddim_sampler_against_the_formula():
    torch.manual_seed(0)
    diffusion = DiffKDDiffusion(8, inference_steps=3, num_train_timesteps=60).double()
    x, noise = torch.randn(2, 8, 4, 5, dtype=torch.float64), torch.randn(2, 8, 4, 5, dtype=torch.float64)
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 60), 0).double()
    gamma = diffusion.noise_adapter(x)[:, None, None, None]
    y = gamma * x + (1 - gamma) * noise
    for t, prev in [(20, 10), (10, 0), (0, None)]:  # ratio 60 // 6 = 10, the lower half of 6 steps
        eps = diffusion.noise_predictor(y, torch.full((2,), t))
        a, a_prev = alphas[t], (alphas[prev] if prev is not None else torch.tensor(1.0, dtype=torch.float64))
        x0 = (y - (1 - a).sqrt() * eps) / a.sqrt()
        y = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(diffusion.denoise(x, noise), diffusion.projection(y))


def test_rng_reproducible_and_reduction_none():
    torch.manual_seed(0)
    loss = DiffKDLoss(teacher_channels=16, student_channels=8)
    s, t = torch.randn(3, 8, 5, 6), torch.randn(3, 16, 5, 6)
    a = loss(s, t, rng=torch.Generator().manual_seed(3))
    b = loss(s, t, rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    per_image = loss(s, t, rng=torch.Generator().manual_seed(3), reduction="none")
    assert per_image.shape == (3,)
    torch.testing.assert_close(per_image.mean(), a)


def test_levels_one_line_and_parameters():
    torch.manual_seed(0)
    losses = [DiffKDLoss(teacher_channels=16, student_channels=8, autoencoder_channels=8) for _ in range(3)]
    criterion = MultiLevelLoss(losses)
    params = {id(p) for p in criterion.parameters()}
    for level in losses:
        for piece in (level.diffusion_student, level.adapter_student, level.autoencoder_teacher):
            assert all(id(p) in params for p in piece.parameters())
    students = [torch.randn(2, 8, 8 // 2**i, 12 // 2**i) for i in range(3)]
    teachers = [torch.randn(2, 16, 8 // 2**i, 12 // 2**i) for i in range(3)]
    value = criterion(students, teachers, rng=torch.Generator().manual_seed(0))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert losses[2].diffusion_student.projection[0].weight.grad is not None


def test_levels_functional():
    torch.manual_seed(0)
    diffusions = [DiffKDDiffusion(8) for _ in range(3)]
    students = [torch.randn(2, 8, 8 // 2**i, 12 // 2**i) for i in range(3)]
    teachers = [torch.randn(2, 8, 8 // 2**i, 12 // 2**i) for i in range(3)]
    value = multilevel_loss(diffkd_loss, students, teachers, diffusions, rng=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(0)
    expected = sum(diffkd_loss(s, t, d, rng=rng) for s, t, d in zip(students, teachers, diffusions))
    torch.testing.assert_close(value, expected)


def test_checks():
    diffusion = DiffKDDiffusion(8)
    s, t = torch.randn(2, 8, 4, 5), torch.randn(2, 8, 4, 5)
    with pytest.raises(ValueError, match="diffusion_student is None"):
        diffkd_loss(s, t, None)
    with pytest.raises(TypeError, match="student"):
        diffkd_loss(s.long(), t, diffusion)
    with pytest.raises(ValueError, match="noise"):
        diffkd_loss(s, t, diffusion, noise=torch.randn(2, 8, 4, 6))
    with pytest.raises(ValueError, match="teacher"):
        diffkd_loss(s, torch.randn(2, 16, 4, 5), diffusion)  # no adapter to the teacher's channels
    with pytest.raises(ValueError, match="kernel_size"):
        DiffKDDiffusion(8, kernel_size=5)


def test_nan_and_empty_batch():
    diffusion = DiffKDDiffusion(8)
    s, t = torch.randn(2, 8, 4, 5), torch.randn(2, 8, 4, 5)
    assert torch.isnan(diffkd_loss(s, torch.full_like(t, float("nan")), diffusion))
    assert torch.isnan(diffkd_loss(torch.full_like(s, float("nan")), t, diffusion))
    empty = torch.randn(0, 8, 4, 5, requires_grad=True)
    value = diffkd_loss(empty, t[:0], diffusion)
    value.backward()
    assert value.item() == 0 and not empty.grad.any()


def test_autoencoder_shapes():
    hidden, rec = DiffKDAutoEncoder(16, 4)(torch.randn(2, 16, 3, 3))
    assert hidden.shape == (2, 4, 3, 3) and rec.shape == (2, 16, 3, 3)
