"""LabelEnc: parity with megvii-model/LabelEnc (label map, distance and auxiliary losses), gates, input checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from kdimpl import LabelEncAdapter, LabelEncEncoder, MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.labelenc import (  # noqa: E402
    LabelEncLoss,
    labelenc_label_map,
    labelenc_level_weights,
    labelenc_loss,
    labelenc_loss_gate,
    labelenc_random_intensity,
)

FIXTURE = Path(__file__).parent / "fixtures" / "labelenc" / "official_labelenc.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _boxes_labels(official):
    return [official["boxes0"], official["boxes1"]], [official["labels0"], official["labels1"]]


@pytest.mark.parity
def test_label_map_matches_official(official):
    boxes, labels = _boxes_labels(official)
    size = tuple(official["image_size"].tolist())
    # maskrcnn-benchmark's labels: 1-based, background 0 (the default convention here)
    label_map = labelenc_label_map(boxes, labels, size, 4)
    torch.testing.assert_close(label_map, official["label_map"], rtol=0, atol=0)
    # mmdetection's labels: 0-based, background last
    shifted = labelenc_label_map(boxes, [lab - 1 for lab in labels], size, 4, background_index=-1)
    torch.testing.assert_close(shifted, official["label_map"], rtol=0, atol=0)
    # a padded (N, M, 4) tensor of boxes with an (N, M) tensor of labels
    padded = labelenc_label_map(
        torch.stack([boxes[0], torch.cat([boxes[1], boxes[1]])]), torch.stack([labels[0], labels[1].repeat(2)]), size, 4
    )
    torch.testing.assert_close(padded, official["label_map"], rtol=0, atol=0)


@pytest.mark.parity
def test_augmented_label_map_matches_official_with_its_draws(official):
    boxes, labels = _boxes_labels(official)
    factors = official["aug_factors"]
    intensity = torch.zeros(2, 4)
    intensity[0], intensity[1, :2] = factors[:4], factors[4:]
    label_map = labelenc_label_map(boxes, labels, tuple(official["image_size"].tolist()), 4, box_intensity=intensity)
    torch.testing.assert_close(label_map, official["label_map_aug"], rtol=0, atol=0)


@pytest.mark.parity
@pytest.mark.parametrize("step", [1, 2])
def test_feature_loss_matches_official(official, step):
    adapter = LabelEncAdapter(8)
    adapter.load_state_dict(official[f"step{step}_adapter"])
    students = [official[f"student{i}"].clone().requires_grad_(True) for i in range(3)]
    teachers = [official[f"teacher{i}"] for i in range(3)]
    weights = labelenc_level_weights(students)
    loss = multilevel_loss(labelenc_loss, students, teachers, adapter_student=adapter, level_weights=weights)
    loss.backward()
    torch.testing.assert_close(loss.detach(), official[f"step{step}_loss"], rtol=1e-6, atol=1e-7)
    for i, student in enumerate(students):
        torch.testing.assert_close(student.grad, official[f"step{step}_grad{i}"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(adapter[0].weight.grad, official[f"step{step}_adapter_grad0"], rtol=1e-5, atol=1e-9)


@pytest.mark.parity
def test_twin_owning_its_adapter_matches_official_over_levels(official):
    students = [official[f"student{i}"] for i in range(3)]
    criterion = MultiLevelLoss(LabelEncLoss(channels=8), level_weights=labelenc_level_weights(students))
    criterion.losses[0].adapter_student.load_state_dict(official["step1_adapter"])
    loss = criterion(students, [official[f"teacher{i}"] for i in range(3)])
    torch.testing.assert_close(loss, official["step1_loss"], rtol=1e-6, atol=1e-7)
    names = {name for name, _ in criterion.named_parameters()}
    assert {"losses.0.adapter_student.0.weight", "losses.0.adapter_student.4.bias"} <= names


def test_label_map_hand_checked():
    # box (1, 1, 5, 3): centre (3, 2), size 4 x 2; label 2 with background 0 -> channel 1
    label_map = labelenc_label_map([torch.tensor([[1.0, 1.0, 5.0, 3.0]])], [torch.tensor([2])], (4, 7), 4)
    assert label_map.shape == (1, 3, 4, 7)
    assert label_map[0, [0, 2]].abs().sum() == 0
    edge = torch.tensor([0, 0.5, 0.5, 0.5, 0.5, 0.5, 0])
    torch.testing.assert_close(label_map[0, 1], torch.stack([torch.zeros(7), edge, torch.tensor(
        [0, 0.5, 0.75, 1, 0.75, 0.5, 0]), edge]))


def test_label_map_takes_the_largest_value_of_a_class_and_keeps_classes_apart():
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 8.0, 8.0]])
    label_map = labelenc_label_map([boxes], [torch.tensor([1, 1, 2])], (9, 9), 3)
    one = labelenc_label_map([boxes[:1]], [torch.tensor([1])], (9, 9), 3)[0, 0]
    two = labelenc_label_map([boxes[1:2]], [torch.tensor([1])], (9, 9), 3)[0, 0]
    torch.testing.assert_close(label_map[0, 0], torch.maximum(one, two))
    torch.testing.assert_close(label_map[0, 1], one)


def test_degenerate_box_gives_no_nan():
    # zero width with an integer centre: the official code divides 0 by 0 on the centre column
    label_map = labelenc_label_map([torch.tensor([[3.0, 1.0, 3.0, 5.0]])], [torch.tensor([1])], (8, 8), 2)
    assert torch.isfinite(label_map).all()
    assert label_map[0, 0, :, 3].max() == 1 and label_map[0, 0, :, [2, 4]].abs().sum() == 0


def test_image_without_boxes_and_empty_batch():
    label_map = labelenc_label_map([torch.zeros(0, 4), torch.tensor([[1.0, 1.0, 5.0, 5.0]])],
                                   [torch.zeros(0, dtype=torch.long), torch.tensor([1])], (6, 6), 2)
    assert label_map[0].abs().sum() == 0 and label_map[1].max() == 1
    assert labelenc_label_map([], [], (6, 6), 2).shape == (0, 1, 6, 6)


def test_random_intensity_is_seeded_and_in_range():
    boxes = [torch.zeros(5, 4), torch.zeros(2, 4)]
    first = labelenc_random_intensity(boxes, rng=torch.Generator().manual_seed(3))
    again = labelenc_random_intensity(boxes, rng=torch.Generator().manual_seed(3))
    assert first.shape == (2, 5) and torch.equal(first, again)
    assert ((first > 0) & (first <= 1)).all()


def test_label_map_checks_its_inputs():
    boxes, labels = [torch.tensor([[1.0, 1.0, 5.0, 3.0]])], [torch.tensor([2])]
    with pytest.raises(ValueError, match=r"labels\[0\] must lie in \[0, 3\)"):
        labelenc_label_map(boxes, [torch.tensor([3])], (4, 7), 3)
    with pytest.raises(ValueError, match="background class 0"):
        labelenc_label_map(boxes, [torch.tensor([0])], (4, 7), 4)
    with pytest.raises(TypeError, match="integer tensor"):
        labelenc_label_map(boxes, [torch.tensor([2.0])], (4, 7), 4)
    with pytest.raises(ValueError, match="labels has 2 images"):
        labelenc_label_map(boxes, labels * 2, (4, 7), 4)
    with pytest.raises(ValueError, match="one label per box"):
        labelenc_label_map(boxes, [torch.tensor([2, 1])], (4, 7), 4)
    with pytest.raises(ValueError, match="x2 < x1"):
        labelenc_label_map([torch.tensor([[5.0, 1.0, 1.0, 3.0]])], labels, (4, 7), 4)
    with pytest.raises(ValueError, match="non-finite"):
        labelenc_label_map([torch.tensor([[1.0, 1.0, float("nan"), 3.0]])], labels, (4, 7), 4)
    with pytest.raises(ValueError, match="image_size"):
        labelenc_label_map(boxes, labels, torch.tensor([[4, 7]]), 4)
    with pytest.raises(ValueError, match="image_size must be > 0"):
        labelenc_label_map(boxes, labels, (0, 7), 4)
    with pytest.raises(ValueError, match="background_index"):
        labelenc_label_map(boxes, labels, (4, 7), 4, background_index=4)


def test_loss_is_the_plain_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 5, 7, dtype=torch.float64), torch.randn(2, 6, 5, 7, dtype=torch.float64)

    def layer_norm(x):  # per sample over channels and cells, biased variance, eps 1e-5
        flat = x.reshape(x.shape[0], -1)
        mean, var = flat.mean(1, keepdim=True), flat.var(1, unbiased=False, keepdim=True)
        return ((flat - mean) / (var + 1e-5).sqrt()).reshape(x.shape)

    expected = (layer_norm(teacher) - layer_norm(student)).square()
    torch.testing.assert_close(labelenc_loss(student, teacher, reduction="none"), expected)
    torch.testing.assert_close(labelenc_loss(student, teacher), expected.mean())


def test_level_weights_give_the_concatenated_mean():
    torch.manual_seed(1)
    students = [torch.randn(2, 4, 8 // 2**i, 12 // 2**i) for i in range(3)]
    teachers = [torch.randn_like(s) for s in students]
    weights = labelenc_level_weights(students)
    assert weights == pytest.approx([96 / 126, 24 / 126, 6 / 126])
    total = multilevel_loss(labelenc_loss, students, teachers, level_weights=weights)
    flat = lambda xs: torch.cat([F.group_norm(x, 1).flatten(2) for x in xs], dim=2)  # noqa: E731
    torch.testing.assert_close(total, F.mse_loss(flat(students), flat(teachers)))


def test_scale_and_shift_of_a_sample_do_not_change_the_loss():
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(labelenc_loss(3 * student + 1, teacher), labelenc_loss(student, teacher), rtol=1e-4,
                               atol=1e-5)


def test_teacher_is_detached_and_adapter_trains():
    adapter = LabelEncAdapter(4)
    student, teacher = torch.randn(2, 4, 6, 6, requires_grad=True), torch.randn(2, 4, 6, 6, requires_grad=True)
    labelenc_loss(student, teacher, adapter_student=adapter).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert all(p.grad is not None for p in adapter.parameters())


def test_nan_in_nan_out_and_empty_batch():
    assert torch.isnan(labelenc_loss(torch.full((1, 2, 3, 3), float("nan")), torch.randn(1, 2, 3, 3)))
    assert torch.isnan(labelenc_loss(torch.randn(1, 2, 3, 3), torch.full((1, 2, 3, 3), float("nan"))))
    student = torch.zeros(0, 4, 3, 3, requires_grad=True)
    loss = labelenc_loss(student, torch.zeros(0, 4, 3, 3), adapter_student=LabelEncAdapter(4))
    assert loss.item() == 0
    loss.backward()
    assert student.grad is not None and not student.grad.any()


def test_loss_checks_its_inputs():
    with pytest.raises(ValueError, match="same shape"):
        labelenc_loss(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 4))
    with pytest.raises(TypeError, match="student must be a floating-point"):
        labelenc_loss(torch.ones(1, 4, 3, 3, dtype=torch.long), torch.randn(1, 4, 3, 3))
    with pytest.raises(TypeError, match="adapter_student must be a module"):
        labelenc_loss(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), adapter_student=3)


def test_gates_follow_the_official_iteration_counts():
    # step 1: official 1-based iterations 1..30000 are warm-up (0-based 0..29999)
    assert [labelenc_loss_gate(i, 1) for i in (0, 29999, 30000, 10**6)] == [0.0, 0.0, 1.0, 1.0]
    # step 2: official 1-based iterations 1..80000 keep the loss (0-based 0..79999)
    assert [labelenc_loss_gate(i, 2) for i in (0, 79999, 80000, 89999)] == [1.0, 1.0, 0.0, 0.0]
    assert labelenc_loss_gate(5, 1, warmup_iters=5) == 1.0 and labelenc_loss_gate(5, 2, cutoff_iters=5) == 0.0
    with pytest.raises(ValueError, match="step must be 1"):
        labelenc_loss_gate(0, 3)


@pytest.mark.parity
def test_encoder_body_matches_official():
    official = torch.load(FIXTURE.with_name("official_labelenc_encoder.pt"), weights_only=True)
    generator = torch.Generator().manual_seed(21)
    encoder = LabelEncEncoder(3)
    assert [name for name, _ in encoder.named_parameters()] == official["names"]  # official checkpoints load
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.randn(p.numel(), generator=generator).view_as(p) * (2.0 / p[0].numel()) ** 0.5)
    label_map = torch.rand(2, 3, 16, 16, generator=generator).requires_grad_(True)
    outputs = encoder(label_map)
    weights = [torch.randn(o.shape, generator=generator) for o in outputs]
    sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
    for ours, theirs in zip(outputs, official["outputs"]):
        torch.testing.assert_close(ours.detach(), theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(label_map.grad, official["grad_input"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.stage1.weight.grad.flatten()[:32], official["grad_stage1"], rtol=1e-5, atol=1e-5)
