"""Mimic (Li et al. 2017): analytic checks (no official code exists)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.mimic import MimicLoss, mimic_loss, mimic_region_bounds  # noqa: E402


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


def test_proposals_given_once_serve_every_level():
    image_size = (64, 96)
    students = [torch.randn(2, 3, 64 // 2**k, 96 // 2**k) for k in range(2, 5)]  # strides 4, 8, 16
    teachers = [torch.randn_like(x) for x in students]
    proposals = [
        torch.tensor([[4.0, 8.0, 40.0, 30.0]]),
        torch.tensor([[0.0, 0.0, 96.0, 64.0], [50.0, 20.0, 90.0, 60.0]]),
    ]
    expected = sum(mimic_loss(x, t, proposals, image_size=image_size) for x, t in zip(students, teachers))
    actual = multilevel_loss(mimic_loss, students, teachers, proposals=proposals, image_size=image_size)
    torch.testing.assert_close(actual, expected)
    criterion = MultiLevelLoss(MimicLoss(loss_weight=0.5))
    actual = criterion(students, teachers, proposals=proposals, image_size=image_size)
    torch.testing.assert_close(actual, 0.5 * expected)
    # a whole-image proposal is half the level's MSE at every stride
    whole = [torch.tensor([[0.0, 0.0, 96.0, 64.0]])] * 2
    for x, t in zip(students, teachers):
        torch.testing.assert_close(mimic_loss(x, t, whole, image_size=image_size), (x - t).pow(2).mean() / 2)


@pytest.mark.parametrize(
    "proposals, image_size, error, message",
    [
        ([torch.tensor([[0.0, 0.0, 8.0, 8.0]])], (48, 64), ValueError, "1 images but the features have batch size 2"),
        ([torch.tensor([[0.0, 0.0, float("nan"), 8.0]]), torch.zeros(0, 4)], (48, 64), ValueError, "non-finite"),
        ([torch.tensor([[8.0, 0.0, 4.0, 8.0]]), torch.zeros(0, 4)], (48, 64), ValueError, "x2 < x1"),
        ([torch.tensor([[0.0, 8.0, 4.0, 2.0]]), torch.zeros(0, 4)], (48, 64), ValueError, "y2 < y1"),
        ([torch.zeros(1, 5), torch.zeros(0, 4)], (48, 64), ValueError, r"proposals\[0\] must be a tensor of shape"),
        (None, (48, 64), TypeError, "proposals"),
        ([torch.zeros(0, 4)] * 2, (0, 64), ValueError, "image_size must be finite and > 0"),
        ([torch.zeros(0, 4)] * 2, (48, float("inf")), ValueError, "image_size must be finite and > 0"),
        ([torch.zeros(0, 4)] * 2, (64, 48), ValueError, "not \\(width, height\\)"),
    ],
)
def test_rejects_bad_proposals_and_image_sizes(proposals, image_size, error, message):
    student, teacher = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    with pytest.raises(error, match=message):
        mimic_loss(student, teacher, proposals, image_size=image_size)
