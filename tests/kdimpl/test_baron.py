"""BARON: the contrastive terms against a per-query loop, and parity with wusize/ovdet@d74a20c (fixtures in fixtures/baron/)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (  # noqa: E402
    BARONBagLoss,
    BARONRegionLoss,
    baron_bag_loss,
    baron_neighbor_boxes,
    baron_neighbor_probabilities,
    baron_region_loss,
)
from kdimpl.losses.baron import _bag_geometry  # noqa: E402

from .cases.baron import tiny_text_encoder  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "baron"


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURES / "official_baron.pt")


def _padded(sequences):
    length = max(s.shape[0] for s in sequences)
    words = torch.zeros(len(sequences), length, sequences[0].shape[1])
    mask = torch.zeros(len(sequences), length, dtype=torch.bool)
    for i, s in enumerate(sequences):
        words[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return words, mask


def _queue(call, student_name, teacher_name):
    q_s, q_t = call["queues"][student_name], call["queues"][teacher_name]
    if q_s.shape[0] == 0:
        return {}
    return {"student_queue": q_s[:, :-1], "teacher_queue": q_t[:, :-1], "queue_image_ids": q_t[:, -1].long()}


@pytest.mark.parametrize("index", [0, 1])  # the second call has the first call's queue
def test_bag_parity_with_the_official_get_losses(fx, index):
    call = fx["calls"][index]
    words, mask = _padded(call["sequences"])
    words.requires_grad_(True)
    loss = baron_bag_loss(
        words, call["teacher_bag"], mask, call["bag_ids_float32"].long(), call["bag_image_ids"],
        text_encoder_student=tiny_text_encoder, **_queue(call, "clip_text_features", "clip_image_features"),
    )
    torch.testing.assert_close(loss, call["loss_bag"], rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(loss, words)
    expected = torch.zeros_like(words)
    for i, g in enumerate(call["grad_sequences"]):
        expected[i, : g.shape[0]] = g
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("index", [0, 1])
def test_region_parity_with_the_official_get_losses(fx, index):
    call = fx["calls"][index]
    tokens = [t.clone().requires_grad_(True) for t in call["tokens"]]
    counts = call["region_word_counts"].tolist()
    # the mean of each region's word tokens: the sequences' tokens are their regions' words in order
    per_region = [part.mean(0) for part in torch.cat(tokens).split(counts)]
    student = torch.nn.functional.normalize(torch.stack(per_region), dim=-1)
    loss = baron_region_loss(
        student, call["teacher_region"], call["region_ids_float32"].long(), call["region_image_ids"],
        **_queue(call, "clip_word_features", "clip_patch_features"),
    )
    torch.testing.assert_close(loss, call["loss_single"], rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(loss, tokens)
    for ours, theirs in zip(grads, call["grad_tokens"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def _embeddings(seed=0, q=6, d=5, k=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(q, d, generator=g, dtype=dtype), torch.randn(q, d, generator=g, dtype=dtype)
    qs, qt = torch.randn(k, d, generator=g, dtype=dtype), torch.randn(k, d, generator=g, dtype=dtype)
    ids = torch.tensor([0, 1, 1, 2, 3, 3])[:q]
    image_ids = torch.tensor([0, 0, 1, 1, 2, 2])[:q]
    queue_image_ids = torch.tensor([1, 5, 2, 7])[:k]
    return s, t, qs, qt, ids, image_ids, queue_image_ids


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_region_loss_matches_a_per_query_loop():
    s, t, qs, qt, ids, image_ids, queue_image_ids = _embeddings()
    tau = 0.1
    S, T = [_unit(v) for v in s.tolist()], [_unit(v) for v in t.tolist()]
    QS, QT = [_unit(v) for v in qs.tolist()], [_unit(v) for v in qt.tolist()]

    def nll(query, keys, i, allowed):
        logits = [sum(a * b for a, b in zip(query, key)) / tau for key, ok in zip(keys, allowed) if ok]
        positive = sum(a * b for a, b in zip(query, keys[i])) / tau
        return math.log(sum(math.exp(v) for v in logits)) - positive

    total = 0.0
    for i in range(len(S)):
        allowed = [j == i or ids[j] != ids[i] for j in range(len(S))]
        allowed += [int(queue_image_ids[j]) != int(image_ids[i]) for j in range(len(QS))]
        total += 0.5 * (nll(S[i], T + QT, i, allowed) + nll(T[i], S + QS, i, allowed))
    ours = baron_region_loss(s, t, ids, image_ids, student_queue=qs, teacher_queue=qt, queue_image_ids=queue_image_ids,
                             temperature=tau)
    torch.testing.assert_close(ours, torch.tensor(total / len(S), dtype=torch.float64))


def test_bag_loss_is_the_region_loss_of_the_encoded_bags():
    g = torch.Generator().manual_seed(3)
    words, teacher = torch.randn(6, 4, 5, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 4, generator=g) > 0.4
    mask[:, 0] = True
    ids = torch.tensor([0, 0, 1, 2, 3, 4])
    encoded = tiny_text_encoder(words, mask)
    torch.testing.assert_close(
        baron_bag_loss(words, teacher, mask, ids, text_encoder_student=tiny_text_encoder, reduction="none"),
        baron_region_loss(encoded, teacher, ids, temperature=1 / 30, reduction="none"),
    )


def test_reductions_and_gradients():
    s, t, qs, qt, ids, image_ids, queue_image_ids = _embeddings()
    s.requires_grad_(True)
    t.requires_grad_(True)
    qs.requires_grad_(True)
    none = baron_region_loss(s, t, ids, reduction="none", student_queue=qs, teacher_queue=qt)
    assert none.shape == (6,)
    torch.testing.assert_close(baron_region_loss(s, t, ids, student_queue=qs, teacher_queue=qt), none.mean())
    none.sum().backward()
    assert t.grad is None and qs.grad is None and s.grad.abs().sum() > 0


def test_twins_own_the_encoder_and_scale():
    encoder = torch.nn.Linear(5, 6).double()
    g = torch.Generator().manual_seed(1)
    words, teacher = torch.randn(4, 3, 5, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)

    def pooled(w, m):
        return encoder(w).mean(1)

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = encoder

        def forward(self, w, m):
            return pooled(w, m)

    criterion = BARONBagLoss(text_encoder_student=Pooled(), loss_weight=2.0)
    assert len(list(criterion.parameters())) == 2
    torch.testing.assert_close(criterion(words, teacher), 2.0 * baron_bag_loss(words, teacher, text_encoder_student=pooled))
    s, t, *_ = _embeddings()
    torch.testing.assert_close(BARONRegionLoss(loss_weight=0.1)(s, t), 0.1 * baron_region_loss(s, t))


def test_inputs_are_checked():
    s, t, qs, qt, ids, image_ids, queue_image_ids = _embeddings()
    with pytest.raises(ValueError, match="text_encoder_student is required"):
        baron_bag_loss(torch.randn(6, 3, 5), t)
    with pytest.raises(ValueError, match="one embedding per bag"):
        baron_bag_loss(torch.randn(6, 3, 5), t, text_encoder_student=lambda w, m: w)
    with pytest.raises(ValueError, match="student_queue and teacher_queue"):
        baron_region_loss(s, t, student_queue=qs)
    with pytest.raises(ValueError, match="teacher_queue"):
        baron_region_loss(s, t, student_queue=qs, teacher_queue=qt[:, :3])
    with pytest.raises(ValueError, match="needs image_ids"):
        baron_region_loss(s, t, student_queue=qs, teacher_queue=qt, queue_image_ids=queue_image_ids)
    with pytest.raises(ValueError, match="region_ids"):
        baron_region_loss(s, t, ids[:3])
    with pytest.raises(TypeError, match="region_ids"):
        baron_region_loss(s, t, ids.double())
    with pytest.raises(ValueError, match="temperature"):
        baron_region_loss(s, t, temperature=-1.0)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_one_nan_gives_nan(side):
    s, t, *_ = _embeddings()
    (s if side == "student" else t)[2, 1] = float("nan")
    assert torch.isnan(baron_region_loss(s, t))


def test_empty_batch_is_a_zero_in_the_graph():
    s, t, qs, qt, *_ = _embeddings(q=0)
    s.requires_grad_(True)
    loss = baron_region_loss(s, t, student_queue=qs, teacher_queue=qt)
    words = torch.zeros(0, 3, 5, requires_grad=True)
    loss = loss + baron_bag_loss(words, torch.zeros(0, 6), text_encoder_student=tiny_text_encoder)
    assert loss.item() == 0.0
    loss.backward()
    assert not s.grad.any() and words.grad is not None


@pytest.fixture(scope="module")
def sampling():
    return torch.load(FIXTURES / "official_neighborhood.pt")


def test_neighbor_probabilities_match_the_official_sampler(sampling):
    _, probabilities = baron_neighbor_probabilities(sampling["boxes"], sampling["image_size"])
    torch.testing.assert_close(probabilities, sampling["probabilities"].to(probabilities.dtype), rtol=1e-5, atol=1e-7)


def test_bag_boxes_match_the_official_sampler(sampling):
    templates, _ = baron_neighbor_probabilities(sampling["boxes"], sampling["image_size"])
    for box_templates, official in zip(templates, sampling["samples"]):
        assert len(official["box_ids"]) == len(official["boxes"])
        for ids, boxes, normed, spanned in zip(official["box_ids"], official["boxes"], official["normed"], official["spanned"]):
            ours_boxes, ours_normed, ours_spanned = _bag_geometry(box_templates, ids, sampling["image_size"])
            torch.testing.assert_close(ours_boxes, boxes, rtol=1e-5, atol=1e-3)
            torch.testing.assert_close(ours_normed, normed, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours_spanned, spanned, rtol=1e-5, atol=1e-3)


def test_sampled_bags_keep_the_region_and_draw_distinct_groups_and_orders(sampling):
    image_size = sampling["image_size"]
    _, probabilities = baron_neighbor_probabilities(sampling["boxes"], image_size)
    for box, p in zip(sampling["boxes"], probabilities):
        bags = baron_neighbor_boxes(box, image_size, max_groups=3, rng=torch.Generator().manual_seed(0))
        groups = {tuple(sorted(ids)) for *_, ids in bags}
        valid = int((p > 0).sum()) - 1
        assert len(groups) == min(3, math.factorial(valid))
        for boxes, normed, spanned, ids in bags:
            assert 4 in ids and all(p[i] > 0 for i in ids)
            assert normed.min() >= -1e-6 and normed.max() <= 1 + 1e-6
            clipped = torch.minimum(box.clamp(min=0), torch.tensor([640.0, 480.0, 640.0, 480.0]))
            torch.testing.assert_close(boxes[ids.index(4)], clipped)  # the region itself, clipped to the image
        again = baron_neighbor_boxes(box, image_size, max_groups=3, rng=torch.Generator().manual_seed(0))
        assert [b[3] for b in again] == [b[3] for b in bags]
