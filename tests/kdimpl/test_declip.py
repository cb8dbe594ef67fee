"""DeCLIP: parity with xiaomoguhz/DeCLIP (context loss and its student gradient; the content loss via clipself_loss), checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.distributed import distributed_behaviour  # noqa: E402
from kdimpl.losses.clipself import clipself_loss  # noqa: E402
from kdimpl.losses.declip import DeCLIPContextLoss, declip_context_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "declip" / "official_declip.pt"


@pytest.mark.parity
def test_context_matches_official():
    official = torch.load(FIXTURE, weights_only=True)["same"]
    student = official["student"].clone().requires_grad_(True)
    loss = DeCLIPContextLoss()(student, official["teacher"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["loss"], rtol=1e-12, atol=0)
    torch.testing.assert_close(student.grad, official["student_grad"], rtol=1e-10, atol=1e-15)


@pytest.mark.parity
def test_context_official_resize_quirk():
    # the official resize path reads the resized (C, W, H) buffer as (HW, C) tokens; the released scripts
    # choose the foundation model's input size so that both grids agree and never take it
    official = torch.load(FIXTURE, weights_only=True)["resized"]
    student, teacher = official["student"], official["teacher"]
    n, c = student.shape[:2]
    height, width = teacher.shape[-2:]
    resized = torch.nn.functional.interpolate(student, size=(height, width), mode="bilinear", align_corners=False)
    scrambled = resized.transpose(-2, -1).reshape(n, height * width, c).transpose(1, 2).reshape(n, c, height, width)
    torch.testing.assert_close(declip_context_loss(scrambled, teacher), official["loss"], rtol=1e-12, atol=0)
    assert not torch.isclose(declip_context_loss(student, teacher), official["loss"])


@pytest.mark.parity
def test_content_is_clipself_loss():
    official = torch.load(FIXTURE, weights_only=True)["content"]
    student = official["student"].clone().requires_grad_(True)
    loss = clipself_loss(student, official["teacher"], valid_mask=official["valid_mask"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["loss"], rtol=1e-12, atol=0)
    # the official embeddings come normalised out of the encoder; clipself_loss normalises them again,
    # so its gradient is the official one projected onto the unit sphere's tangent plane
    unit, grad = official["student"], official["student_grad"]
    projected = grad - (grad * unit).sum(-1, keepdim=True) * unit
    torch.testing.assert_close(student.grad, projected, rtol=1e-10, atol=1e-15)


def _naive(student, teacher):
    """The equation as loops over images and teacher positions."""
    height, width = teacher.shape[-2:]
    s = torch.nn.functional.interpolate(student, size=(height, width), mode="bilinear", align_corners=False)
    total, count = 0.0, 0
    for n in range(student.shape[0]):
        sn, tn = s[n].flatten(1), teacher[n].flatten(1)
        for i in range(height * width):
            gs = torch.nn.functional.cosine_similarity(sn[:, i : i + 1], sn, dim=0)
            gt = torch.nn.functional.cosine_similarity(tn[:, i : i + 1], tn, dim=0)
            total = total + torch.linalg.vector_norm(gt - gs)
            count += 1
    return total / count


def test_equation_and_reduction():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 7, 4, 5, generator=generator, dtype=torch.float64)
    expected = _naive(student, teacher)
    torch.testing.assert_close(declip_context_loss(student, teacher), expected)
    none = declip_context_loss(student, teacher, reduction="none")
    assert none.shape == (2, 4, 5)
    torch.testing.assert_close(none.mean(), expected)
    torch.testing.assert_close(declip_context_loss(student, teacher, reduction="sum"), none.sum())
    assert distributed_behaviour("declip_context") == "exact"


def test_nan_empty_and_checks():
    student, teacher = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)
    student[1, 0, 0, 0] = float("nan")
    assert torch.isnan(declip_context_loss(student, teacher))
    empty = torch.randn(0, 4, 3, 3, requires_grad=True)
    loss = declip_context_loss(empty, torch.randn(0, 6, 3, 3))
    loss.backward()
    assert loss.item() == 0 and empty.grad is not None and not empty.grad.any()
    with pytest.raises(ValueError, match="batch size"):
        declip_context_loss(torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3))
    with pytest.raises(TypeError, match="student"):
        declip_context_loss(torch.ones(2, 4, 3, 3, dtype=torch.long), teacher)
    with pytest.raises(ValueError, match="teacher"):
        declip_context_loss(student, torch.randn(2, 6, 9))


def test_levels_one_line():
    # e.g. several student blocks' query maps against one foundation-model map
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 6, 4, 4, generator=generator)
    students = [torch.randn(2, 5, 3, 3, generator=generator) for _ in range(3)]
    value = multilevel_loss(declip_context_loss, students, [teacher] * 3)
    torch.testing.assert_close(value, sum(declip_context_loss(s, teacher) for s in students))
    torch.testing.assert_close(MultiLevelLoss([DeCLIPContextLoss() for _ in range(3)])(students, [teacher] * 3), value)
