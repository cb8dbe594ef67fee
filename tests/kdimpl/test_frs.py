"""FRS: analytic checks and parity with duzhixing/FRS@decd60c (fixtures in fixtures/frs/)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import FRSClsLoss, feature_richness, frs_cls_loss, frs_feature_loss
from kdimpl.adapters.frs import FRSAdapter

FIXTURES = Path(__file__).parent / "fixtures" / "frs"


def test_richness_is_max_class_probability():
    logits = torch.tensor([[[[0.0]], [[2.0]], [[-1.0]]]])  # (1, 3, 1, 1)
    torch.testing.assert_close(feature_richness(logits), torch.sigmoid(torch.tensor([[[2.0]]])))


def test_feature_loss_by_hand():
    # two positions: richness sigma(0)=0.5 and sigma(big)=1; squared errors 4 (two channels of 2) and 1
    student = torch.tensor([[[[2.0, 1.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2)
    teacher = torch.zeros_like(student)
    logits = torch.tensor([[[[0.0, 50.0]]]])
    expected = (0.5 * (4 + 4) + 1.0 * (1 + 0)) / (0.5 + 1.0)
    torch.testing.assert_close(frs_feature_loss(student, teacher, logits), torch.tensor(expected))
    torch.testing.assert_close(frs_feature_loss(student, teacher, logits, reduction="sum"), torch.tensor(5.0))


def test_cls_loss_matches_weighted_bce_and_is_finite_for_extreme_logits():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4, generator=gen), torch.randn(2, 5, 3, 4, generator=gen)
    w = torch.sigmoid(t).amax(1, keepdim=True)
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(s), torch.sigmoid(t), reduction="none")
    torch.testing.assert_close(frs_cls_loss(s, t), (bce * w).sum() / w.sum())
    s_big = (s * 500).requires_grad_(True)
    loss = frs_cls_loss(s_big, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s_big.grad).all()


def test_mismatched_logits_are_rejected():
    s = torch.randn(1, 4, 6, 8)
    with pytest.raises(ValueError, match="teacher_logits"):
        frs_feature_loss(s, s.clone(), torch.randn(1, 9, 8, 6))


def test_adapter_shapes_and_level_count():
    adapter = FRSAdapter(4, 6, num_levels=2)
    out = adapter([torch.randn(1, 4, 5, 7), torch.randn(1, 4, 3, 4)])
    assert [o.shape for o in out] == [torch.Size([1, 6, 5, 7]), torch.Size([1, 6, 3, 4])]
    with pytest.raises(ValueError, match="levels"):
        adapter([torch.randn(1, 4, 5, 7)])


@pytest.mark.parity
def test_parity_with_official_forward_train():
    fx = torch.load(FIXTURES / "frs_official.pt")
    students = [s.clone().requires_grad_(True) for s in fx["student"]]
    s_logits = [s.clone().requires_grad_(True) for s in fx["student_logits"]]
    feat = sum(frs_feature_loss(s, t, z) for s, t, z in zip(students, fx["teacher"], fx["teacher_logits"]))
    cls = sum(FRSClsLoss()(s, t) for s, t in zip(s_logits, fx["teacher_logits"]))
    torch.testing.assert_close(feat, fx["feat_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(cls, fx["cls_loss"], rtol=1e-5, atol=0)
    (feat + cls).backward()
    for ours, theirs in zip(students, fx["grad_student"]):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(s_logits, fx["grad_student_logits"]):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-5, atol=1e-7)
