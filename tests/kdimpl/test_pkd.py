"""PKD: parity with mmrazor's PKDLoss and the Pearson-correlation identities."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.pkd import PKDLoss, pkd_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "pkd" / "official_pkd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
@pytest.mark.parametrize("resize", ["student", "teacher"])
def test_matches_official_two_levels_with_resize(official, resize):
    # level 1 has a 7x9 student and a 14x18 teacher: the official code resizes bilinearly and sums the levels.
    students = [official["student0"].clone().requires_grad_(True), official["student1"].clone().requires_grad_(True)]
    teachers = [official["teacher0"], official["teacher1"]]
    loss = multilevel_loss(pkd_loss, students, teachers, resize=resize)
    loss.backward()
    key = f"resize_{resize}"
    torch.testing.assert_close(loss.detach(), official[f"{key}_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(students[0].grad, official[f"{key}_grad0"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(students[1].grad, official[f"{key}_grad1"], rtol=1e-5, atol=1e-8)
    for level in range(2):
        value = pkd_loss(students[level], teachers[level], resize=resize)
        torch.testing.assert_close(value.detach(), official[f"{key}_level{level}_loss"], rtol=1e-5, atol=1e-7)


def test_module_twin_over_levels():
    students = [torch.randn(2, 3, 16 // 2**i, 20 // 2**i) for i in range(3)]
    teachers = [0.5 * s + torch.randn_like(s) for s in students]
    criterion = MultiLevelLoss(PKDLoss(), loss_weight=6.0)
    expected = 6.0 * sum(pkd_loss(s, t) for s, t in zip(students, teachers))
    torch.testing.assert_close(criterion(students, teachers), expected)


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


def test_mean_is_official_standardise_then_mse_and_none_gives_the_elements():
    s, t = torch.randn(2, 4, 5, 9) * 3 + 2, torch.randn(2, 4, 5, 9) - 1

    def norm(x):
        return (x - x.mean((0, 2, 3), keepdim=True)) / (x.std((0, 2, 3), keepdim=True) + 1e-6)

    expected = F.mse_loss(norm(s), norm(t)) / 2
    torch.testing.assert_close(pkd_loss(s, t), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pkd_loss(s, t, reduction="sum"), expected * s.numel(), rtol=1e-5, atol=1e-5)
    elements = pkd_loss(s, t, reduction="none")
    torch.testing.assert_close(elements, (norm(s) - norm(t)).square() / 2)
    torch.testing.assert_close(elements.mean(), expected, rtol=1e-5, atol=1e-7)


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


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_fast_form_matches_the_reference_form(scale):
    from kdimpl.losses.pkd import _standardize, _StandardizedSquaredError

    s0 = torch.randn(3, 4, 5, 6, dtype=torch.float64) * scale + torch.arange(4.0, dtype=torch.float64)[:, None, None]
    t = 0.3 * s0 + torch.randn(3, 4, 5, 6, dtype=torch.float64) * scale
    s0[:, 2] = 0.25  # a constant channel: zero slope through its standard deviation, as torch.std's backward
    weights = torch.rand(4, dtype=torch.float64)  # a non-uniform upstream gradient per channel
    grads = []
    for form in ("reference", "fast"):
        s = s0.clone().requires_grad_(True)
        if form == "fast":
            per_channel = _StandardizedSquaredError.apply(s, t, 1e-6)
        else:
            per_channel = (0.5 * (_standardize(s, 1e-6) - _standardize(t, 1e-6)).square()).sum((0, 2, 3))
        (per_channel * weights).sum().backward()
        grads.append((per_channel.detach(), s.grad))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-9)


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
