"""MTKD-RL: parity with winycg/MTKD-RL (state, policy, weighted losses, reward, agent update), equations, inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kdimpl import MTKDRLPolicy, multilevel_loss  # noqa: E402
from kdimpl.losses.mtkd_rl import (  # noqa: E402
    MTKDRLFeatureLoss,
    MTKDRLLogitLoss,
    mtkd_rl_agent_loss,
    mtkd_rl_agent_state,
    mtkd_rl_feature_loss,
    mtkd_rl_logit_loss,
    mtkd_rl_reward,
)

FIXTURE = Path(__file__).parent / "fixtures" / "mtkd_rl" / "official_mtkd_rl.pt"
_NAMES = {"steam.0.weight": "stem.0.weight", "logit_weight_factor": "logit_mix", "feature_weight_factor": "feature_mix"}


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _state(official):
    x = official["inputs"]
    task = F.cross_entropy(x["teacher_logits"].transpose(1, 2), x["targets"][:, None].expand(-1, 3), reduction="none")
    pooled = x["student_features"].mean(dim=(3, 4))
    return mtkd_rl_agent_state(pooled, x["teacher_embeddings"], x["student_logits"], x["teacher_logits"], task)


def _policy(official, tag):
    state_dict = {_NAMES.get(k, k): v.double() for k, v in official[tag]["state_dict"].items()}
    policy = MTKDRLPolicy(3 * (4 + 6 + 3), 3, dynamic=tag == "dynamic").double()
    policy.load_state_dict(state_dict)
    return policy


@pytest.mark.parity
def test_agent_state_matches_official(official):
    state = _state(official)
    for key, value in official["state"].items():
        torch.testing.assert_close(getattr(state, key), value, rtol=1e-10, atol=1e-12)


@pytest.mark.parity
@pytest.mark.parametrize("tag", ["static", "dynamic"])
def test_policy_matches_official(official, tag):
    logit_w, feat_w = _policy(official, tag)(_state(official))
    torch.testing.assert_close(logit_w, official[tag]["logit_weights"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(feat_w, official[tag]["feature_weights"], rtol=1e-10, atol=1e-12)


@pytest.mark.parity
@pytest.mark.parametrize("tag", ["static", "dynamic"])
def test_logit_loss_matches_official(official, tag):
    x, ref = official["inputs"], official[tag]
    student = x["student_logits"].clone().requires_grad_(True)
    loss = mtkd_rl_logit_loss(student, x["teacher_logits"], ref["logit_weights"], temperature=4.0)
    loss.backward()
    torch.testing.assert_close(loss, ref["logit_loss"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(student.grad, ref["logit_grad"], rtol=1e-10, atol=1e-12)


@pytest.mark.parity
@pytest.mark.parametrize("tag", ["static", "dynamic"])
@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_feature_loss_matches_official(official, tag, kind):
    x, ref = official["inputs"], official[tag]
    student = x["student_features"].clone().requires_grad_(True)
    loss = MTKDRLFeatureLoss(kind=kind)(student, x["teacher_features"], ref["feature_weights"])
    loss.backward()
    torch.testing.assert_close(loss, ref[f"feature_loss_{kind}"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(student.grad, ref[f"feature_grad_{kind}"], rtol=1e-10, atol=1e-12)


@pytest.mark.parity
@pytest.mark.parametrize("tag", ["static", "dynamic"])
def test_reward_and_agent_update_match_official(official, tag):
    x, ref = official["inputs"], official[tag]
    ce = F.cross_entropy(x["student_logits"], x["targets"], reduction="none")
    kd = mtkd_rl_logit_loss(x["student_logits"], x["teacher_logits"], ref["logit_weights"], reduction="none").sum(1)
    feat = mtkd_rl_feature_loss(x["student_features"], x["teacher_features"], ref["feature_weights"], reduction="none").sum(1)
    per_sample = ce + kd + 5.0 * feat
    torch.testing.assert_close(per_sample, ref["per_sample_loss"], rtol=1e-10, atol=1e-12)
    reward = mtkd_rl_reward(per_sample)
    torch.testing.assert_close(reward, ref["reward"], rtol=1e-10, atol=1e-12)
    policy = _policy(official, tag)
    loss = mtkd_rl_agent_loss(*policy(_state(official)), reward)
    loss.backward()
    torch.testing.assert_close(loss, ref["agent_loss"], rtol=1e-10, atol=1e-12)
    names = {v: k for k, v in _NAMES.items()}
    for name, param in policy.named_parameters():
        torch.testing.assert_close(param.grad.float(), ref["agent_grads"][names.get(name, name)], rtol=1e-5, atol=1e-7)


def test_logit_loss_equals_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    s, t, w = torch.randn(5, 7, generator=g), torch.randn(5, 3, 7, generator=g), torch.rand(5, 3, generator=g)
    expected = 0.0
    for k in range(3):
        for n in range(5):
            p_t = torch.softmax(t[n, k] / 2.0, 0)
            kl = (p_t * (p_t.log() - torch.log_softmax(s[n] / 2.0, 0))).sum() * 4.0
            expected = expected + w[n, k] * kl / 5
    torch.testing.assert_close(mtkd_rl_logit_loss(s, t, w, temperature=2.0), expected)
    # a student given once equals the same student given per teacher
    torch.testing.assert_close(mtkd_rl_logit_loss(s, t, w), mtkd_rl_logit_loss(s[:, None].expand(-1, 3, -1), t, w))


def test_feature_kl_equals_a_naive_loop():
    g = torch.Generator().manual_seed(4)
    s, t, w = torch.randn(2, 2, 3, 2, 4, generator=g), torch.randn(2, 2, 3, 2, 4, generator=g), torch.rand(2, 2, generator=g)
    expected = 0.0
    for n in range(2):
        for k in range(2):
            per_channel = []
            for c in range(3):
                p_t = torch.softmax(t[n, k, c].flatten() / 4.0, 0)
                log_s = torch.log_softmax(s[n, k, c].flatten() / 4.0, 0)
                per_channel.append((p_t * (p_t.log() - log_s)).sum() * 16.0)
            expected = expected + w[n, k] * torch.stack(per_channel).mean() / 2
    torch.testing.assert_close(mtkd_rl_feature_loss(s, t, w, kind="kl"), expected)
    mse = sum(w[n, k] * (s[n, k] - t[n, k]).square().mean() / 2 for n in range(2) for k in range(2))
    torch.testing.assert_close(mtkd_rl_feature_loss(s, t, w), mse)


def test_weights_receive_no_gradient_and_reduction_none_is_per_sample_per_teacher():
    s, t = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    w = torch.rand(4, 3, requires_grad=True)
    loss = mtkd_rl_logit_loss(s.requires_grad_(True), t, w, reduction="none")
    assert loss.shape == (4, 3)
    torch.testing.assert_close(loss.sum(1).mean(), mtkd_rl_logit_loss(s, t, w))
    assert not loss.sum().requires_grad or torch.autograd.grad(loss.sum(), w, allow_unused=True)[0] is None


def test_policy_weights_sum_to_one_and_agent_loss_trains_the_policy():
    g = torch.Generator().manual_seed(0)
    emb, logits = torch.randn(6, 3, 4, generator=g), torch.randn(6, 3, 5, generator=g)
    state = mtkd_rl_agent_state(emb, emb + 0.3, torch.randn(6, 5, generator=g), logits, torch.rand(6, 3, generator=g))
    for dynamic in (False, True):
        policy = MTKDRLPolicy(3 * (4 + 5 + 3), 3, dynamic=dynamic)
        lw, fw = policy(state)
        torch.testing.assert_close(lw.sum(1), torch.ones(6))
        torch.testing.assert_close(fw.sum(1), torch.ones(6))
        mtkd_rl_agent_loss(lw, fw, torch.ones(6)).backward()
        assert all(p.grad is not None for p in policy.parameters())


def test_agent_state_accepts_teachers_of_different_widths():
    s_emb = [torch.randn(4, 6), torch.randn(4, 3)]
    t_emb = [torch.randn(4, 6), torch.randn(4, 3)]
    state = mtkd_rl_agent_state(s_emb, t_emb, torch.randn(4, 5), torch.randn(4, 2, 5), torch.rand(4, 2))
    assert state.teacher_info.shape == (4, (6 + 5 + 3) + (3 + 5 + 3))


def test_input_checks():
    s, t, w = torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.rand(2, 3)
    with pytest.raises(ValueError, match="teacher_weights"):
        mtkd_rl_logit_loss(s, t, torch.rand(2, 4))
    with pytest.raises(TypeError, match="student"):
        mtkd_rl_logit_loss(s.long(), t, w)
    with pytest.raises(ValueError, match="kind"):
        mtkd_rl_feature_loss(torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2), w, kind="l1")
    with pytest.raises(ValueError, match="at least 2"):
        MTKDRLPolicy(10, 1)
    with pytest.raises(ValueError, match="embeddings of 3 teachers"):
        mtkd_rl_agent_state([torch.randn(2, 4)], [torch.randn(2, 4)], torch.randn(2, 5), t, w)


def test_nan_in_gives_nan_out_and_empty_batch_gives_zero():
    s, t, w = torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.rand(2, 3)
    assert torch.isnan(mtkd_rl_logit_loss(torch.full_like(s, float("nan")), t, w))
    for kind in ("mse", "kl"):
        assert torch.isnan(mtkd_rl_feature_loss(torch.randn(2, 3, 4, 2, 2), torch.full((2, 3, 4, 2, 2), float("nan")), w, kind=kind))
        empty_map = torch.zeros(0, 4, 2, 2, requires_grad=True)
        loss = mtkd_rl_feature_loss(empty_map, torch.zeros(0, 3, 4, 2, 2), torch.zeros(0, 3), kind=kind)
        loss.backward()
        assert loss.item() == 0.0 and not empty_map.grad.any()
    empty = torch.zeros(0, 5, requires_grad=True)
    loss = mtkd_rl_logit_loss(empty, torch.zeros(0, 3, 5), torch.zeros(0, 3))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None


def test_feature_loss_over_levels_with_weights_given_once():
    w = torch.rand(2, 3)
    teachers = [torch.randn(2, 3, 4, 8 // 2**l, 12 // 2**l) for l in range(3)]
    students = [torch.randn(2, 4, 8 // 2**l, 12 // 2**l) for l in range(3)]
    expected = sum(mtkd_rl_feature_loss(s, t, w) for s, t in zip(students, teachers))
    torch.testing.assert_close(multilevel_loss(mtkd_rl_feature_loss, students, teachers, teacher_weights=w), expected)
    torch.testing.assert_close(MTKDRLLogitLoss(loss_weight=2.0)(students[0].mean((2, 3)), teachers[0].mean((3, 4)), w),
                               2.0 * mtkd_rl_logit_loss(students[0].mean((2, 3)), teachers[0].mean((3, 4)), w))
