"""PKD: parity with mmrazor's PKDLoss and the Pearson-correlation identities."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from kdimpl.losses.pkd import PKDLoss, pkd_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "pkd" / "official_pkd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
@pytest.mark.parametrize("resize", ["student", "teacher"])
def test_matches_official_two_levels_with_resize(official, resize):
    # level 1 has a 7x9 student and a 14x18 teacher: the official code resizes bilinearly.
    s0 = official["student0"].clone().requires_grad_(True)
    s1 = official["student1"].clone().requires_grad_(True)
    l0 = pkd_loss(s0, official["teacher0"], resize=resize)
    l1 = pkd_loss(s1, official["teacher1"], resize=resize)
    (l0 + l1).backward()
    key = f"resize_{resize}"
    torch.testing.assert_close(l0.detach(), official[f"{key}_level0_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(l1.detach(), official[f"{key}_level1_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close((l0 + l1).detach(), official[f"{key}_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s0.grad, official[f"{key}_grad0"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(s1.grad, official[f"{key}_grad1"], rtol=1e-5, atol=1e-8)


@pytest.mark.parity
def test_constant_student_matches_official(official):
    student = torch.full((2, 4, 14, 18), 0.25, requires_grad=True)
    loss = pkd_loss(student, official["teacher0"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["constant_student_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(student.grad, official["constant_student_grad"], rtol=1e-5, atol=1e-3)


@pytest.mark.parity
def test_single_value_channels_are_finite_where_official_is_nan(official):
    assert torch.isnan(official["single_loss"])
    loss = pkd_loss(official["single_student"], official["single_teacher"])
    torch.testing.assert_close(loss, torch.tensor(0.0))


def test_equals_one_minus_pearson_per_channel():
    s, t = torch.randn(3, 5, 6, 7, dtype=torch.float64), torch.randn(3, 5, 6, 7, dtype=torch.float64)
    t = t + 0.7 * s
    m = 3 * 6 * 7
    xs = s.transpose(0, 1).reshape(5, -1)
    xt = t.transpose(0, 1).reshape(5, -1)
    r = torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(xs, xt)])
    expected = ((m - 1) / m * (1 - r)).mean()
    torch.testing.assert_close(pkd_loss(s, t, eps=1e-12), expected, rtol=1e-9, atol=1e-12)


def test_closed_form_equals_standardise_then_mse():
    s, t = torch.randn(2, 4, 5, 9) * 3 + 2, torch.randn(2, 4, 5, 9) - 1

    def norm(x):
        return (x - x.mean((0, 2, 3), keepdim=True)) / (x.std((0, 2, 3), keepdim=True) + 1e-6)

    expected = F.mse_loss(norm(s), norm(t)) / 2
    torch.testing.assert_close(pkd_loss(s, t), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pkd_loss(s, t, reduction="sum"), expected * s.numel(), rtol=1e-5, atol=1e-5)
    assert pkd_loss(s, t, reduction="none").shape == (4,)


def test_invariant_to_positive_affine_maps_per_channel():
    t = torch.randn(2, 3, 6, 8)
    scale = torch.tensor([0.5, 2.0, 7.0]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(pkd_loss(scale * t - 4.0, t), torch.tensor(0.0), atol=1e-6, rtol=0)
    # anti-correlated: 1 - r = 2
    assert abs(float(pkd_loss(-t, t)) - 2.0 * (2 * 6 * 8 - 1) / (2 * 6 * 8)) < 1e-4


def test_width_only_mismatch_is_resized():
    s, t = torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 10)
    resized = F.interpolate(s, size=(6, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pkd_loss(s, t), pkd_loss(resized, t))


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="channels"):
        pkd_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="resize"):
        PKDLoss(resize="both")


def test_row_moments_equal_channel_moments():
    from kdimpl.losses.pkd import _channel_moments, _row_moments

    s = torch.randn(3, 4, 5, 6, dtype=torch.float64) * 2 + torch.arange(4.0, dtype=torch.float64)[:, None, None]
    t = 0.3 * s + torch.randn(3, 4, 5, 6, dtype=torch.float64)
    s[1] += 5.0  # images with different means exercise the exact combination
    for ours, reference in zip(_row_moments(s, t), _channel_moments(s, t)):
        torch.testing.assert_close(ours.reshape(reference.shape), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_forward_and_backward_match_eager(reduction):
    s0, t = torch.randn(2, 4, 6, 9, dtype=torch.float64) * 3 + 1, torch.randn(2, 4, 6, 9, dtype=torch.float64)
    results = []
    for fn in (pkd_loss, torch.compile(pkd_loss, backend="aot_eager", fullgraph=True)):
        s = s0.clone().requires_grad_(True)
        loss = fn(s, t, reduction=reduction)
        (loss * torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)).sum().backward()
        results.append((loss.detach(), s.grad))
    torch._dynamo.reset()
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)
