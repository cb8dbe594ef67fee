"""ViLD: both losses against per-region loops of the official head's arithmetic (no runnable official code: TensorFlow)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kdimpl import ViLDImageLoss, ViLDTextLoss, vild_image_loss, vild_region_logits, vild_text_loss  # noqa: E402


def _inputs(seed=0, n=2, r=5, c=4, d=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(n, r, d, generator=g, dtype=dtype)
    text = torch.randn(c, d, generator=g, dtype=dtype)
    background = torch.randn(d, generator=g, dtype=dtype)
    labels = torch.randint(0, c + 1, (n, r), generator=g)
    clip = 0.5 * regions + torch.randn(n, r, d, generator=g, dtype=dtype)
    valid = torch.rand(n, r, generator=g) > 0.3
    return regions, text, background, labels, clip, valid


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_text_matches_a_per_region_loop():
    regions, text, background, labels, _, _ = _inputs()
    tau = 0.05
    total, count = 0.0, 0
    for i in range(regions.shape[0]):
        for j in range(regions.shape[1]):
            e = regions[i, j].tolist()
            z = [_cos(e, background.tolist())] + [_cos(e, t) for t in text.tolist()]
            z = [v / tau for v in z]
            top = max(z)
            log_sum = top + math.log(sum(math.exp(v - top) for v in z))
            total += log_sum - z[int(labels[i, j])]
            count += 1
    ours = vild_text_loss(regions, text, labels, background, temperature=tau)
    torch.testing.assert_close(ours, torch.tensor(total / count, dtype=torch.float64))


def test_official_scaling_background_first_and_times_100():
    # the official head: [cos(e, bg), cos(e, t_1), ...] * 100, softmax cross-entropy averaged over RoIs
    regions, text, background, labels, _, _ = _inputs(seed=1)
    unit = torch.nn.functional.normalize
    logits = torch.cat([unit(regions, dim=-1) @ unit(background, dim=0)[:, None], unit(regions, dim=-1) @ unit(text, dim=-1).T], -1)
    expected = torch.nn.functional.cross_entropy((100.0 * logits).flatten(0, 1), labels.flatten())
    torch.testing.assert_close(vild_text_loss(regions, text, labels, background), expected)
    torch.testing.assert_close(vild_region_logits(regions, text, background), 100.0 * logits)


def test_background_last_is_the_same_loss_with_labels_moved():
    regions, text, background, labels, _, _ = _inputs(seed=2)
    c = text.shape[0]
    moved = torch.where(labels == 0, torch.full_like(labels, c), labels - 1)
    torch.testing.assert_close(
        vild_text_loss(regions, text, moved, background, background_index=-1),
        vild_text_loss(regions, text, labels, background),
    )


def test_zero_text_embeddings_give_logit_zero_as_the_official_rare_mask():
    regions, text, background, labels, _, _ = _inputs(seed=3)
    text[1] = 0.0
    logits = vild_region_logits(regions, text, background)
    assert torch.equal(logits[..., 2], torch.zeros_like(logits[..., 2]))
    assert torch.isfinite(vild_text_loss(regions, text, labels, background))


def test_text_reductions_and_gradients():
    regions, text, background, labels, _, _ = _inputs()
    regions.requires_grad_(True)
    text.requires_grad_(True)
    background.requires_grad_(True)
    per_region = vild_text_loss(regions, text, labels, background, reduction="none")
    assert per_region.shape == labels.shape
    torch.testing.assert_close(vild_text_loss(regions, text, labels, background, reduction="sum"), per_region.sum())
    torch.testing.assert_close(vild_text_loss(regions, text, labels, background), per_region.mean())
    per_region.sum().backward()
    assert text.grad is None and background.grad.abs().sum() > 0 and regions.grad.abs().sum() > 0


def test_twin_owns_the_background_embedding():
    regions, text, _, labels, _, _ = _inputs(dtype=torch.float32)
    criterion = ViLDTextLoss(embed_dim=7, loss_weight=2.0)
    (embedding,) = list(criterion.parameters())
    assert embedding.shape == (7,) and "background_embedding=Parameter(shape=(7,), dtype=torch.float32)" in repr(criterion)
    criterion(regions, text, labels).backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    torch.testing.assert_close(criterion(regions, text, labels),
                               2.0 * vild_text_loss(regions, text, labels, embedding.detach()))
    other = torch.randn(7)
    torch.testing.assert_close(criterion(regions, text, labels, background_embedding=other), 2.0 * vild_text_loss(regions, text, labels, other))


def test_text_inputs_are_checked():
    regions, text, background, labels, _, _ = _inputs()
    with pytest.raises(ValueError, match="background_embedding is required"):
        vild_text_loss(regions, text, labels)
    with pytest.raises(ValueError, match="labels must lie in"):
        vild_text_loss(regions, text, labels + text.shape[0], background)
    with pytest.raises(TypeError, match="labels"):
        vild_text_loss(regions, text, labels.double(), background)
    with pytest.raises(ValueError, match="labels must have the shape"):
        vild_text_loss(regions, text, labels[:, :2], background)
    with pytest.raises(ValueError, match="teacher_text_embeddings"):
        vild_text_loss(regions, text[:, :3], labels, background)
    with pytest.raises(ValueError, match="background_embedding"):
        vild_text_loss(regions, text, labels, background[:3])
    with pytest.raises(ValueError, match="temperature"):
        vild_text_loss(regions, text, labels, background, temperature=0.0)
    with pytest.raises(ValueError, match="background_index"):
        vild_text_loss(regions, text, labels, background, background_index=9)


def test_image_matches_a_per_region_loop():
    regions, _, _, _, clip, valid = _inputs()
    total = 0.0
    for i in range(regions.shape[0]):
        for j in range(regions.shape[1]):
            if valid[i, j]:
                e, v = regions[i, j].tolist(), clip[i, j].tolist()
                ne, nv = math.sqrt(sum(x * x for x in e)), math.sqrt(sum(x * x for x in v))
                total += sum(abs(x / ne - y / nv) for x, y in zip(e, v))
    ours = vild_image_loss(regions, clip, valid)
    torch.testing.assert_close(ours, torch.tensor(total / int(valid.sum()), dtype=torch.float64))
    # the official arithmetic: absolute differences summed over valid elements / (M * D), times D
    d = regions.shape[-1]
    torch.testing.assert_close(vild_image_loss(regions, clip, valid, reduction="sum") / (int(valid.sum()) * d) * d, ours)


def test_image_without_mask_divides_by_every_proposal_and_none_keeps_elements():
    regions, _, _, _, clip, valid = _inputs(seed=4)
    none = vild_image_loss(regions, clip, valid, reduction="none")
    assert none.shape == regions.shape and not none[~valid].any()
    full = vild_image_loss(regions, clip)
    torch.testing.assert_close(full, vild_image_loss(regions, clip, reduction="sum") / (regions.shape[0] * regions.shape[1]))
    torch.testing.assert_close(ViLDImageLoss(loss_weight=0.5)(regions, clip), 0.5 * full)


def test_image_teacher_is_detached_and_masked_regions_take_no_gradient():
    regions, _, _, _, clip, valid = _inputs()
    regions.requires_grad_(True)
    clip.requires_grad_(True)
    vild_image_loss(regions, clip, valid).backward()
    assert clip.grad is None and not regions.grad[~valid].any() and regions.grad[valid].abs().sum() > 0


def test_image_inputs_are_checked():
    regions, _, _, _, clip, valid = _inputs()
    with pytest.raises(ValueError, match="teacher_embeddings"):
        vild_image_loss(regions, clip[:, :3])
    with pytest.raises(ValueError, match="valid_mask"):
        vild_image_loss(regions, clip, valid[:, :3])
    with pytest.raises(TypeError, match="student_embeddings"):
        vild_image_loss(regions.long(), clip)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_one_nan_gives_nan(side):
    regions, text, background, labels, clip, valid = _inputs()
    valid[0, 0] = True
    (regions if side == "student" else clip)[0, 0, 0] = float("nan")
    assert torch.isnan(vild_image_loss(regions, clip, valid))
    regions, text, background, labels, clip, valid = _inputs()
    (regions if side == "student" else text)[0, 0] = float("nan")
    assert torch.isnan(vild_text_loss(regions, text, labels, background))


def test_empty_batch_is_a_zero_in_the_graph():
    regions, text, background, labels, clip, valid = _inputs(n=0)
    regions.requires_grad_(True)
    loss = vild_text_loss(regions, text, labels, background) + vild_image_loss(regions, clip, valid)
    assert loss.item() == 0.0
    loss.backward()
    assert not regions.grad.any()
