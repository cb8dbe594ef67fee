"""HEAD: mimic and cross losses against hand formulas and the official code (tests/kdimpl/fixtures/head/PROVENANCE.md),
the warm-up schedule, the anchor bookkeeping and the input checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (
    HEADCrossLoss,
    HEADMimicLoss,
    MultiLevelLoss,
    head_anchor_positions,
    head_cross_loss,
    head_mimic_loss,
    head_warmup,
)

FIXTURES = Path(__file__).parent / "fixtures" / "head"


def _official():
    return torch.load(FIXTURES / "official_head.pt")


def _linear(weight, bias):
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def _padded(official):
    """The official flat RoIs (image, level, y, x, anchor) as per-image padded (N, R, ...) tensors."""
    ids = official["bbox_ids"]
    n = int(ids[:, 0].max()) + 1
    return official["teacher"].reshape(n, -1, official["teacher"].shape[-1]), ids[:, 1:4].reshape(n, -1, 3)


@pytest.mark.parametrize("iteration", [0, 500, 2000, 3000])
def test_mimic_matches_official(iteration):
    official = _official()
    adapter = _linear(official["mimic_weight"], official["mimic_bias"])
    student = official["fc_student"].clone().requires_grad_(True)
    loss = head_warmup(iteration) * head_mimic_loss(student, official["fc_teacher"], adapter_student=adapter)
    loss.backward()
    torch.testing.assert_close(loss.detach(), official[f"mimic_loss_{iteration}"])
    torch.testing.assert_close(student.grad, official[f"mimic_grad_{iteration}"])
    torch.testing.assert_close(adapter.weight.grad, official[f"mimic_weight_grad_{iteration}"])


@pytest.mark.parametrize("iteration", [0, 500, 2000, 3000])
def test_cross_matches_official(iteration):
    official = _official()
    adapter = _linear(official["cross_weight"], official["cross_bias"])
    features = [f.clone().requires_grad_(True) for f in official["features"]]
    teacher, positions = _padded(official)
    assert (positions[..., 0] < 0).sum() == 2  # one ground-truth RoI per image, skipped
    loss = head_warmup(iteration) * head_cross_loss(features, teacher, positions, adapter_student=adapter)
    loss.backward()
    torch.testing.assert_close(loss.detach(), official[f"cross_loss_{iteration}"])
    for grad, expected in zip(features, official[f"cross_grads_{iteration}"]):
        torch.testing.assert_close(grad.grad, expected)
    torch.testing.assert_close(adapter.weight.grad, official[f"cross_weight_grad_{iteration}"])


def test_module_twins_match_official_and_own_their_adapters():
    official = _official()
    mimic = HEADMimicLoss(student_channels=12, channels=12)
    cross = HEADCrossLoss(student_channels=8, channels=12)
    assert isinstance(mimic.adapter_student, torch.nn.Linear) and isinstance(cross.adapter_student, torch.nn.Linear)
    with torch.no_grad():
        for module, key in ((mimic, "mimic"), (cross, "cross")):
            module.adapter_student.weight.copy_(official[f"{key}_weight"])
            module.adapter_student.bias.copy_(official[f"{key}_bias"])
    teacher, positions = _padded(official)
    weight = head_warmup(2000)
    torch.testing.assert_close(weight * mimic(official["fc_student"], official["fc_teacher"]), official["mimic_loss_2000"])
    torch.testing.assert_close(weight * cross(official["features"], teacher, positions), official["cross_loss_2000"])
    with pytest.raises(ValueError, match="both student_channels and channels"):
        HEADCrossLoss(student_channels=8)


def test_warmup_schedule():
    assert head_warmup(0) == 0.0
    assert head_warmup(-5) == 0.0
    assert head_warmup(1) == pytest.approx(0.001)
    assert head_warmup(1000) == pytest.approx(1.0)
    assert head_warmup(2000) == 2.0
    assert head_warmup(10**6) == 2.0
    assert head_warmup(50, loss_weight=1.0, warmup_iters=100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="warmup_iters"):
        head_warmup(5, warmup_iters=0)
    with pytest.raises(ValueError, match="loss_weight"):
        head_warmup(5, loss_weight=-1.0)


def test_mimic_equals_hand_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    adapter = torch.nn.Linear(5, 3).double()
    expected = sum(((adapter(s[r]) - t[r]) ** 2).sum() for r in range(7)) / (7 * 3)
    torch.testing.assert_close(head_mimic_loss(s, t, adapter_student=adapter), expected)
    torch.testing.assert_close(head_mimic_loss(s, t, adapter_student=adapter, reduction="sum"), expected * 21)


def test_cross_equals_hand_loop_over_levels():
    g = torch.Generator().manual_seed(2)
    sizes = [(8, 12), (4, 6), (2, 3)]
    maps = [torch.randn(2, 4, h, w, generator=g, dtype=torch.float64) for h, w in sizes]
    teacher = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    positions = torch.tensor([[[0, 7, 11], [1, 3, 0], [2, 1, 2], [-1, -1, -1], [0, 0, 0], [2, 0, 0]],
                              [[1, 2, 5], [-1, -1, -1], [-1, -1, -1], [0, 4, 4], [2, 1, 1], [1, 0, 5]]])
    total, count = 0.0, 0
    for i in range(2):
        for r in range(6):
            level, y, x = positions[i, r].tolist()
            if level < 0:
                continue
            total = total + ((maps[level][i, :, y, x] - teacher[i, r]) ** 2).sum()
            count += 1
    torch.testing.assert_close(head_cross_loss(maps, teacher, positions), total / (count * 4))
    none = head_cross_loss(maps, teacher, positions, reduction="none")
    assert none.shape == (2, 6, 4) and not none[positions[..., 0] < 0].any()
    # the levels come in one call: a loss over FPN levels needs no MultiLevelLoss
    criterion = HEADCrossLoss(student_channels=4, channels=4)
    assert len(list(criterion.parameters())) == 2


def test_cross_gradient_reaches_only_the_gathered_positions():
    maps = [torch.randn(1, 3, 4, 5, requires_grad=True), torch.randn(1, 3, 2, 3, requires_grad=True)]
    positions = torch.tensor([[[1, 1, 2], [-1, -1, -1]]])
    head_cross_loss(maps, torch.randn(1, 2, 3), positions).backward()
    assert not maps[0].grad.any()
    assert maps[1].grad[0, :, 1, 2].abs().sum() > 0
    maps[1].grad[0, :, 1, 2] = 0
    assert not maps[1].grad.any()


def test_mimic_through_multilevel_loss_keeps_per_level_adapters():
    # HEAD's mimic has no levels, but one loss per FC layer mimicked fits MultiLevelLoss's per-"level" pieces
    criterion = MultiLevelLoss([HEADMimicLoss(student_channels=6, channels=4) for _ in range(3)])
    students = [torch.randn(5, 6) for _ in range(3)]
    teachers = [torch.randn(5, 4) for _ in range(3)]
    assert criterion(students, teachers).dim() == 0
    adapters = {id(p) for loss in criterion.losses for p in loss.adapter_student.parameters()}
    assert adapters == {id(p) for p in criterion.parameters()} and len(adapters) == 6


def test_anchor_positions_follow_mmdetection_order():
    sizes, per_cell = [(3, 4), (2, 2)], 3
    index = []
    expected = []
    start = 0
    for level, (h, w) in enumerate(sizes):
        for y in range(h):
            for x in range(w):
                for a in range(per_cell):
                    index.append(start)
                    expected.append([level, y, x])
                    start += 1
    positions = head_anchor_positions(torch.tensor(index + [-1, start]), sizes, per_cell)
    assert positions[:-2].tolist() == expected
    assert positions[-2:].tolist() == [[-1, -1, -1], [-1, -1, -1]]


def test_input_checks():
    maps = [torch.randn(2, 4, 6, 8)]
    teacher = torch.randn(2, 3, 4)
    positions = torch.zeros(2, 3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="anchor_positions holds"):
        head_cross_loss(maps, teacher, positions + torch.tensor([0, 6, 0]))
    with pytest.raises(ValueError, match="anchor_positions holds"):
        head_cross_loss(maps, teacher, positions + torch.tensor([1, 0, 0]))
    with pytest.raises(TypeError, match="anchor_positions must be an integer"):
        head_cross_loss(maps, teacher, positions.float())
    with pytest.raises(ValueError, match="batch size"):
        head_cross_loss(maps, teacher[:1], positions[:1])
    with pytest.raises(ValueError, match="adapter_student"):
        head_cross_loss(maps, torch.randn(2, 3, 5), positions)
    with pytest.raises(ValueError, match="adapter_student"):
        head_mimic_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(TypeError, match="student"):
        head_mimic_loss(torch.ones(3, 4, dtype=torch.long), torch.randn(3, 4))


def test_nan_and_empty():
    maps = [torch.full((1, 4, 3, 3), float("nan"))]
    assert torch.isnan(head_cross_loss(maps, torch.randn(1, 2, 4), torch.zeros(1, 2, 3, dtype=torch.long)))
    assert torch.isnan(head_mimic_loss(torch.randn(2, 4), torch.full((2, 4), float("nan"))))
    # no RoI with an anchor: a zero in the graph
    student = torch.randn(1, 4, 3, 3, requires_grad=True)
    loss = head_cross_loss(student, torch.randn(1, 2, 4), torch.full((1, 2, 3), -1))
    loss.backward()
    assert loss.item() == 0.0 and not student.grad.any()
