"""MimicDet: the cosine mimic loss against its analytic cases and a hand loop (no official code; unverified)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MimicDetLoss, MultiLevelLoss, mimicdet_loss


def test_analytic_cases():
    t = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0], [2.0, -1.0, 0.0]])
    orthogonal = torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    assert mimicdet_loss(4 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # parallel
    assert mimicdet_loss(orthogonal, t).item() == pytest.approx(1.0, abs=1e-6)
    assert mimicdet_loss(-0.1 * t, t).item() == pytest.approx(2.0, abs=1e-6)  # antiparallel
    s = torch.randn(3, 3)
    torch.testing.assert_close(mimicdet_loss(7 * s, 0.2 * t), mimicdet_loss(s, t))  # scale invariance


def test_equals_hand_loop_with_mask():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 5, generator=g, dtype=torch.float64), torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 6, generator=g) > 0.4
    total, count = 0.0, 0
    for i in range(2):
        for j in range(6):
            if mask[i, j]:
                total += 1 - float(s[i, j] @ t[i, j]) / math.sqrt(float(s[i, j] @ s[i, j]) * float(t[i, j] @ t[i, j]))
                count += 1
    assert mimicdet_loss(s, t, mask).item() == pytest.approx(total / count)
    none = mimicdet_loss(s, t, mask, reduction="none")
    assert none.shape == (2, 6) and not none[~mask].any()
    assert mimicdet_loss(s, t, mask, reduction="sum").item() == pytest.approx(total)


def test_dual_path_as_two_losses_and_gradients():
    g = torch.Generator().manual_seed(1)
    paths = [(torch.randn(8, 16, generator=g, requires_grad=True), torch.randn(8, 16, generator=g)) for _ in range(2)]
    criterion = MultiLevelLoss([MimicDetLoss(), MimicDetLoss()])  # classification path, regression path
    loss = criterion([s for s, _ in paths], [t for _, t in paths])
    torch.testing.assert_close(loss, sum(mimicdet_loss(s, t) for s, t in paths))
    loss.backward()
    assert all(s.grad.abs().sum() > 0 for s, _ in paths)


def test_checks_nan_and_empty():
    with pytest.raises(ValueError, match="sample_mask must have shape"):
        mimicdet_loss(torch.randn(4, 3), torch.randn(4, 3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        mimicdet_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(TypeError, match="teacher"):
        mimicdet_loss(torch.randn(4, 3), torch.ones(4, 3, dtype=torch.long))
    assert torch.isnan(mimicdet_loss(torch.full((2, 3), float("nan")), torch.randn(2, 3)))
    student = torch.randn(3, 4, requires_grad=True)
    loss = mimicdet_loss(student, torch.randn(3, 4), torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and not student.grad.any()
    # a zero feature has cosine 0 and a finite gradient
    zero = torch.zeros(1, 3, requires_grad=True)
    loss = mimicdet_loss(zero, torch.randn(1, 3))
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(zero.grad).all()


def test_matches_torch_cosine_similarity():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 7, 9, generator=g), torch.randn(4, 7, 9, generator=g)
    expected = 1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)
    torch.testing.assert_close(mimicdet_loss(s, t, reduction="none"), expected)
