"""OADP: the three distillation losses and the adaptive proposal transform, parity with LutingWang/OADP@d641d28 + todd v0.3.0."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (  # noqa: E402
    OADPEmbeddingLoss,
    OADPGlobalLoss,
    OADPRelationLoss,
    oadp_adaptive_boxes,
    oadp_embedding_loss,
    oadp_global_loss,
    oadp_relation_loss,
)

FIXTURES = Path(__file__).parent / "fixtures" / "oadp"
LOSSES = {"objects": oadp_embedding_loss, "blocks": oadp_embedding_loss, "relations": oadp_relation_loss,
          "globals": oadp_global_loss}


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURES / "official_oadp.pt")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_parity_with_the_official_losses(fx, name):
    case = fx[name]
    student = case["student"].clone().requires_grad_(True)
    loss = LOSSES[name](student, case["teacher"])
    torch.testing.assert_close(loss, case["loss"], rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, case["grad_student"], rtol=1e-5, atol=1e-8)


def test_adaptive_boxes_match_the_official_transform(fx):
    case = fx["adaptive_boxes"]
    torch.testing.assert_close(oadp_adaptive_boxes(case["boxes"], case["image_size"]), case["expanded"])


def _pair(seed=0, n=5, d=6, e=None, dtype=torch.float64):
    """Raw student embeddings and L2-normalised teacher embeddings (as CLIP's are stored)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.nn.functional.normalize(torch.randn(n, e or d, generator=g, dtype=dtype), dim=-1)
    return torch.randn(n, d, generator=g, dtype=dtype), teacher


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def test_embedding_and_global_match_loops():
    s, t = _pair()
    S, T = [_unit(v) for v in s.tolist()], t.tolist()
    l1 = sum(abs(a - b) for u, v in zip(S, T) for a, b in zip(u, v))
    sq = sum((a - b) ** 2 for u, v in zip(S, T) for a, b in zip(u, v))
    torch.testing.assert_close(oadp_embedding_loss(s, t), torch.tensor(l1 / s.numel(), dtype=torch.float64))
    torch.testing.assert_close(oadp_global_loss(s, t), torch.tensor(sq, dtype=torch.float64))
    torch.testing.assert_close(oadp_global_loss(s, t, reduction="none").mean(), torch.tensor(sq / s.numel(), dtype=torch.float64))


def test_relation_matches_a_pair_loop_and_takes_teachers_of_another_size():
    s, t = _pair(e=4)
    S, T = [_unit(v) for v in s.tolist()], t.tolist()
    n = len(S)
    total = sum((sum(a * b for a, b in zip(S[i], S[j])) - sum(a * b for a, b in zip(T[i], T[j]))) ** 2
                for i in range(n) for j in range(n))
    torch.testing.assert_close(oadp_relation_loss(s, t), torch.tensor(total / n**2, dtype=torch.float64))
    assert oadp_relation_loss(s, t, reduction="none").shape == (n, n)
    # leading dims are flattened into one set of blocks (pairs across images included)
    torch.testing.assert_close(oadp_relation_loss(s.reshape(1, n, -1), t.reshape(1, n, -1)), oadp_relation_loss(s, t))


def test_adaptive_boxes_by_hand():
    boxes = torch.tensor([[100.0, 100.0, 120.0, 110.0], [0.0, 0.0, 20.0, 10.0], [0.0, 0.0, 300.0, 200.0]])
    out = oadp_adaptive_boxes(boxes, (240, 320))
    side = math.sqrt(200 * 8)  # 40
    torch.testing.assert_close(out[0], torch.tensor([110 - side / 2, 105 - side / 2, 110 + side / 2, 105 + side / 2]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, side, side]))  # pushed inside from the top-left
    big = math.sqrt(300 * 200 * 8)  # longer than both sides: not shifted
    torch.testing.assert_close(out[2], torch.tensor([150 - big / 2, 100 - big / 2, 150 + big / 2, 100 + big / 2]))


def test_teacher_is_detached_and_twins_scale():
    s, t = _pair()
    t.requires_grad_(True)
    for twin, fn in ((OADPEmbeddingLoss, oadp_embedding_loss), (OADPRelationLoss, oadp_relation_loss),
                     (OADPGlobalLoss, oadp_global_loss)):
        torch.testing.assert_close(twin(loss_weight=8.0)(s, t), 8.0 * fn(s, t))
        student = s.clone().requires_grad_(True)
        fn(student, t).backward()
        assert t.grad is None and student.grad.abs().sum() > 0


def test_inputs_are_checked():
    s, t = _pair()
    with pytest.raises(ValueError, match="teacher_embeddings"):
        oadp_embedding_loss(s, t[:, :3])
    with pytest.raises(ValueError, match="same shape"):
        oadp_embedding_loss(s, t[:3])
    with pytest.raises(ValueError, match="same blocks"):
        oadp_relation_loss(s, t[:3])
    with pytest.raises(ValueError, match="teacher_embeddings"):
        oadp_global_loss(s, t[:3])
    with pytest.raises(TypeError, match="student_embeddings"):
        oadp_embedding_loss(s.long(), t)
    with pytest.raises(ValueError, match="boxes"):
        oadp_adaptive_boxes(s, (10, 10))


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_one_nan_gives_nan(side):
    for fn in (oadp_embedding_loss, oadp_relation_loss, oadp_global_loss):
        s, t = _pair()
        (s if side == "student" else t)[1, 2] = float("nan")
        assert torch.isnan(fn(s, t))


def test_empty_batch_is_a_zero_in_the_graph():
    for fn in (oadp_embedding_loss, oadp_relation_loss, oadp_global_loss):
        s, t = _pair(n=0)
        s.requires_grad_(True)
        loss = fn(s, t)
        assert loss.item() == 0.0
        loss.backward()
        assert s.grad is not None and not s.grad.any()
