"""CWD: parity with the official implementations and hand-checkable cases."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl.losses.cwd import CWDLoss, cwd_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "cwd" / "official_cwd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _loss_and_grad(student, teacher, **kwargs):
    student = student.clone().requires_grad_(True)
    loss = cwd_loss(student, teacher, **kwargs)
    loss.backward()
    return loss.detach(), student.grad


@pytest.mark.parity
@pytest.mark.parametrize("source", ["mmrazor", "torchdistiller"])
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_matches_official(official, source, tau):
    loss, grad = _loss_and_grad(official["student"], official["teacher"], temperature=tau)
    torch.testing.assert_close(loss, official[f"{source}_tau{tau:g}_loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, official[f"{source}_tau{tau:g}_grad"], rtol=1e-5, atol=1e-8)


@pytest.mark.parity
def test_large_logits_stay_finite_where_torchdistiller_overflows(official):
    loss, grad = _loss_and_grad(official["student"] * 200, official["teacher"])
    assert torch.isinf(official["torchdistiller_x200_loss"]), "fixture: TorchDistiller's softmax().log() overflows"
    torch.testing.assert_close(loss, official["mmrazor_x200_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, official["mmrazor_x200_grad"], rtol=1e-5, atol=1e-8)


def test_uniform_student_gives_log_hw_minus_teacher_entropy():
    # KL(p_T || uniform) = log(HW) - H(p_T) for every channel.
    teacher = torch.randn(2, 3, 4, 5)
    student = torch.zeros_like(teacher)
    p = teacher.flatten(2).softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    expected = torch.log(torch.tensor(20.0)) - entropy
    torch.testing.assert_close(cwd_loss(student, teacher, reduction="none"), expected)


def test_mean_is_tau_squared_over_nc_times_sum():
    s, t = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4, 6)
    tau = 3.0
    total = cwd_loss(s, t, temperature=tau, reduction="sum")
    torch.testing.assert_close(cwd_loss(s, t, temperature=tau), total / 6)
    manual = (t.flatten(2) / tau).softmax(-1)
    manual = (manual * (manual.log() - (s.flatten(2) / tau).log_softmax(-1))).sum() * tau**2
    torch.testing.assert_close(total, manual)


def test_invariant_to_per_channel_shifts():
    s, t = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    shift = torch.randn(2, 3, 1, 1) * 10
    torch.testing.assert_close(cwd_loss(s + shift, t), cwd_loss(s, t), rtol=1e-5, atol=1e-6)


def test_none_shape_and_module_repr():
    s, t = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    assert cwd_loss(s, t, reduction="none").shape == (2, 3)
    assert "temperature=4.0" in repr(CWDLoss(temperature=4.0))


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="temperature"):
        cwd_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        cwd_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 4))


@pytest.mark.parametrize("scale, tau", [(1.0, 1.0), (200.0, 1.0), (1e-3, 1.0), (1.0, 4.0), (30.0, 0.5)])
def test_fast_form_matches_the_reference_form(official, scale, tau):
    from kdimpl.losses.cwd import _spatial_kl_reference, _SpatialKL, _SpatialKLCompiled

    s = (official["student"] * scale).flatten(2).double().requires_grad_(True)
    t = official["teacher"].flatten(2).double()
    kl_div = torch.nn.functional.kl_div(
        (s / tau).log_softmax(-1), (t / tau).log_softmax(-1), reduction="none", log_target=True
    ).sum(-1)
    weights = torch.rand_like(kl_div)  # a non-uniform upstream gradient
    (g_kl_div,) = torch.autograd.grad((kl_div * weights).sum(), s)
    reference = _spatial_kl_reference(s, t, tau)
    (g_reference,) = torch.autograd.grad((reference * weights).sum(), s)
    torch.testing.assert_close(reference, kl_div, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_reference, g_kl_div, rtol=1e-10, atol=1e-12)
    for form in (_SpatialKL, _SpatialKLCompiled):
        fast = form.apply(s, t, tau)
        (g_fast,) = torch.autograd.grad((fast * weights).sum(), s)
        torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g_fast, g_reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_forward_and_backward_match_eager(reduction):
    # aot_eager runs the compiled form and its saved-direction backward without a C++ build
    s0, t = torch.randn(2, 4, 6, 9, dtype=torch.float64) * 3, torch.randn(2, 4, 6, 9, dtype=torch.float64)
    results = []
    for fn in (cwd_loss, torch.compile(cwd_loss, backend="aot_eager", fullgraph=True)):
        s = s0.clone().requires_grad_(True)
        loss = fn(s, t, temperature=2.0, reduction=reduction)
        (loss * torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)).sum().backward()
        results.append((loss.detach(), s.grad))
    torch._dynamo.reset()
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)


def test_compiled_half_inputs_match_eager():
    s0, t = torch.randn(2, 4, 6, 9).half(), torch.randn(2, 4, 6, 9).half()
    results = []
    for fn in (cwd_loss, torch.compile(cwd_loss, backend="aot_eager", fullgraph=True)):
        s = s0.clone().requires_grad_(True)
        loss = fn(s, t)
        loss.backward()
        results.append((loss.detach().float(), s.grad.float()))
    torch._dynamo.reset()
    torch.testing.assert_close(results[1], results[0], rtol=1e-2, atol=1e-5)
