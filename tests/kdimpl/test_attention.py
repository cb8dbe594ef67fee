"""kdimpl.attention against naive loops over images, positions and channels (Python floats)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kdimpl.attention import channel_attention, spatial_attention


def naive_softmax(values, temperature):
    top = max(values)
    exps = [math.exp((v - top) / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def naive_spatial(features, temperature, scale=True):
    n, c, h, w = features.shape
    f = features.double().tolist()
    out = []
    for i in range(n):
        energy = [sum(abs(f[i][k][y][x]) for k in range(c)) / c for y in range(h) for x in range(w)]
        probs = naive_softmax(energy, temperature)
        probs = [p * h * w if scale else p for p in probs]
        out.append([probs[y * w : (y + 1) * w] for y in range(h)])
    return torch.tensor(out, dtype=torch.float64)


def naive_channel(features, temperature, scale=True):
    n, c, h, w = features.shape
    f = features.double().tolist()
    out = []
    for i in range(n):
        energy = [sum(abs(f[i][k][y][x]) for y in range(h) for x in range(w)) / (h * w) for k in range(c)]
        out.append([p * c if scale else p for p in naive_softmax(energy, temperature)])
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def features():
    return torch.randn(2, 5, 3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("scale", [True, False])
def test_spatial_attention_matches_the_loop(features, temperature, scale):
    result = spatial_attention(features, temperature, scale=scale)
    assert result.shape == (2, 3, 7)
    torch.testing.assert_close(result, naive_spatial(features, temperature, scale))
    expected_total = 3 * 7 if scale else 1.0
    torch.testing.assert_close(result.sum(dim=(1, 2)), torch.full((2,), expected_total, dtype=torch.float64))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("scale", [True, False])
def test_channel_attention_matches_the_loop(features, temperature, scale):
    result = channel_attention(features, temperature, scale=scale)
    assert result.shape == (2, 5)
    torch.testing.assert_close(result, naive_channel(features, temperature, scale))
    torch.testing.assert_close(result.sum(dim=1), torch.full((2,), 5.0 if scale else 1.0, dtype=torch.float64))


def test_attention_is_per_image_and_sign_blind(features):
    # Each image is normalised on its own; the maps only see |F|.
    torch.testing.assert_close(spatial_attention(features[1:]), spatial_attention(features)[1:])
    torch.testing.assert_close(spatial_attention(-features), spatial_attention(features))
    torch.testing.assert_close(channel_attention(-features), channel_attention(features))


def test_constant_features_give_uniform_attention():
    constant = torch.full((1, 4, 3, 6), -2.0)
    torch.testing.assert_close(spatial_attention(constant), torch.ones(1, 3, 6))
    torch.testing.assert_close(channel_attention(constant), torch.ones(1, 4))


def test_large_magnitudes_stay_finite():
    big = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(1)) * 1e4
    for result in (spatial_attention(big, 0.1), channel_attention(big, 0.1)):
        assert torch.isfinite(result).all()


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(features, half):
    x = features.to(half)
    spatial, channel = spatial_attention(x), channel_attention(x)
    assert spatial.dtype == torch.float32 and channel.dtype == torch.float32
    torch.testing.assert_close(spatial, naive_spatial(x.float(), 0.5).float(), rtol=1e-5, atol=1e-5)


def test_nan_reaches_only_its_image():
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    x[1, 0, 2, 2] = float("nan")
    for result in (spatial_attention(x), channel_attention(x)):
        assert torch.isfinite(result[0]).all() and torch.isnan(result[1]).all()


def test_empty_batch_gives_empty_maps_in_the_graph():
    x = torch.zeros(0, 3, 4, 5, requires_grad=True)
    spatial, channel = spatial_attention(x), channel_attention(x)
    assert spatial.shape == (0, 4, 5) and channel.shape == (0, 3)
    (spatial.sum() + channel.sum()).backward()
    assert x.grad is not None and x.grad.shape == x.shape
