"""G-DetKD: SGFI and contrastive KD against hand formulas and todd's third-party implementation
(tests/kdimpl/fixtures/gdetkd/PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kdimpl import (
    GDetKDContrastiveLoss,
    GDetKDMemory,
    GDetKDSGFILoss,
    gdetkd_contrastive_loss,
    gdetkd_pool_levels,
    gdetkd_sgfi_loss,
)
from kdimpl.adapters import GDetKDLevelAttention
from kdimpl.ops import box_iou

FIXTURE = Path(__file__).parent / "fixtures" / "gdetkd" / "official_todd_gdetkd.pt"


def _fixture():
    return torch.load(FIXTURE)


def _attention_from_todd(state, channels=8):
    attention = GDetKDLevelAttention(channels, hidden_channels=6, embedding_channels=4, normalize_over="rois")
    mapped = {key.removeprefix("_").replace("tau", "temperature"): value for key, value in state.items()}
    attention.load_state_dict(mapped)
    return attention


def test_contrastive_matches_todd_over_three_steps_with_memory():
    official = _fixture()
    memory = GDetKDMemory()
    for step in range(3):
        case = official[f"ckd_step{step}"]
        student = case["preds"].reshape(2, 5, 8).clone().requires_grad_(True)
        teacher = case["targets"].reshape(2, 5, 8)
        loss = gdetkd_contrastive_loss(student, teacher, case["bboxes"], memory=memory.tensor())
        loss.backward()
        torch.testing.assert_close(loss.detach(), case["loss"])
        torch.testing.assert_close(student.grad.reshape(10, 8), case["grad"])
        student = case["preds"].reshape(2, 5, 8).clone().requires_grad_(True)
        loss = gdetkd_contrastive_loss(student, teacher, memory=memory.tensor())  # no overlap filter
        loss.backward()
        torch.testing.assert_close(loss.detach(), official[f"ckd_noboxes_step{step}"]["loss"])
        torch.testing.assert_close(student.grad.reshape(10, 8), official[f"ckd_noboxes_step{step}"]["grad"])
        memory.push(teacher)


def test_contrastive_module_twin_matches_todd():
    case = _fixture()["ckd_step0"]
    criterion = GDetKDContrastiveLoss()
    loss = criterion(case["preds"].reshape(2, 5, 8), case["targets"].reshape(2, 5, 8), case["bboxes"])
    torch.testing.assert_close(loss, case["loss"])


@pytest.mark.parametrize("key", ["sgfi", "sgfi_tau03"])
def test_sgfi_matches_todd(key):
    official = _fixture()
    base = official["sgfi"]
    attention = _attention_from_todd(base["state"])
    if key == "sgfi_tau03":
        with torch.no_grad():
            attention.temperature.fill_(0.3)
    student = base["pred"].clone().requires_grad_(True)
    loss = gdetkd_sgfi_loss(student, base["target"], attention_student=attention)
    loss.backward()
    torch.testing.assert_close(loss.detach(), official[key]["loss"])
    torch.testing.assert_close(student.grad, official[key]["grad"])
    if key == "sgfi":
        grads = {name.removeprefix("_").replace("tau", "temperature"): g for name, g in base["param_grads"].items()}
        for name, param in attention.named_parameters():
            torch.testing.assert_close(param.grad, grads[name])
    else:
        torch.testing.assert_close(attention.temperature.grad, official[key]["tau_grad"])


def _naive_contrastive(s, t, boxes, memory, gamma, threshold, with_positive):
    n, r, _ = s.shape
    s = F.normalize(s.reshape(n * r, -1), dim=-1)
    t = F.normalize(t.reshape(n * r, -1), dim=-1)
    keys = torch.cat([t, memory])
    total = 0.0
    for i in range(n * r):
        denominator = 0.0
        for j in range(keys.shape[0]):
            if j < n * r:
                same_image = i // r == j // r
                overlap = box_iou(boxes.reshape(-1, 4)[i:i + 1], boxes.reshape(-1, 4)[j:j + 1])[0, 0]
                if j == i:
                    if not with_positive:
                        continue
                elif same_image and overlap > threshold:
                    continue
            denominator = denominator + torch.exp(keys[j] @ s[i] / gamma)
        total = total - torch.log(torch.exp(t[i] @ s[i] / gamma) / denominator)
    return total / (n * r)


@pytest.mark.parametrize("with_positive", [False, True])
def test_contrastive_equals_naive_loop(with_positive):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 6, generator=g, dtype=torch.float64), torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    xy = torch.rand(2, 4, 2, generator=g, dtype=torch.float64) * 30
    boxes = torch.cat([xy, xy + 12], -1)
    boxes[:, 2] = boxes[:, 0] + 0.5
    memory = F.normalize(torch.randn(7, 6, generator=g, dtype=torch.float64), dim=-1)
    expected = _naive_contrastive(s, t, boxes, memory, 0.2, 0.5, with_positive)
    actual = gdetkd_contrastive_loss(s, t, boxes, memory=memory, temperature=0.2, positive_in_denominator=with_positive)
    torch.testing.assert_close(actual, expected)


def test_contrastive_roi_mask_and_lonely_roi():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    per_roi = gdetkd_contrastive_loss(s, t, roi_mask=mask, reduction="none")
    assert not per_roi[~mask].any()
    dense = gdetkd_contrastive_loss(s[:, :1].reshape(1, 2, 4), t[:, :1].reshape(1, 2, 4), reduction="none")
    kept = gdetkd_contrastive_loss(s, t, roi_mask=mask.clone().fill_(False) | torch.tensor([[True, False, False]] * 2),
                                   reduction="none")
    torch.testing.assert_close(kept[:, 0], dense[0])
    # one RoI and no memory: no negative, the loss is 0 and the gradient finite (todd: -inf)
    student = torch.randn(1, 1, 4, requires_grad=True)
    loss = gdetkd_contrastive_loss(student, torch.randn(1, 1, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(student.grad).all()


def test_memory_keeps_the_last_batches():
    memory = GDetKDMemory(size=2)
    assert memory.tensor() is None
    batches = [torch.full((1, 2, 3), float(k + 1)) for k in range(3)]
    for batch in batches:
        memory.push(batch)
    stored = memory.tensor()
    assert stored.shape == (4, 3)
    torch.testing.assert_close(stored, F.normalize(torch.cat([batches[2], batches[1]]).reshape(4, 3), dim=-1))
    memory.push(torch.randn(2, 2, 3), roi_mask=torch.tensor([[True, False], [False, False]]))
    assert memory.tensor().shape == (3, 3)


def test_sgfi_uniform_attention_is_the_level_mean():
    class Uniform(torch.nn.Module):
        def forward(self, student, teacher):
            return torch.full(student.shape[:2], 1.0 / student.shape[0], dtype=student.dtype)

    s, t = torch.randn(4, 3, 5, 7, 7, dtype=torch.float64), torch.randn(3, 5, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(gdetkd_sgfi_loss(s, t, attention_student=Uniform()), F.mse_loss(s.mean(0), t))
    # identical keys on every level give uniform weights in the real attention too
    attention = GDetKDLevelAttention(5, hidden_channels=4, embedding_channels=3).double()
    same = s[:1].expand(4, -1, -1, -1, -1)
    torch.testing.assert_close(attention(same, t), torch.full((4, 3), 0.25, dtype=torch.float64))


def test_sgfi_adapter_and_twin():
    adapter = torch.nn.Conv2d(6, 5, 1)
    attention = GDetKDLevelAttention(5, hidden_channels=4, embedding_channels=3)
    s, t = torch.randn(3, 2, 6, 7, 7), torch.randn(2, 5, 7, 7)
    adapted = adapter(s.flatten(0, 1)).unflatten(0, (3, 2))
    weights = attention(adapted, t)
    expected = F.mse_loss(torch.einsum("lrchw,lr->rchw", adapted, weights), t)
    torch.testing.assert_close(gdetkd_sgfi_loss(s, t, attention_student=attention, adapter_student=adapter), expected)
    twin = GDetKDSGFILoss(channels=5, hidden_channels=4, embedding_channels=3, activation=True)
    assert isinstance(twin.attention_student.embed[1], torch.nn.ReLU)
    assert {id(p) for p in twin.parameters()} == {id(p) for p in twin.attention_student.parameters()}
    assert twin(adapted.detach(), t).dim() == 0
    with pytest.raises(ValueError, match="attention_student"):
        gdetkd_sgfi_loss(s, t)
    with pytest.raises(ValueError, match="adapter_student"):
        gdetkd_sgfi_loss(s, t, attention_student=attention)


def test_pool_levels_stacks_every_level():
    features = [torch.randn(2, 3, 16 // 2**k, 24 // 2**k) for k in range(3)]
    boxes = torch.tensor([[[0.0, 0.0, 40.0, 30.0]], [[8.0, 8.0, 60.0, 50.0]]])
    pooled = gdetkd_pool_levels(features, boxes, (64, 96))
    assert pooled.shape == (3, 2, 3, 7, 7)
    attention = GDetKDLevelAttention(3, hidden_channels=4, embedding_channels=2)
    assert gdetkd_sgfi_loss(pooled, pooled[1].detach(), attention_student=attention).dim() == 0


def test_input_checks():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="rois has 2 boxes per image"):
        gdetkd_contrastive_loss(s, t, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="rois"):
        gdetkd_contrastive_loss(s, t, torch.tensor([[[0.0, 0, 1, 1]] * 3, [[2.0, 0, 1, 1]] * 3]))
    with pytest.raises(ValueError, match="rois has 1 images"):
        gdetkd_contrastive_loss(s, t, [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="same shape"):
        gdetkd_contrastive_loss(s, t[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        gdetkd_contrastive_loss(s, t, temperature=0.0)
    with pytest.raises(TypeError, match="memory"):
        gdetkd_contrastive_loss(s, t, memory=torch.ones(3, 4, dtype=torch.long))
    assert torch.isnan(gdetkd_contrastive_loss(s, t, memory=torch.full((2, 4), float("nan"))))


def test_sgfi_twin_with_todds_softmax_axis_matches_todd():
    official = _fixture()["sgfi"]
    twin = GDetKDSGFILoss(channels=8, hidden_channels=6, embedding_channels=4, normalize_over="rois")
    twin.attention_student.load_state_dict(_attention_from_todd(official["state"]).state_dict())
    torch.testing.assert_close(twin(official["pred"], official["target"]).detach(), official["loss"])
    weights = twin.attention_student(official["pred"], official["target"])
    torch.testing.assert_close(weights.sum(1), torch.ones(3))  # todd: over the RoIs, not the levels
    with pytest.raises(ValueError, match="normalize_over"):
        GDetKDLevelAttention(8, normalize_over="batch")


def test_contrastive_empty_memory_is_no_memory():
    s = torch.randn(1, 1, 4, requires_grad=True)
    t = torch.randn(1, 1, 4)
    loss = gdetkd_contrastive_loss(s, t, memory=torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()
    only_memory = gdetkd_contrastive_loss(s, t, memory=torch.randn(3, 4))
    assert only_memory.item() != 0.0
