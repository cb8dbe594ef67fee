"""MGD: parity with yzd-v/MGD and mmrazor, explicit randomness, hand-checkable cases."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kdimpl.adapters.channel import ChannelAdapter  # noqa: E402
from kdimpl.adapters.mgd import MGDGenerator  # noqa: E402
from kdimpl.losses.mgd import MGDLoss, mgd_loss, mgd_random_mask  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "mgd" / "official_mgd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
@pytest.mark.parametrize(
    "tag, student_key, seed, ratio",
    [("yzdv", "student", 4, 0.65), ("yzdv_align", "student_3ch", 6, 0.45), ("mmrazor", "student", 8, 0.65)],
)
def test_matches_official(official, tag, student_key, seed, ratio):
    generator = MGDGenerator(4)
    generator.load_state_dict(official[f"{tag}_generation"])
    student = official[student_key].clone().requires_grad_(True)
    aligned = student
    if f"{tag}_align" in official:
        adapter = ChannelAdapter(3, 4)
        adapter.proj.load_state_dict(official[f"{tag}_align"])
        aligned = adapter(student)
    # a CPU generator with the official seed draws the official mask
    mask = mgd_random_mask(aligned, ratio, rng=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(mask, official[f"{tag}_mask"], rtol=0, atol=0)
    loss = MGDLoss(mask_ratio=ratio, loss_weight=2e-5)(aligned, official["teacher"], generator, mask=mask)
    loss.backward()
    torch.testing.assert_close(loss.detach(), official[f"{tag}_loss"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(student.grad, official[f"{tag}_grad"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(generator[0].weight.grad, official[f"{tag}_generation_grad0"], rtol=1e-5, atol=1e-9)


@pytest.mark.parity
def test_rng_argument_reproduces_official_without_mask(official):
    generator = MGDGenerator(4)
    generator.load_state_dict(official["yzdv_generation"])
    loss = 2e-5 * mgd_loss(official["student"], official["teacher"], generator, rng=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss.detach(), official["yzdv_loss"], rtol=1e-5, atol=1e-9)


def test_identity_generator_gives_masked_sum_of_squares_over_batch():
    s, t = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    mask = (torch.rand(3, 1, 4, 5) > 0.5).float()
    expected = ((s * mask - t) ** 2).sum() / 3
    torch.testing.assert_close(mgd_loss(s, t, nn.Identity(), mask=mask), expected)
    per_image = mgd_loss(s, t, nn.Identity(), mask=mask, reduction="none")
    assert per_image.shape == (3,)
    torch.testing.assert_close(per_image.sum(), expected * 3)


def test_channel_mask_broadcasts():
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    mask = mgd_random_mask(s, 0.5, rng=torch.Generator().manual_seed(0), per_channel=True)
    assert mask.shape == (2, 3, 1, 1)
    torch.testing.assert_close(mgd_loss(s, t, nn.Identity(), mask=mask), ((s * mask - t) ** 2).sum() / 2)


def test_mask_ratio_extremes_and_frequency():
    x = torch.randn(4, 2, 50, 60)
    assert mgd_random_mask(x, 0.0).min() == 1
    assert mgd_random_mask(x, 1.0).max() == 0
    kept = mgd_random_mask(x, 0.65, rng=torch.Generator().manual_seed(1)).mean()
    assert abs(float(kept) - 0.35) < 0.02


def test_same_rng_seed_same_loss_and_module_keeps_no_state():
    s, t = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    generator = MGDGenerator(4)
    module = MGDLoss()
    a = module(s, t, generator, rng=torch.Generator().manual_seed(3))
    b = module(s, t, generator, rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not list(module.parameters())


def test_generator_weights_are_trained():
    s, t = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    generator = MGDGenerator(4)
    mgd_loss(s, t, generator, rng=torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


def test_rejects_bad_inputs():
    s, t = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    with pytest.raises(ValueError, match="mask"):
        mgd_loss(s, t, nn.Identity(), mask=torch.ones(2, 1, 5, 7))
    with pytest.raises(ValueError, match="generator returned"):
        mgd_loss(s, t, nn.Conv2d(4, 3, 1), mask=torch.ones(2, 1, 6, 7))
    with pytest.raises(ValueError, match="mask_ratio"):
        MGDLoss(mask_ratio=1.5)
    with pytest.raises(ValueError, match="channels"):
        MGDGenerator(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_analytic_gradient_equals_autograd_of_mse_bitwise(dtype, reduction):
    # the official form: F.mse_loss(generated, teacher, reduction="sum") on float32 upcasts
    s0, t = torch.randn(2, 3, 5, 7).to(dtype), torch.randn(2, 3, 5, 7).to(dtype)
    mask = mgd_random_mask(s0, 0.5, rng=torch.Generator().manual_seed(0))
    weights = torch.arange(1.0, 3.0) if reduction == "none" else torch.tensor(1.0)
    s = s0.clone().requires_grad_(True)
    loss = mgd_loss(s, t, nn.Identity(), mask=mask, reduction=reduction)
    (loss.float() * weights).sum().backward()
    s_ref = s0.clone().requires_grad_(True)
    err = F.mse_loss(s_ref.float() * mask.float(), t.float(), reduction="none").flatten(1).sum(1)
    ref = err if reduction == "none" else F.mse_loss(s_ref.float() * mask.float(), t.float(), reduction="sum") / 2
    (ref.to(dtype).float() * weights).sum().backward()
    torch.testing.assert_close(loss, ref.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=0, atol=0)


@pytest.mark.parametrize("generator", [nn.Identity(), nn.Conv2d(3, 3, 1).double()])
def test_second_order_gradients(generator):
    s = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mask = mgd_random_mask(s, 0.5, rng=torch.Generator().manual_seed(1))
    assert torch.autograd.gradgradcheck(lambda x: mgd_loss(x, t, generator, mask=mask, reduction="none"), (s,))
