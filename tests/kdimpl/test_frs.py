"""FRS: analytic checks and parity with duzhixing/FRS@decd60c (fixtures in fixtures/frs/)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (
    FRSClsLoss,
    FRSFeatureLoss,
    MultiLevelLoss,
    frs_cls_loss,
    frs_feature_loss,
    frs_feature_richness,
    multilevel_loss,
)
from kdimpl.adapters.frs import FRSAdapter

FIXTURES = Path(__file__).parent / "fixtures" / "frs"


def test_richness_is_max_class_probability():
    logits = torch.tensor([[[[0.0]], [[2.0]], [[-1.0]]]])  # (1, 3, 1, 1)
    torch.testing.assert_close(frs_feature_richness(logits), torch.sigmoid(torch.tensor([[[2.0]]])))


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
    feat = multilevel_loss(frs_feature_loss, students, fx["teacher"], fx["teacher_logits"])
    cls = MultiLevelLoss(FRSClsLoss())(s_logits, fx["teacher_logits"])
    torch.testing.assert_close(feat, fx["feat_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(cls, fx["cls_loss"], rtol=1e-5, atol=0)
    (feat + cls).backward()
    for ours, theirs in zip(students, fx["grad_student"]):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(s_logits, fx["grad_student_logits"]):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-5, atol=1e-7)


def _levels(seed=0, sizes=((8, 12), (4, 6), (2, 3)), channels=4, classes=5):
    gen = torch.Generator().manual_seed(seed)
    students = [torch.randn(2, channels, h, w, generator=gen) for h, w in sizes]
    teachers = [torch.randn(2, channels, h, w, generator=gen) for h, w in sizes]
    logits = [torch.randn(2, classes, h, w, generator=gen) for h, w in sizes]
    return students, teachers, logits


def test_three_levels_in_one_line_with_per_level_teacher_logits():
    students, teachers, logits = _levels()
    expected = sum(frs_feature_loss(s, t, z) for s, t, z in zip(students, teachers, logits))
    torch.testing.assert_close(multilevel_loss(frs_feature_loss, students, teachers, logits), expected)
    expected_cls = sum(frs_cls_loss(s, t) for s, t in zip(logits, [z.flip(0) for z in logits]))
    torch.testing.assert_close(MultiLevelLoss(FRSClsLoss())(logits, [z.flip(0) for z in logits]), expected_cls)


def test_per_level_adapters_are_owned_by_the_multilevel_loss():
    students, teachers, logits = _levels(channels=3)
    teachers = [torch.cat([t, t[:, :1]], 1) for t in teachers]  # 4 teacher channels
    criterion = MultiLevelLoss([FRSFeatureLoss(student_channels=3, teacher_channels=4) for _ in students])
    adapters = [loss.adapter_student for loss in criterion.losses]
    params = {id(p) for p in criterion.parameters()}
    assert all(id(p) in params for a in adapters for p in a.parameters()) and len(params) == 2 * len(students)
    students = [s.requires_grad_(True) for s in students]
    total = criterion(students, teachers, logits)
    expected = sum(frs_feature_loss(a(s), t, z) for a, s, t, z in zip(adapters, students, teachers, logits))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(a.weight.grad is not None for a in adapters)
    with pytest.raises(ValueError, match="either"):
        FRSFeatureLoss(student_channels=3, adapter_student=torch.nn.Identity())


def test_integer_logits_are_refused_and_nan_gives_nan():
    s, t, z = (x[0] for x in _levels())
    with pytest.raises(TypeError, match="floating"):
        frs_feature_loss(s, t, z.long())
    with pytest.raises(TypeError, match="floating"):
        frs_cls_loss(z.long(), z.long())
    with pytest.raises(TypeError, match="floating"):
        frs_feature_richness(z.int())
    z_nan = z.clone()
    z_nan[0, 0, 0, 0] = float("nan")
    assert torch.isnan(frs_feature_loss(s, t, z_nan)) and torch.isnan(frs_cls_loss(z, z_nan))
    t_nan = t.clone()
    t_nan[1, 2, 3, 4] = float("nan")
    assert torch.isnan(frs_feature_loss(s, t_nan, z))


def test_empty_batch_gives_a_connected_zero():
    s = torch.randn(0, 4, 5, 6, requires_grad=True)
    z = torch.randn(0, 3, 5, 6, requires_grad=True)
    for loss, x in ((frs_feature_loss(s, torch.randn(0, 4, 5, 6), z.detach()), s), (frs_cls_loss(z, z.detach()), z)):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, x)
        assert grad.shape == x.shape and not grad.any()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_fast_form_matches_the_reference_form(scale):
    from kdimpl.losses.frs import _weighted_squared_error, _WeightedSquaredErrorSum

    gen = torch.Generator().manual_seed(7)
    s0 = torch.randn(2, 5, 4, 6, generator=gen, dtype=torch.float64) * scale
    t = torch.randn(2, 5, 4, 6, generator=gen, dtype=torch.float64) * scale
    richness = frs_feature_richness(torch.randn(2, 3, 4, 6, generator=gen, dtype=torch.float64))
    upstream = torch.tensor(0.7, dtype=torch.float64)
    results = []
    for form in (_weighted_squared_error, _WeightedSquaredErrorSum.apply):
        s = s0.clone().requires_grad_(True)
        value = form(s, t, richness).sum()
        (value * upstream).backward()
        results.append((value.detach(), s.grad))
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12 * scale**2)
    for reduction in ("mean", "sum"):  # the dispatch: fast in eager, reference when compiled
        torch._dynamo.reset()
        function = lambda a, b, c: frs_feature_loss(a, b, c, reduction=reduction)  # noqa: E731, B023
        compiled = torch.compile(function, backend="eager", fullgraph=True)
        logits = torch.randn(2, 3, 4, 6, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(compiled(s0, t, logits), frs_feature_loss(s0, t, logits, reduction=reduction))
    torch._dynamo.reset()
