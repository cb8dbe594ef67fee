"""FreeKD: the Haar transform against a naive formula and pytorch_wavelets, parity with Gumpest/FreeKD (both stages)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (  # noqa: E402
    FreeKDPrompts,
    MultiLevelLoss,
    freekd_haar_dwt,
    freekd_haar_idwt,
    maskd_mask_diversity,
    multilevel_loss,
)
from kdimpl.losses.freekd import FreeKDLoss, freekd_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "freekd" / "official_freekd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _prompts(mask_token):
    prompts = FreeKDPrompts(mask_token.shape[-1], mask_token.shape[1]).to(mask_token.dtype)
    with torch.no_grad():
        prompts.mask_token.copy_(mask_token)
    return prompts


def _seeded_prompts(channels=4, num_tokens=3, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return _prompts(0.5 * torch.randn(4, num_tokens, channels, generator=generator, dtype=dtype))


def _naive_haar(x):
    """One Haar level from the definition: orthonormal 1-D filters along rows, then columns, zero padding."""
    n, c, h, w = x.shape
    padded = torch.zeros(n, c, h + h % 2, w + w % 2, dtype=x.dtype)
    padded[..., :h, :w] = x
    r = 2**-0.5
    lo_w = r * (padded[..., 0::2] + padded[..., 1::2])
    hi_w = r * (padded[..., 0::2] - padded[..., 1::2])
    ll = r * (lo_w[..., 0::2, :] + lo_w[..., 1::2, :])
    lh = r * (lo_w[..., 0::2, :] - lo_w[..., 1::2, :])  # high along the height
    hl = r * (hi_w[..., 0::2, :] + hi_w[..., 1::2, :])  # high along the width
    hh = r * (hi_w[..., 0::2, :] - hi_w[..., 1::2, :])
    return ll, torch.stack([lh, hl, hh], dim=2)


@pytest.mark.parametrize("size", [(8, 12), (7, 5), (1, 3), (13, 21)])
def test_haar_dwt_against_naive_formula_and_inverse(size):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    low, highs = freekd_haar_dwt(x, 3)
    expected_low, expected_highs = x, []
    for _ in range(3):
        expected_low, high = _naive_haar(expected_low)
        expected_highs.append(high)
    torch.testing.assert_close(low, expected_low)
    for high, expected in zip(highs, expected_highs):
        torch.testing.assert_close(high, expected)
    # energy is preserved (orthonormal) and the inverse rebuilds the zero-padded input
    energy = low.square().sum() + sum(h.square().sum() for h in highs)
    torch.testing.assert_close(energy, x.square().sum())
    torch.testing.assert_close(freekd_haar_idwt(low, highs)[..., : size[0], : size[1]], x)


@pytest.mark.parity
def test_haar_dwt_matches_pytorch_wavelets(official):
    low, highs = freekd_haar_dwt(official["dwt_input"], 3)
    torch.testing.assert_close(low, official["dwt_low"], rtol=1e-12, atol=1e-14)
    assert len(highs) == 3
    for high, expected in zip(highs, official["dwt_high"]):
        torch.testing.assert_close(high, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parity
def test_matches_official_distillation(official):
    losses = [FreeKDLoss(channels=4, num_tokens=3).double() for _ in range(2)]
    for level, loss in enumerate(losses):
        with torch.no_grad():
            loss.prompts_teacher.mask_token.copy_(official["state"][f"mask_modules.{level}.mask_token"])
    students = [s.clone().requires_grad_(True) for s in official["students"]]
    value = MultiLevelLoss(losses)(students, official["teachers"])
    value.backward()
    torch.testing.assert_close(value.detach(), official["loss"], rtol=1e-12, atol=0)
    for student, grad in zip(students, official["student_grads"]):
        torch.testing.assert_close(student.grad, grad, rtol=1e-10, atol=1e-15)
    # the official masks are not detached: the prompts get these gradients
    for loss, grad in zip(losses, official["token_grads"]):
        torch.testing.assert_close(loss.prompts_teacher.mask_token.grad, grad, rtol=1e-10, atol=1e-15)
    for level, loss in enumerate(losses):
        single = loss(official["students"][level], official["teachers"][level])
        torch.testing.assert_close(single.detach(), official[f"level{level}_loss"], rtol=1e-12, atol=0)


@pytest.mark.parity
@pytest.mark.parametrize("level", [0, 1])
def test_matches_official_prompt_learning(official, level):
    prompts = _prompts(official["state"][f"mask_modules.{level}.mask_token"])
    x = official["teachers"][level].clone().requires_grad_(True)
    masked, masks = prompts(x)
    diversity = sum(maskd_mask_diversity(m) for m in masks)
    (masked.square().sum() + diversity).backward()
    expected = official[f"learn{level}_masked"]
    assert masked.shape == x.shape  # the official output of an odd-sized input is one row/column larger
    torch.testing.assert_close(masked.detach(), expected[..., : x.shape[-2], : x.shape[-1]], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(diversity.detach(), official[f"learn{level}_diversity"], rtol=1e-10, atol=0)
    torch.testing.assert_close(x.grad, official[f"learn{level}_input_grad"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(prompts.mask_token.grad, official[f"learn{level}_token_grad"], rtol=1e-10, atol=1e-12)


def _naive(student, teacher, prompts):
    """The official form: masked bands of both sides, L1 mean per level, summed."""
    _, highs_s = freekd_haar_dwt(student, 3)
    _, highs_t = freekd_haar_dwt(teacher, 3)
    total = 0
    for j, (bs, bt) in enumerate(zip(highs_s, highs_t)):
        mask = torch.sigmoid(torch.einsum("tc,nchw->nthw", prompts.mask_token[j + 1], bt.sum(2)))
        m = mask[:, :, None, None]  # (N, T, 1, 1, H, W)
        total = total + (m * bs[:, None] - m * bt[:, None]).abs().mean()
    return total


def test_equation_against_naive_form():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(3, 4, 9, 14, generator=g, dtype=torch.float64)
    teacher = 0.5 * student + torch.randn(3, 4, 9, 14, generator=g, dtype=torch.float64)
    prompts = _seeded_prompts()
    torch.testing.assert_close(freekd_loss(student, teacher, prompts), _naive(student, teacher, prompts))
    per_image = freekd_loss(student, teacher, prompts, reduction="none")
    assert per_image.shape == (3,)
    for i in range(3):  # each image's value is the naive loss of that image alone
        one = _naive(student[i : i + 1], teacher[i : i + 1], prompts)
        torch.testing.assert_close(per_image[i], one)


def test_masks_reach_prompts_but_never_the_teacher():
    g = torch.Generator().manual_seed(5)
    student = torch.randn(2, 4, 8, 10, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 8, 10, generator=g, dtype=torch.float64, requires_grad=True)
    prompts = _seeded_prompts()
    freekd_loss(student, teacher, prompts).backward()
    assert teacher.grad is None
    grad = prompts.mask_token.grad
    assert grad[1:].abs().sum() > 0 and not grad[0].any()  # the low band's prompts are unused here
    prompts.requires_grad_(False)
    student.grad = None
    freekd_loss(student, teacher.detach(), prompts).backward()
    assert student.grad.abs().sum() > 0


def test_input_checks():
    prompts = _seeded_prompts(dtype=torch.float32)
    s, t = torch.randn(2, 4, 8, 10), torch.randn(2, 4, 8, 10)
    with pytest.raises(ValueError, match="prompts_teacher"):
        freekd_loss(s, t, None)
    with pytest.raises(ValueError, match="teacher"):
        freekd_loss(s, t[..., :9], prompts)
    with pytest.raises(TypeError, match="teacher"):
        freekd_loss(s, t.int(), prompts)
    with pytest.raises(ValueError, match="levels"):
        freekd_haar_dwt(s, 0)
    with pytest.raises(ValueError, match="num_tokens"):
        FreeKDPrompts(4, num_tokens=0)


def test_nan_in_nan_out_and_empty_batch():
    prompts = _seeded_prompts(dtype=torch.float32)
    s, t = torch.randn(2, 4, 8, 10), torch.randn(2, 4, 8, 10)
    assert torch.isnan(freekd_loss(s, torch.full_like(t, float("nan")), prompts))
    assert torch.isnan(freekd_loss(torch.full_like(s, float("nan")), t, prompts))
    empty = torch.zeros(0, 4, 8, 10, requires_grad=True)
    loss = freekd_loss(empty, torch.zeros(0, 4, 8, 10), prompts)
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad is not None and not empty.grad.any()


def test_levels_in_one_line_hold_every_levels_prompts():
    students = [torch.randn(2, 4, 24 // 2**i, 40 // 2**i) for i in range(3)]
    teachers = [s + 0.3 * torch.randn_like(s) for s in students]
    criterion = MultiLevelLoss([FreeKDLoss(channels=4, num_tokens=3) for _ in range(3)])
    owned = {id(p) for p in criterion.parameters()}
    assert all(id(loss.prompts_teacher.mask_token) in owned for loss in criterion.losses)
    prompts = [loss.prompts_teacher for loss in criterion.losses]
    expected = sum(freekd_loss(s, t, p) for s, t, p in zip(students, teachers, prompts))
    torch.testing.assert_close(criterion(students, teachers), expected)
    torch.testing.assert_close(multilevel_loss(freekd_loss, students, teachers, prompts), expected)


def test_prompts_initialisation_follows_the_official_module():
    prompts = FreeKDPrompts(64, num_tokens=6)
    assert prompts.mask_token.shape == (4, 6, 64)
    assert 0.005 < float(prompts.mask_token.detach().std()) < 0.02
    assert set(prompts.state_dict()) == {"mask_token"}
