"""MasKD: parity with hunto/MasKD (both stages), the equation against a naive loop, gradients of the masks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MasKDTokens, MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.maskd import MasKDLoss, maskd_loss, maskd_mask_diversity  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "maskd" / "official_maskd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _level_state(state, level):
    prefix = f"mask_modules.{level}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _seeded_tokens(channels=4, num_tokens=3, weighting=True, seed=0, dtype=torch.float64):
    tokens = MasKDTokens(channels, num_tokens, weighting)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tokens.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    return tokens.to(dtype)


@pytest.mark.parity
@pytest.mark.parametrize("tag, weighting", [("weighted", True), ("plain", False)])
@pytest.mark.parametrize("custom", [False, True])
def test_matches_official_distillation(official, tag, weighting, custom):
    key = f"{tag}_{'custom' if custom else 'teacher'}"
    losses = [MasKDLoss(channels=8, num_tokens=3, weighting=weighting).double() for _ in range(2)]
    for level, loss in enumerate(losses):
        loss.tokens_teacher.load_state_dict(_level_state(official[f"{tag}_state"], level))
    students = [s.clone().requires_grad_(True) for s in official["students"]]
    value = MultiLevelLoss(losses, loss_weight=7.0)(students, official["teachers"], student_masks=custom)
    value.backward()
    torch.testing.assert_close(value.detach(), official[f"{key}_loss"], rtol=1e-12, atol=0)
    for student, grad in zip(students, official[f"{key}_student_grads"]):
        torch.testing.assert_close(student.grad, grad, rtol=1e-10, atol=1e-14)
    # the official masks are not detached: the tokens (and the weighting module) get these gradients
    for loss, grad in zip(losses, official[f"{key}_token_grads"]):
        torch.testing.assert_close(loss.tokens_teacher.mask_token.grad, grad, rtol=1e-10, atol=1e-14)
    if weighting:
        prob_grad = losses[0].tokens_teacher.prob[0].weight.grad[:2]
        torch.testing.assert_close(prob_grad, official[f"{key}_prob_grad"], rtol=1e-10, atol=1e-14)


@pytest.mark.parity
def test_matches_official_mask_learning(official):
    tokens = MasKDTokens(8, num_tokens=3).double()
    tokens.load_state_dict(official["learn_state"])
    x = official["teachers"][0].clone().requires_grad_(True)
    masked, masks = tokens(x)
    diversity = maskd_mask_diversity(masks)
    (masked.square().sum() + diversity).backward()
    torch.testing.assert_close(masked.detach(), official["learn_masked"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(diversity.detach(), official["learn_diversity"], rtol=1e-12, atol=0)
    torch.testing.assert_close(x.grad, official["learn_input_grad"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(tokens.mask_token.grad, official["learn_token_grad"], rtol=1e-10, atol=1e-13)


def _naive(student, teacher, tokens, student_masks=False):
    """Loops over images, masks and channels, the official masked features written out."""
    n, c, h, w = student.shape
    total = []
    for i in range(n):
        per_mask = []
        weights = tokens.mask_weights(teacher[i : i + 1])
        for j in range(tokens.num_tokens):
            mask = torch.sigmoid((tokens.mask_token[j][:, None, None] * teacher[i]).sum(0))
            if student_masks:
                mask = mask * torch.sigmoid((tokens.mask_token[j][:, None, None] * student[i]).sum(0)).detach()
            errors = [((mask * student[i, k] - mask * teacher[i, k]) ** 2).sum() / mask.sum() for k in range(c)]
            per_mask.append(torch.stack(errors).mean())
        per_mask = torch.stack(per_mask)
        total.append(per_mask.mean() if weights is None else (per_mask * weights[0]).sum())
    return torch.stack(total)


@pytest.mark.parametrize("weighting", [True, False])
@pytest.mark.parametrize("student_masks", [False, True])
def test_equation_against_naive_loop(weighting, student_masks):
    g = torch.Generator().manual_seed(3)
    student = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    teacher = 0.5 * student + torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    tokens = _seeded_tokens(weighting=weighting)
    expected = _naive(student, teacher, tokens, student_masks)
    per_image = maskd_loss(student, teacher, tokens, student_masks=student_masks, reduction="none")
    torch.testing.assert_close(per_image, expected)
    torch.testing.assert_close(maskd_loss(student, teacher, tokens, student_masks=student_masks), expected.mean())


def test_diversity_against_naive_pairs():
    masks = torch.rand(2, 4, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pairs = []
    for n in range(2):
        for i in range(4):
            for j in range(4):
                if i != j:
                    a, b = masks[n, i].flatten(), masks[n, j].flatten()
                    pairs.append(2 * (a * b).sum() / ((a * a).sum() + (b * b).sum()))
    torch.testing.assert_close(maskd_mask_diversity(masks), torch.stack(pairs).mean())
    assert maskd_mask_diversity(masks, reduction="none").shape == (2, 4, 3)
    assert float(maskd_mask_diversity(masks[:, :1])) == 0.0  # one token: no pair (official: NaN)
    assert float(maskd_mask_diversity(torch.zeros(2, 3, 4, 4))) == 0.0


def test_masks_reach_tokens_but_never_the_student_or_teacher():
    g = torch.Generator().manual_seed(5)
    student = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = _seeded_tokens()
    maskd_loss(student, teacher, tokens, student_masks=True).backward()
    assert teacher.grad is None
    assert tokens.mask_token.grad is not None and tokens.mask_token.grad.abs().sum() > 0
    assert tokens.prob[0].weight.grad.abs().sum() > 0
    # the student's gradient is that of the squared error under fixed masks
    masks = (tokens.masks(teacher.detach()) * tokens.masks(student.detach())).detach()
    area = masks.sum(dim=(2, 3))[:, :, None]
    weights = tokens.mask_weights(teacher.detach()).detach()
    s = student.detach().requires_grad_(True)
    fixed = ((torch.einsum("nthw,nchw->ntc", masks**2, (s - teacher.detach()) ** 2) / area).mean(2) * weights).sum(1)
    fixed.mean().backward()
    torch.testing.assert_close(student.grad, s.grad)
    # frozen tokens (the distillation stage) receive nothing
    tokens.requires_grad_(False)
    student.grad, before = None, tokens.mask_token.grad.clone()
    maskd_loss(student, teacher.detach(), tokens).backward()
    assert student.grad is not None and torch.equal(tokens.mask_token.grad, before)


def test_input_checks():
    tokens = _seeded_tokens(dtype=torch.float32)
    s, t = torch.randn(2, 4, 5, 7), torch.randn(2, 4, 5, 7)
    with pytest.raises(ValueError, match="tokens_teacher"):
        maskd_loss(s, t, None)
    with pytest.raises(ValueError, match="teacher"):
        maskd_loss(s, t[:, :, :4], tokens)
    with pytest.raises(TypeError, match="student"):
        maskd_loss(s.long(), t, tokens)
    with pytest.raises(ValueError, match="masks"):
        maskd_mask_diversity(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="num_tokens"):
        MasKDTokens(4, num_tokens=0)


def test_nan_in_nan_out_and_empty_batch():
    tokens = _seeded_tokens(dtype=torch.float32)
    s, t = torch.randn(2, 4, 5, 7), torch.randn(2, 4, 5, 7)
    assert torch.isnan(maskd_loss(s, torch.full_like(t, float("nan")), tokens))
    assert torch.isnan(maskd_loss(torch.full_like(s, float("nan")), t, tokens))
    empty = torch.zeros(0, 4, 5, 7, requires_grad=True)
    loss = maskd_loss(empty, torch.zeros(0, 4, 5, 7), tokens)
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad is not None and not empty.grad.any()


def test_large_features_stay_finite():
    # masks underflow to exactly 0 in float32; the official area division gives 0 / 0 = NaN
    tokens = _seeded_tokens(dtype=torch.float32)
    s = 1e3 * torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(6))
    loss = maskd_loss(s, s + 1, tokens)
    assert torch.isfinite(loss)


def test_levels_in_one_line_hold_every_levels_tokens():
    students = [torch.randn(2, 4, 12 // 2**i, 20 // 2**i) for i in range(3)]
    teachers = [s + 0.3 * torch.randn_like(s) for s in students]
    criterion = MultiLevelLoss([MasKDLoss(channels=4, num_tokens=3) for _ in range(3)])
    owned = {id(p) for p in criterion.parameters()}
    for loss in criterion.losses:
        assert all(id(p) in owned for p in loss.tokens_teacher.parameters())
    tokens = [loss.tokens_teacher for loss in criterion.losses]
    expected = sum(maskd_loss(s, t, k) for s, t, k in zip(students, teachers, tokens))
    torch.testing.assert_close(criterion(students, teachers), expected)
    torch.testing.assert_close(multilevel_loss(maskd_loss, students, teachers, tokens), expected)


def test_tokens_initialisation_follows_the_official_module():
    tokens = MasKDTokens(64, num_tokens=6)
    assert tokens.mask_token.shape == (6, 64) and 0.005 < float(tokens.mask_token.detach().std()) < 0.02
    assert set(tokens.state_dict()) == {"mask_token", "prob.0.weight", "prob.0.bias", "prob.2.weight", "prob.2.bias"}
    assert not tokens.prob[0].bias.any()
    assert MasKDTokens(4, weighting=False).mask_weights(torch.randn(1, 4, 3, 3)) is None
