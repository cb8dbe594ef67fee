"""Chen et al. 2017: analytic checks (no official code exists)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from kdimpl.losses.chen2017 import (  # noqa: E402
    chen2017_bounded_regression_loss,
    chen2017_hint_loss,
    chen2017_soft_ce_loss,
)


def test_hint_with_identity_adaptation_is_squared_l2():
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(chen2017_hint_loss(student, teacher, reduction="sum"), ((student - teacher) ** 2).sum())
    torch.testing.assert_close(chen2017_hint_loss(student, teacher), F.mse_loss(student, teacher))


def test_soft_ce_with_unit_weights_is_soft_target_cross_entropy():
    student, teacher = torch.randn(7, 4), torch.randn(7, 4)
    expected = -(F.softmax(teacher, 1) * F.log_softmax(student, 1)).sum(1).mean()
    actual = chen2017_soft_ce_loss(student, teacher, background_weight=1.0)
    torch.testing.assert_close(actual, expected)


def test_background_weight_scales_only_the_background_column():
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    p_t, log_p_s = F.softmax(teacher, 1), F.log_softmax(student, 1)
    for index in (0, -1):
        expected = -(p_t * log_p_s).sum(1) - 0.5 * p_t[:, index] * log_p_s[:, index]
        kwargs = dict(background_weight=1.5, background_index=index, reduction="none")
        actual = chen2017_soft_ce_loss(student, teacher, **kwargs)
        torch.testing.assert_close(actual, expected)


def test_temperature_softens_both_distributions():
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    expected = -(F.softmax(teacher / 3, 1) * F.log_softmax(student / 3, 1)).sum(1).mean()
    actual = chen2017_soft_ce_loss(student, teacher, temperature=3.0, background_weight=1.0)
    torch.testing.assert_close(actual, expected)


def test_soft_ce_gradient_equals_kl_gradient():
    student, teacher = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    chen2017_soft_ce_loss(student, teacher, background_weight=1.0).backward()
    grad_ce = student.grad.clone()
    student.grad = None
    F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean").backward()
    torch.testing.assert_close(grad_ce, student.grad)


def test_class_weights_override_and_are_validated():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    weights = torch.tensor([0.0, 2.0, 0.0])
    expected = -(2.0 * F.softmax(teacher, 1)[:, 1] * F.log_softmax(student, 1)[:, 1]).mean()
    torch.testing.assert_close(chen2017_soft_ce_loss(student, teacher, class_weights=weights), expected)
    with pytest.raises(ValueError, match="class_weights"):
        chen2017_soft_ce_loss(student, teacher, class_weights=torch.ones(2))


def test_bounded_regression_gate_cases():
    target = torch.zeros(4, 4)
    teacher = torch.full((4, 4), 0.5)  # teacher error 1.0 on every sample
    student = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # error 1.0 == teacher: gated off at margin 0, on with a margin
            [2.0, 0.0, 0.0, 0.0],  # error 4.0: worse than the teacher
            [0.5, 0.0, 0.0, 0.0],  # error 0.25: better than the teacher
            [0.9, 0.0, 0.0, 0.0],  # error 0.81: better, but within a 0.5 margin
        ]
    )
    none = chen2017_bounded_regression_loss(student, teacher, target, reduction="none")
    torch.testing.assert_close(none, torch.tensor([0.0, 4.0, 0.0, 0.0]))
    with_margin = chen2017_bounded_regression_loss(student, teacher, target, margin=0.5, reduction="none")
    torch.testing.assert_close(with_margin, torch.tensor([1.0, 4.0, 0.0, 0.81]))
    mean = chen2017_bounded_regression_loss(student, teacher, target, margin=0.5)
    torch.testing.assert_close(mean, torch.tensor((1.0 + 4.0 + 0.81) / 4))


def test_bounded_regression_gradient_and_positive_mask():
    target = torch.zeros(3, 4)
    teacher = torch.zeros(3, 4)  # perfect teacher: every sample is gated on
    student = torch.randn(3, 4, requires_grad=True)
    positive_mask = torch.tensor([True, False, True])
    chen2017_bounded_regression_loss(student, teacher, target, positive_mask=positive_mask, reduction="sum").backward()
    expected = 2 * student.detach() * positive_mask[:, None]
    torch.testing.assert_close(student.grad, expected)


def test_bounded_regression_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="target"):
        chen2017_bounded_regression_loss(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 5))


# Equation-tied checks (equations as transcribed from Sec. 3; see the module docstring).


def test_hint_l1_form_is_absolute_distance():
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(
        chen2017_hint_loss(student, teacher, norm="l1", reduction="sum"), (student - teacher).abs().sum()
    )
    torch.testing.assert_close(chen2017_hint_loss(student, teacher, norm="l1"), F.l1_loss(student, teacher))
    with pytest.raises(ValueError, match="norm"):
        chen2017_hint_loss(student, teacher, norm="l3")


def test_hint_module_forwards_norm():
    from kdimpl.losses.chen2017 import Chen2017HintLoss

    student, teacher = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    module = Chen2017HintLoss(norm="l1", reduction="sum", loss_weight=0.5)
    torch.testing.assert_close(module(student, teacher), 0.5 * (student - teacher).abs().sum())


def test_weighted_soft_ce_hand_computed():
    # Two classes (background first), teacher probabilities (0.8, 0.2), student (0.5, 0.5):
    # L_soft = -(1.5 * 0.8 * log 0.5 + 1 * 0.2 * log 0.5) = 1.4 * log 2.
    teacher = torch.log(torch.tensor([[0.8, 0.2]]))
    student = torch.zeros(1, 2)
    expected = torch.tensor(1.4 * torch.log(torch.tensor(2.0)).item())
    torch.testing.assert_close(chen2017_soft_ce_loss(student, teacher, background_weight=1.5), expected)


def test_bounded_gate_is_strict_inequality():
    # ||R_s - y||^2 + m > ||R_t - y||^2 switches the loss on; equality leaves it off.
    target = torch.zeros(2, 2)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # teacher error 1.0
    student = torch.tensor([[0.5, 0.0], [0.5, 0.0]])  # student error 0.25
    none = chen2017_bounded_regression_loss(student, teacher, target, margin=0.75, reduction="none")
    torch.testing.assert_close(none, torch.zeros(2))  # 0.25 + 0.75 == 1.0: not strictly greater
    on = chen2017_bounded_regression_loss(student, teacher, target, margin=0.76, reduction="none")
    torch.testing.assert_close(on, torch.full((2,), 0.25))


def test_bounded_regression_nan_teacher_or_target_gives_nan():
    student, target = torch.randn(3, 4), torch.zeros(3, 4)
    nan = torch.full((3, 4), float("nan"))
    assert torch.isnan(chen2017_bounded_regression_loss(student, nan, target))  # was a silent 0
    assert torch.isnan(chen2017_bounded_regression_loss(student, torch.zeros(3, 4), nan))
    teacher = torch.zeros(3, 4)
    teacher[1, 2] = float("nan")
    none = chen2017_bounded_regression_loss(student, teacher, target, reduction="none")
    assert torch.isnan(none[1]) and torch.isfinite(none[[0, 2]]).all()


def test_bounded_regression_positive_mask_is_checked():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="positive_mask"):
        chen2017_bounded_regression_loss(x, x, x, positive_mask=torch.ones(4, dtype=torch.bool))


def test_integer_logits_and_features_are_refused():
    z = torch.randint(0, 5, (4, 3))
    with pytest.raises(TypeError, match="student_logits"):
        chen2017_soft_ce_loss(z, z.float())
    with pytest.raises(TypeError, match="teacher_logits"):
        chen2017_soft_ce_loss(z.float(), z)
    with pytest.raises(TypeError, match="target"):
        chen2017_bounded_regression_loss(z.float(), z.float(), z)
    with pytest.raises(TypeError, match="student"):
        chen2017_hint_loss(z, z.float())


def test_background_index_is_range_checked():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="background_index"):
        chen2017_soft_ce_loss(z, z, background_index=3)
    torch.testing.assert_close(
        chen2017_soft_ce_loss(z, z, background_index=-1), chen2017_soft_ce_loss(z, z, background_index=2)
    )


def test_soft_ce_module_keeps_class_weights_as_a_buffer():
    from kdimpl.losses.chen2017 import Chen2017SoftCELoss

    weights = torch.tensor([0.5, 1.0, 2.0])
    module = Chen2017SoftCELoss(class_weights=weights).double()
    assert module.class_weights.dtype == torch.float64 and "class_weights" in dict(module.named_buffers())
    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(module(s, t), chen2017_soft_ce_loss(s, t, class_weights=weights.double()))


def test_empty_batch_gives_a_connected_zero():
    s = torch.randn(0, 4, requires_grad=True)
    for loss in (
        chen2017_soft_ce_loss(s, torch.randn(0, 4)),
        chen2017_bounded_regression_loss(s, torch.randn(0, 4), torch.randn(0, 4)),
        chen2017_hint_loss(s, torch.randn(0, 4)),
    ):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, s)
        assert grad.shape == s.shape and not grad.any()


def test_hint_over_three_levels_in_one_line():
    from kdimpl import MultiLevelLoss, multilevel_loss
    from kdimpl.losses.chen2017 import Chen2017HintLoss

    students = [torch.randn(2, 3, 8 // 2**i, 12 // 2**i) for i in range(3)]
    teachers = [torch.randn_like(s) for s in students]
    expected = sum(chen2017_hint_loss(s, t) for s, t in zip(students, teachers))
    torch.testing.assert_close(multilevel_loss(chen2017_hint_loss, students, teachers), expected)
    torch.testing.assert_close(MultiLevelLoss(Chen2017HintLoss(loss_weight=0.5))(students, teachers), 0.5 * expected)
