"""ICD: parity with the official PyTorch release (mimic loss, identification loss, decoder layer, sine
embedding), hand cases, the sampler, the gate, checks, levels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kdimpl import multilevel_loss  # noqa: E402
from kdimpl.adapters import ICDDecoder, ICDInstanceEncoder  # noqa: E402
from kdimpl.losses.icd import (  # noqa: E402
    ICDLoss,
    icd_bypass,
    icd_identification_loss,
    icd_loss,
    icd_sample_instances,
    icd_value_mask,
)

FIXTURE = Path(__file__).parent / "fixtures" / "icd" / "official_icd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_mimic_loss_matches_official(official, temperature):
    student = official["values_student"].permute(1, 0, 2, 3).clone().requires_grad_(True)  # (S, N) -> (N, S)
    teacher = official["values_teacher"].permute(1, 0, 2, 3)
    loss = ICDLoss(temperature=temperature)(student, teacher, official["attention_logits"], official["real"])
    torch.testing.assert_close(loss, official[f"mimic_T{temperature}"], rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, official[f"mimic_grad_T{temperature}"].permute(1, 0, 2, 3), rtol=1e-4, atol=1e-9)


def test_megengine_normalisation_equation(official):
    # an equation check against our transcription of the MegEngine expression (MegEngine itself did not run)
    student = official["values_student"].permute(1, 0, 2, 3)
    teacher = official["values_teacher"].permute(1, 0, 2, 3)
    loss = icd_loss(student, teacher, official["attention_logits"], official["real"], normalisation="megengine")
    torch.testing.assert_close(loss, official["megengine_T1.0"], rtol=1e-5, atol=0)


@pytest.mark.parity
def test_identification_loss_matches_official(official):
    predictions = official["id_predictions"].permute(1, 0, 2).clone().requires_grad_(True)  # (Q, N) -> (N, Q)
    conf, reg = icd_identification_loss(predictions, official["id_targets"], official["id_real"], official["id_valid"])
    torch.testing.assert_close(conf, official["id_conf"], rtol=1e-5, atol=0)
    torch.testing.assert_close(reg, official["id_reg"], rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(conf + reg, predictions)
    torch.testing.assert_close(grad, official["id_grad"].permute(1, 0, 2), rtol=1e-4, atol=1e-8)


def _load_decoder(state):
    decoder = ICDDecoder(16, heads=4)
    c = 16
    w, b = state["matt.in_proj_weight"], state["matt.in_proj_bias"]
    mapping = {
        "query.weight": w[:c], "query.bias": b[:c], "key.weight": w[c:2 * c], "key.bias": b[c:2 * c],
        "value.weight": w[2 * c:], "value.bias": b[2 * c:],
        "out.weight": state["matt.out_proj.weight"], "out.bias": state["matt.out_proj.bias"],
        "pos_projector.weight": state["pos_projector.weight"], "pos_projector.bias": state["pos_projector.bias"],
        "ffn.0.weight": state["linear_in.weight"], "ffn.0.bias": state["linear_in.bias"],
        "ffn.2.weight": state["linear_out.weight"], "ffn.2.bias": state["linear_out.bias"],
    }
    for norm in ("norm1", "norm2"):
        mapping[f"{norm}.weight"], mapping[f"{norm}.bias"] = state[f"{norm}.weight"], state[f"{norm}.bias"]
    own = decoder.state_dict()
    own.update(mapping)
    decoder.load_state_dict(own)
    return decoder


@pytest.mark.parity
def test_decoder_layer_matches_official(official):
    decoder = _load_decoder(official["dec_state"])
    q, k, pos = (official[key].transpose(0, 1) for key in ("dec_q", "dec_k", "dec_pos"))
    decoded, logits, values = decoder(q, k, pos, official["dec_pad"])
    torch.testing.assert_close(decoded, official["dec_out"].transpose(0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, official["dec_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, official["dec_values"].transpose(0, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(decoder.values(k), official["dec_values_only"].transpose(0, 1), rtol=1e-5, atol=1e-6)
    assert torch.isinf(logits[1, ..., -4:]).all()


@pytest.mark.parity
def test_sine_embedding_matches_official(official):
    encoder = ICDInstanceEncoder(3, 8, scale_indicator=False)
    points = official["pos_points"]
    descriptor = encoder.descriptor(torch.zeros(points.shape[:2], dtype=torch.long), points, None, (1, 1))
    torch.testing.assert_close(descriptor[..., 3:], official["pos_embedding"], rtol=1e-5, atol=1e-5)


def test_hand_case_value_mask():
    # S = 2, one real instance with logits [0, ln 3]: attention [0.25, 0.75]; the fake one is left out
    logits = torch.tensor([[[[0.0, math.log(3.0)], [5.0, -5.0]]]])  # (1, 1, 2, 2)
    mask = icd_value_mask(logits, torch.tensor([[True, False]]))
    torch.testing.assert_close(mask, torch.tensor([[[0.25, 0.75]]]))
    # the loss is then the mask-weighted mean of the per-position errors
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[[[1.0, 1.0]], [[3.0, 3.0]]]])
    loss = icd_loss(s, t, logits, torch.tensor([[True, False]]), normalize=False)
    torch.testing.assert_close(loss, torch.tensor(0.25 * 1 + 0.75 * 9))


def test_image_without_instances_counts_in_the_mean():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 2, 4, generator=g), torch.randn(2, 6, 2, 4, generator=g)
    logits = torch.randn(2, 2, 3, 6, generator=g)
    real = torch.tensor([[True, False, False], [False, False, False]])
    per = icd_loss(s, t, logits, real, reduction="none")
    assert per.shape == (2, 2, 4) and not per[1].any()
    torch.testing.assert_close(icd_loss(s, t, logits, real), 0.5 * icd_loss(s[:1], t[:1], logits[:1], real[:1]))


def test_sampler_counts_and_rng():
    prior = torch.tensor([[[0.2, 0.3], [0.05, 0.05]], [[0.1, 0.1], [0.02, 0.02]]])
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 30.0, 30.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 0]), torch.zeros(0, dtype=torch.long)]
    out = icd_sample_instances(boxes, labels, (100, 200), size_prior=prior, rng=torch.Generator().manual_seed(0),
                               max_instances=10)
    again = icd_sample_instances(boxes, labels, (100, 200), size_prior=prior, rng=torch.Generator().manual_seed(0),
                                 max_instances=10)
    for a, b in zip(out, again):
        torch.testing.assert_close(a, b)
    b, lab, points, real, valid = out
    assert valid.sum(1).tolist() == [10, 1]  # min(max(1, 2 * 6), max(10, 2)) and max(1, 0)
    assert real.sum(1).tolist() == [2, 0]
    torch.testing.assert_close(b[0, 0], torch.tensor([0.05, 0.2, 0.3, 0.5]))
    assert lab[0, :2].tolist() == [1, 0]
    fake = b[valid & ~real]
    size = fake[:, 2:] - fake[:, :2]
    assert (size <= 0.7 + 1e-6).all() and (fake >= 0).all() and (fake <= 1).all()
    # reference points lie within 0.3 box sizes of the centre
    centre = (b[..., :2] + b[..., 2:]) / 2
    assert ((points - centre).abs() <= 0.3 * (b[..., 2:] - b[..., :2]) + 1e-6)[valid].all()


def test_encoder_and_decoder_shapes_and_gradients():
    g = torch.Generator().manual_seed(1)
    prior = torch.tensor([[[0.2, 0.3], [0.05, 0.05]]] * 4)
    boxes, labels, points, real, valid = icd_sample_instances(
        [torch.tensor([[10.0, 20.0, 60.0, 50.0]])] * 2, [torch.tensor([3])] * 2, (64, 96), size_prior=prior, rng=g)
    torch.manual_seed(0)
    encoder, decoder, decoder_student = ICDInstanceEncoder(4, 16), ICDDecoder(16, 4), ICDDecoder(16, 4)
    queries = encoder(labels, points, boxes, (64, 96))
    assert queries.shape == (2, 6, 16)
    t_feats, s_feats = torch.randn(2, 20, 16, generator=g), torch.randn(2, 20, 16, generator=g, requires_grad=True)
    decoded, logits, t_values = decoder(queries, t_feats, torch.randn(2, 20, 16, generator=g))
    targets = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    conf, reg = icd_identification_loss(decoder.predict(decoded), targets, real, valid)
    loss = conf + reg + 8.0 * icd_loss(decoder_student.values(icd_bypass(s_feats, 5000)), t_values, logits, real)
    loss.backward()
    assert s_feats.grad.abs().sum() > 0
    assert encoder.encoder[0].weight.grad is not None and decoder_student.value.weight.grad is not None
    assert decoder_student.query.weight.grad is None  # only the student's value projection is used


def test_bypass_gate():
    x = torch.ones(3, requires_grad=True)
    assert not icd_bypass(x, 999).requires_grad and icd_bypass(x, 1000).requires_grad
    assert icd_bypass(x, 50, bypass_iterations=10) is x


def test_checks():
    s = torch.randn(2, 6, 2, 4)
    logits = torch.randn(2, 2, 3, 6)
    real = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="attention_logits"):
        icd_loss(s, s, logits[..., :5], real)
    with pytest.raises(ValueError, match="instance_mask"):
        icd_loss(s, s, logits, real[:, :2])
    with pytest.raises(TypeError, match="student"):
        icd_loss(s.long(), s, logits, real)
    with pytest.raises(ValueError, match="normalisation"):
        icd_loss(s, s, logits, real, normalisation="global")
    with pytest.raises(ValueError, match="temperature"):
        icd_loss(s, s, logits, real, temperature=0.0)
    prior = torch.ones(2, 2, 2) * 0.1
    with pytest.raises(ValueError, match="gt_boxes"):
        icd_sample_instances([torch.tensor([[5.0, 5.0, 1.0, 9.0]])], [torch.tensor([0])], (10, 10), size_prior=prior)
    with pytest.raises(ValueError, match="gt_labels"):
        icd_sample_instances([torch.zeros(0, 4)], [], (10, 10), size_prior=prior)


@pytest.mark.parametrize("side", [0, 1])
def test_nan_in_gives_nan_out(side):
    inputs = [torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 3)]
    inputs[side][0, 1, 0, 0] = float("nan")
    assert torch.isnan(icd_loss(*inputs, torch.randn(1, 2, 2, 4), torch.tensor([[True, False]])))


def test_empty_batch():
    s = torch.zeros(0, 4, 2, 3, requires_grad=True)
    loss = icd_loss(s, torch.zeros(0, 4, 2, 3), torch.zeros(0, 2, 2, 4), torch.zeros(0, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert not s.grad.any()


def test_levels_in_one_line():
    # per-level sequences through multilevel_loss: the sum of the per-level losses
    g = torch.Generator().manual_seed(3)
    real = torch.tensor([[True, False], [True, True]])
    students = [torch.randn(2, s, 2, 4, generator=g) for s in (12, 6, 3)]
    teachers = [torch.randn(2, s, 2, 4, generator=g) for s in (12, 6, 3)]
    logits = [torch.randn(2, 2, 2, s, generator=g) for s in (12, 6, 3)]
    total = multilevel_loss(ICDLoss(), students, teachers, logits, instance_mask=real)
    expected = sum(icd_loss(s, t, a, real) for s, t, a in zip(students, teachers, logits))
    torch.testing.assert_close(total, expected)


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_mask_on_the_real_queries_equals_the_reference(scale):
    from kdimpl.losses import icd

    g = torch.Generator().manual_seed(5)
    logits = scale * torch.randn(3, 2, 6, 9, generator=g, dtype=torch.float64)
    real = torch.tensor([[True, False, True, False, False, False], [False] * 6, [False, False, True, False, True, False]])
    torch.testing.assert_close(icd_value_mask(logits, real, temperature=2.0), icd._value_mask(logits, real, 2.0))
