"""Structural KD: SSIM parity with kornia and hand-checkable cases."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss  # noqa: E402
from kdimpl.losses.structural_kd import (  # noqa: E402
    StructuralKDLoss,
    structural_kd_loss,
    structural_kd_ssim_map,
)

FIXTURE = Path(__file__).parent / "fixtures" / "structural_kd" / "kornia_ssim.pt"


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
@pytest.mark.parametrize("window", [5, 11])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_matches_kornia_ssim_loss(reference, window, padding):
    student = reference["student"].clone().requires_grad_(True)
    loss = structural_kd_loss(student, reference["teacher"], window_size=window, padding=padding)
    loss.backward()
    torch.testing.assert_close(loss.detach(), reference[f"w{window}_{padding}_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(student.grad, reference[f"w{window}_{padding}_grad"], rtol=1e-5, atol=1e-9)


@pytest.mark.parity
def test_kornias_eps_gives_the_same_numbers(reference):
    for eps in (1e-12, None):
        student = reference["student"].clone().requires_grad_(True)
        loss = structural_kd_loss(student, reference["teacher"], eps=eps)
        loss.backward()
        torch.testing.assert_close(loss.detach(), reference["w11_same_loss"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(student.grad, reference["w11_same_grad"], rtol=1e-5, atol=1e-9)


@pytest.mark.parity
def test_matches_kornia_ssim_map_and_max_val(reference):
    ssim = structural_kd_ssim_map(reference["student"], reference["teacher"])
    torch.testing.assert_close(ssim, reference["w11_same_map"])
    student = (reference["student"] * 30).requires_grad_(True)
    loss = structural_kd_loss(student, reference["teacher"] * 30, window_size=7, max_val=255.0)
    loss.backward()
    torch.testing.assert_close(loss.detach(), reference["x30_w7_L255_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(student.grad, reference["x30_w7_L255_grad"], rtol=1e-5, atol=1e-9)


def test_constant_maps_match_the_formula():
    a, b = 0.3, -0.2
    x, y = torch.full((1, 2, 8, 9), a, dtype=torch.float64), torch.full((1, 2, 8, 9), b, dtype=torch.float64)
    c1, c2 = 1e-4, 9e-4
    expected = (2 * a * b + c1) * c2 / ((a * a + b * b + c1) * c2)
    torch.testing.assert_close(structural_kd_ssim_map(x, y), torch.full_like(x, expected))
    loss = structural_kd_loss(x, y)
    torch.testing.assert_close(loss, torch.tensor((1 - expected) / 2, dtype=torch.float64))


def test_anticorrelated_features_give_high_loss_and_equal_give_zero():
    t = torch.rand(2, 3, 16, 16) + 1.0
    assert float(structural_kd_loss(t, t)) < 1e-6
    assert float(structural_kd_loss(3.0 - t, t)) > 0.6  # same sign of means, negative covariance


def test_sign_flip_is_not_penalised():
    # luminance and structure terms both turn negative and their product is ~1 (documented quirk)
    t = torch.randn(2, 3, 16, 16)
    assert float(structural_kd_loss(-t, t)) < 0.1


def test_small_maps_shrink_the_window():
    s, t = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7)
    # 'same' needs window // 2 < 5: window 11 behaves as window 9
    torch.testing.assert_close(structural_kd_loss(s, t, window_size=11), structural_kd_loss(s, t, window_size=9))
    # 'valid' needs window <= 5
    valid11 = structural_kd_loss(s, t, window_size=11, padding="valid")
    torch.testing.assert_close(valid11, structural_kd_loss(s, t, window_size=5, padding="valid"))
    assert structural_kd_loss(s, t, reduction="none", padding="valid", window_size=3).shape == (2, 3, 3, 5)


def test_rejects_bad_options():
    s, t = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="window_size"):
        structural_kd_loss(s, t, window_size=4)
    with pytest.raises(ValueError, match="padding"):
        StructuralKDLoss(padding="reflect")


def test_module_twin_over_levels():
    students = [torch.randn(2, 3, 16 // 2**i, 24 // 2**i) for i in range(3)]
    teachers = [0.5 * s + torch.randn_like(s) for s in students]
    criterion = MultiLevelLoss(StructuralKDLoss(window_size=5), loss_weight=2.0)
    expected = 2.0 * sum(structural_kd_loss(s, t, window_size=5) for s, t in zip(students, teachers))
    torch.testing.assert_close(criterion(students, teachers), expected)
