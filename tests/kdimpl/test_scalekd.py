"""ScaleKD (unverified reconstruction): hand-checkable values and the adapters' structure."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kdimpl.adapters.scalekd import MultiScaleCrossAttention, ScaleDecoupledFeature  # noqa: E402
from kdimpl.losses.scalekd import (  # noqa: E402
    scalekd_assistant_box_loss,
    scalekd_assistant_cls_loss,
    scalekd_feature_loss,
)


def test_feature_loss_without_decoupler_is_mse():
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(scalekd_feature_loss(s, t), ((s - t) ** 2).mean())


def test_feature_loss_averages_over_branches():
    sdf = ScaleDecoupledFeature(8, dilations=(1, 2))
    s, t = torch.randn(1, 8, 5, 7), torch.randn(1, 8, 5, 7)
    es, et = sdf(s), sdf(t)
    per_branch = [((es[:, b] - et[:, b]) ** 2).mean() for b in range(2)]
    torch.testing.assert_close(scalekd_feature_loss(s, t, decoupler_student=sdf), sum(per_branch) / 2)


def test_feature_loss_target_side_gives_no_gradient_to_the_decoupler():
    sdf = ScaleDecoupledFeature(8)
    s, t = torch.randn(1, 8, 5, 7), torch.randn(1, 8, 5, 7)
    scalekd_feature_loss(s, t, decoupler_student=sdf).backward()
    with_target = sdf.expand.weight.grad.clone()
    sdf.zero_grad()
    ((sdf(s) - sdf(t).detach()) ** 2).mean().backward()
    torch.testing.assert_close(with_target, sdf.expand.weight.grad)


def test_sdf_branches_differ_only_by_dilation():
    with torch.random.fork_rng():  # a random init can switch every hidden unit off (ReLU): seed it
        torch.manual_seed(0)
        sdf = ScaleDecoupledFeature(4, dilations=(1, 1, 3), hidden_channels=4)
        out = sdf(torch.randn(2, 4, 9, 11))
    torch.testing.assert_close(out[:, 0], out[:, 1])  # same dilation, shared weights
    assert not torch.allclose(out[:, 0], out[:, 2])


def test_sdf_is_identity_when_the_expansion_is_zero():
    sdf = ScaleDecoupledFeature(4)
    with torch.no_grad():
        sdf.expand.weight.zero_()
        sdf.expand.bias.zero_()
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(sdf(x), x[:, None].expand(1, 3, 4, 6, 6))


def test_softmax_cls_loss_matches_hand_computed_kl():
    s, a = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    # p_s = (1/4, 3/4), p_a = (1/2, 1/2): KL = 1/2 log 2 + 1/2 log(2/3)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    torch.testing.assert_close(scalekd_assistant_cls_loss(s, a), torch.tensor(expected))
    # the temperature scales logits and multiplies by its square
    torch.testing.assert_close(scalekd_assistant_cls_loss(2 * s, 2 * a, temperature=2.0), torch.tensor(4 * expected))


def test_sigmoid_cls_loss_is_the_bernoulli_kl():
    s, a = torch.randn(3, 4), torch.randn(3, 4)
    p, q = a.sigmoid(), s.sigmoid()
    expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1)
    torch.testing.assert_close(scalekd_assistant_cls_loss(s, a, activation="sigmoid", reduction="none"), expected)


def test_cls_loss_is_finite_for_extreme_logits():
    s = torch.tensor([[100.0, -100.0, 0.0]], requires_grad=True)
    a = torch.tensor([[-100.0, 100.0, 0.0]])
    for activation in ("softmax", "sigmoid"):
        loss = scalekd_assistant_cls_loss(s, a, activation=activation)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and loss > 100


def test_box_loss_is_l1_per_prediction():
    s = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]]])
    a = torch.tensor([[[1.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 1.0]]])
    torch.testing.assert_close(scalekd_assistant_box_loss(s, a, reduction="none"), torch.tensor([[3.0, 0.0]]))
    torch.testing.assert_close(scalekd_assistant_box_loss(s, a), torch.tensor(1.5))


def test_prediction_losses_reject_mismatched_shapes_and_bad_options():
    with pytest.raises(ValueError, match="same shape"):
        scalekd_assistant_box_loss(torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="activation"):
        scalekd_assistant_cls_loss(torch.randn(2, 4), torch.randn(2, 4), activation="relu")


def test_msc_uses_the_teacher_at_every_reduction_ratio():
    torch.manual_seed(0)
    msc = MultiScaleCrossAttention(8, num_heads=2, sr_ratios=(1, 2))
    s, t = torch.randn(1, 8, 6, 10), torch.randn(1, 8, 6, 10, requires_grad=True)
    msc(s, t).sum().backward()
    assert t.grad is not None and t.grad.abs().sum() > 0
    assert msc.reduce[1].weight.grad.abs().sum() > 0  # the downsampled group is in the graph


def test_msc_with_a_constant_teacher_adds_a_constant_per_channel():
    msc = MultiScaleCrossAttention(8, num_heads=4, sr_ratios=(1, 2))
    msc.eval()
    s = torch.randn(1, 8, 4, 6)
    t = torch.ones(1, 8, 4, 6)  # every key/value token is identical, so attention output is position-independent
    with torch.no_grad():
        for local in msc.local:
            local.weight.zero_()  # the depth-wise term would otherwise see the zero padding at the borders
        delta = msc(s, t) - s
    torch.testing.assert_close(delta, delta[:, :, :1, :1].expand_as(delta))


def test_msc_rejects_inconsistent_heads():
    with pytest.raises(ValueError, match="num_heads"):
        MultiScaleCrossAttention(8, num_heads=3, sr_ratios=(1, 2))


def test_integer_predictions_are_refused():
    z = torch.randint(0, 5, (2, 6, 4))
    for loss in (scalekd_assistant_cls_loss, scalekd_assistant_box_loss):
        with pytest.raises(TypeError, match="student"):
            loss(z, z.float())
        with pytest.raises(TypeError, match="assistant"):
            loss(z.float(), z)
    with pytest.raises(TypeError, match="student"):
        scalekd_feature_loss(z[..., None], z[..., None].float())


def test_feature_module_owns_its_decoupler_per_level():
    from kdimpl import MultiLevelLoss, ScaleKDFeatureLoss, multilevel_loss

    criterion = MultiLevelLoss([ScaleKDFeatureLoss(channels=8, dilations=(1, 2)) for _ in range(3)])
    blocks = [loss.decoupler_student for loss in criterion.losses]
    params = {id(p) for p in criterion.parameters()}
    assert len(params) == 3 * len(list(blocks[0].parameters()))
    assert all(id(p) in params for block in blocks for p in block.parameters())
    students = [torch.randn(2, 8, 12 // 2**i, 10 // 2**i, requires_grad=True) for i in range(3)]
    teachers = [torch.randn_like(s) for s in students]
    total = criterion(students, teachers)
    expected = sum(scalekd_feature_loss(s, t, decoupler_student=b) for s, t, b in zip(students, teachers, blocks))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(block.expand.weight.grad is not None for block in blocks)
    shared = ScaleDecoupledFeature(8)
    torch.testing.assert_close(
        multilevel_loss(scalekd_feature_loss, students, teachers, decoupler_student=shared),
        sum(scalekd_feature_loss(s, t, decoupler_student=shared) for s, t in zip(students, teachers)),
    )
    with pytest.raises(ValueError, match="either"):
        ScaleKDFeatureLoss(channels=8, decoupler_student=shared)


def test_empty_batch_and_nan():
    sdf = ScaleDecoupledFeature(4)
    s = torch.randn(0, 4, 5, 6, requires_grad=True)
    loss = scalekd_feature_loss(s, torch.randn(0, 4, 5, 6), decoupler_student=sdf)
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None and not s.grad.any()
    nan = torch.full((1, 4, 5, 6), float("nan"))
    assert torch.isnan(scalekd_feature_loss(torch.randn(1, 4, 5, 6), nan, decoupler_student=sdf))
    assistant = torch.zeros(2, 3)
    assistant[0, 1] = float("nan")
    assert torch.isnan(scalekd_assistant_cls_loss(torch.randn(2, 3), assistant))
