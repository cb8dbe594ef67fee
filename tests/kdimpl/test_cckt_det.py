"""CCKT-Det: parity with ZCHUHan/CCKT-Det (alignment loss and student gradient), the equation as loops, checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.distributed import distributed_behaviour  # noqa: E402
from kdimpl.losses.cckt_det import CCKTDetLoss, cckt_det_loss  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "cckt_det" / "official_cckt_det.pt"


@pytest.mark.parity
def test_matches_official():
    official = torch.load(FIXTURE, weights_only=True)
    student = official["student"].clone().requires_grad_(True)
    loss = CCKTDetLoss(background_index=-1)(student, official["teacher"], official["labels"])
    loss.backward()
    # the official code divides the positive terms by count + 1e-6: a relative 1e-6 on those terms
    torch.testing.assert_close(loss.detach(), official["loss"], rtol=2e-6, atol=0)
    torch.testing.assert_close(student.grad, official["student_grad"], rtol=1e-5, atol=1e-6)


def _naive(student, teacher, labels, temperature, bg):
    """The equation as loops over queries and classes (foreground labels > bg shift down by one)."""
    queries = torch.nn.functional.normalize(student.flatten(0, 1), dim=-1)
    flat = labels.flatten().tolist()
    num_classes = teacher.shape[0]
    cls = [None if y == bg else (y - 1 if y > bg else y) for y in flat]
    s = [[float(queries[i] @ teacher[k]) / temperature for k in range(num_classes)] for i in range(len(flat))]
    q2g = sum(-s[i][cls[i]] + math.log(sum(math.exp(v) for v in s[i])) for i in range(len(flat)) if cls[i] is not None)
    g2q = 0.0
    for k in range(num_classes):
        members = [i for i in range(len(flat)) if cls[i] == k]
        if members:
            g2q += -sum(s[i][k] for i in members) / len(members) + math.log(sum(math.exp(s[i][k]) for i in range(len(flat))))
    return temperature * (q2g + g2q) / 2


@pytest.mark.parametrize("background_index", [0, -1])
def test_equation_and_reduction(background_index):
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64)
    teacher = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5), generator=generator)
    bg = 0 if background_index == 0 else 3
    expected = _naive(student, teacher, labels, 0.1, bg)
    value = cckt_det_loss(student, teacher, labels, temperature=0.1, background_index=background_index)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    none = cckt_det_loss(student, teacher, labels, temperature=0.1, background_index=background_index, reduction="none")
    assert none.shape == (2 * 5 + 3,)
    torch.testing.assert_close(none.sum(), value)
    assert (none[:10][labels.flatten() == bg] == 0).all()
    torch.testing.assert_close(
        cckt_det_loss(student, teacher, labels, temperature=0.1, background_index=background_index, reduction="sum"), value)
    assert distributed_behaviour("cckt_det") == "batch"


def test_nan_empty_and_checks():
    student, teacher = torch.randn(2, 4, 6), torch.randn(3, 6)
    labels = torch.tensor([[1, 0, 0, 2], [0, 3, 0, 0]])
    student[0, 1, 0] = float("nan")  # an unmatched query still enters the class-to-query contrast
    assert torch.isnan(cckt_det_loss(student, teacher, labels))
    empty = torch.randn(0, 4, 6, requires_grad=True)
    loss = cckt_det_loss(empty, teacher, torch.zeros(0, 4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and empty.grad is not None
    unmatched = torch.randn(2, 4, 6, requires_grad=True)
    loss = cckt_det_loss(unmatched, teacher, torch.zeros(2, 4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and not unmatched.grad.any()
    with pytest.raises(ValueError, match="labels"):
        cckt_det_loss(torch.randn(2, 4, 6), teacher, torch.full((2, 4), 4))
    with pytest.raises(TypeError, match="labels"):
        cckt_det_loss(torch.randn(2, 4, 6), teacher, labels.float())
    with pytest.raises(ValueError, match="teacher"):
        cckt_det_loss(torch.randn(2, 4, 6), torch.randn(3, 5), labels)
    with pytest.raises(ValueError, match="labels"):
        cckt_det_loss(torch.randn(2, 4, 6), teacher, labels[:, :3])


def test_levels_one_line():
    # the official criterion applies the loss to every decoder layer's queries with the same guidance
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(3, 6, generator=generator)
    labels = torch.tensor([[1, 0, 2, 0], [0, 3, 0, 1]])
    layers = [torch.randn(2, 4, 6, generator=generator) for _ in range(3)]
    value = multilevel_loss(cckt_det_loss, layers, [teacher] * 3, labels=labels)
    torch.testing.assert_close(value, sum(cckt_det_loss(q, teacher, labels) for q in layers))
    torch.testing.assert_close(MultiLevelLoss([CCKTDetLoss() for _ in range(3)])(layers, [teacher] * 3, labels=labels), value)
