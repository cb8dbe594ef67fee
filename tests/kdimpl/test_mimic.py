"""Mimic (Li et al. 2017): analytic checks (no official code exists)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kdimpl.losses.mimic import mimic_loss, mimic_region_bounds  # noqa: E402


def test_one_proposal_covering_the_map_is_half_the_mse():
    student, teacher = torch.randn(1, 3, 6, 8), torch.randn(1, 3, 6, 8)
    loss = mimic_loss(student, teacher, [torch.tensor([[0.0, 0.0, 64.0, 48.0]])], image_size=(48, 64))
    torch.testing.assert_close(loss, (student - teacher).pow(2).mean() / 2)


def test_two_disjoint_proposals_average_their_region_means():
    student, teacher = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    err = (student - teacher).pow(2)[0]
    proposals = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 24.0, 64.0, 48.0]])]  # stride 8
    expected = (err[:, 0:2, 0:2].mean() / 2 + err[:, 3:6, 4:8].mean() / 2) / 2
    torch.testing.assert_close(mimic_loss(student, teacher, proposals, image_size=(48, 64)), expected)
    per_proposal = mimic_loss(student, teacher, proposals, image_size=(48, 64), reduction="none")
    torch.testing.assert_close(per_proposal, torch.stack([err[:, 0:2, 0:2].mean(), err[:, 3:6, 4:8].mean()])[None] / 2)


def test_proposals_are_averaged_over_the_whole_batch():
    student, teacher = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    proposals = [full, torch.cat([full, full])]
    err = (student - teacher).pow(2)
    expected = (err[0].mean() / 2 + 2 * err[1].mean() / 2) / 3
    torch.testing.assert_close(mimic_loss(student, teacher, proposals, image_size=(32, 32)), expected)


def test_region_bounds_cover_overlapped_cells_only():
    boxes = torch.tensor(
        [
            [[8.0, 8.0, 16.0, 16.0], [9.0, 3.0, 9.5, 3.5], [-5.0, -5.0, 100.0, 100.0], [60.0, 40.0, 64.0, 48.0]]
        ]
    )
    bounds = mimic_region_bounds(boxes, (48, 64), (6, 8))
    expected = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 7.0, 5.0], [7.0, 5.0, 7.0, 5.0]]])
    torch.testing.assert_close(bounds, expected)


def test_every_proposal_weighs_the_same_whatever_its_size():
    # unit error everywhere: each proposal contributes 1/2 regardless of its area
    student = torch.ones(1, 4, 6, 8)
    proposals = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 64.0, 48.0], [10.0, 10.0, 40.0, 20.0]])]
    loss = mimic_loss(student, torch.zeros_like(student), proposals, image_size=(48, 64), reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(1.5))


def test_no_proposals_gives_zero_with_finite_gradient():
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = mimic_loss(student, torch.randn(2, 3, 4, 4), [torch.zeros(0, 4), torch.zeros(0, 4)], image_size=(32, 32))
    loss.backward()
    assert loss == 0 and torch.isfinite(student.grad).all()
