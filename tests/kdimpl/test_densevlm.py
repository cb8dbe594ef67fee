"""DenseVLM: parity with HVision-NKU/DenseVLM (loss and student gradient), the equation by hand, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.densevlm import DenseVLMLoss, densevlm_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "densevlm" / "official_densevlm.pt"


@pytest.mark.parity
@pytest.mark.parametrize("config", ["mixed", "stuff"])
def test_matches_official(config):
    case = torch.load(FIXTURE, weights_only=True)[config]
    student = case["student"].clone().requires_grad_(True)
    # official Thing5_STUFF3 embedding files: the boundary is 5 - 1 = 4
    loss = DenseVLMLoss(num_thing_classes=case["official_thing"])(
        student, case["teacher"], case["student_text"], case["teacher_text"], valid_mask=case["valid_mask"]
    )
    loss.backward()
    torch.testing.assert_close(loss.detach(), case["loss"], rtol=1e-12, atol=0)
    torch.testing.assert_close(student.grad, case["student_grad"], rtol=1e-10, atol=1e-14)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    text_t = F.normalize(torch.randn(6, 12, generator=g, dtype=torch.float64), dim=-1)
    text_s = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.tensor([[0, 4, 2, 5], [1, 3, 5, 0]])
    teacher = text_t[labels] + 0.02 * torch.randn(2, 4, 12, generator=g, dtype=torch.float64)
    teacher[1, 2] = torch.linalg.pinv(text_t) @ torch.ones(6, dtype=torch.float64)  # uniform: dropped
    student = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    return student, teacher, text_s, text_t, valid


def test_equation_by_hand():
    student, teacher, text_s, text_t, valid = _inputs()
    k, tau = 3, 0.05
    value = densevlm_loss(student, teacher, text_s, text_t, num_thing_classes=k, valid_mask=valid, temperature=tau)
    thing, stuff = [], []
    for n in range(2):
        for m in range(4):
            if not valid[n, m]:
                continue
            t = F.normalize(teacher[n, m], dim=0) @ text_t.T / tau
            s = F.normalize(student[n, m], dim=0) @ text_s.T / tau
            if t.softmax(0).max() <= 0.3:
                continue
            if t.argmax() < k:
                thing.append(F.kl_div(s[:k].log_softmax(0), t[:k].softmax(0), reduction="sum"))
            else:
                stuff.append(F.kl_div(s.log_softmax(0), t.softmax(0), reduction="sum"))
    assert len(thing) == 4 and len(stuff) == 2  # (1, 2) dropped, (0, 3) padding
    torch.testing.assert_close(value, torch.stack(thing).mean() + torch.stack(stuff).mean())
    none = densevlm_loss(student, teacher, text_s, text_t, num_thing_classes=k, valid_mask=valid, temperature=tau, reduction="none")
    torch.testing.assert_close(none.sum(), torch.stack(thing + stuff).sum())
    assert none[1, 2] == 0 and none[0, 3] == 0


def test_one_group_empty_and_no_region():
    student, teacher, text_s, text_t, valid = _inputs()
    only_stuff = densevlm_loss(student, teacher, text_s, text_t, num_thing_classes=0, valid_mask=valid)
    assert torch.isfinite(only_stuff) and only_stuff > 0
    s = student.clone().requires_grad_(True)
    none_kept = densevlm_loss(s, teacher, text_s, text_t, num_thing_classes=3, valid_mask=torch.zeros_like(valid))
    none_kept.backward()
    assert none_kept.item() == 0 and not s.grad.any()


def test_nan_teacher_gives_nan():
    student, teacher, text_s, text_t, valid = _inputs()
    assert torch.isnan(densevlm_loss(student, torch.full_like(teacher, float("nan")), text_s, text_t, num_thing_classes=3))


def test_checks():
    student, teacher, text_s, text_t, valid = _inputs()
    with pytest.raises(ValueError, match="num_thing_classes"):
        densevlm_loss(student, teacher, text_s, text_t, num_thing_classes=7)
    with pytest.raises(ValueError, match="student_text"):
        densevlm_loss(student, teacher, text_s[:, :5], text_t, num_thing_classes=3)
    with pytest.raises(ValueError, match="teacher_text"):
        densevlm_loss(student, teacher, text_s, text_t[:4], num_thing_classes=3)
    with pytest.raises(ValueError, match="temperature"):
        densevlm_loss(student, teacher, text_s, text_t, num_thing_classes=3, temperature=0.0)
    with pytest.raises(TypeError, match="teacher"):
        densevlm_loss(student, teacher.long(), text_s, text_t, num_thing_classes=3)


def test_levels_one_line():
    student, teacher, text_s, text_t, valid = _inputs()
    students = [student, student.flip(1), 2 * student]
    value = multilevel_loss(densevlm_loss, students, [teacher] * 3, num_thing_classes=3, student_text=text_s,
                            teacher_text=text_t, valid_mask=valid)
    expected = sum(densevlm_loss(s, teacher, text_s, text_t, num_thing_classes=3, valid_mask=valid) for s in students)
    torch.testing.assert_close(value, expected)
    module = MultiLevelLoss([DenseVLMLoss(num_thing_classes=3) for _ in range(3)])
    torch.testing.assert_close(module(students, [teacher] * 3, student_text=text_s, teacher_text=text_t, valid_mask=valid), value)
