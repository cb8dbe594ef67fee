"""DSIG: parity with the official utilities, a per-image loop oracle, hand cases, checks, levels."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kdimpl import multilevel_loss  # noqa: E402
from kdimpl.losses.dsig import (  # noqa: E402
    DSIGGraphLoss,
    DSIGLogitLoss,
    dsig_graph_loss,
    dsig_logit_loss,
    dsig_mine_background,
    dsig_pad_nodes,
)

FIXTURE = Path(__file__).parent / "fixtures" / "dsig" / "official_dsig.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _split(x, counts):
    return list(torch.split(x, counts))


def _padded(official, fg_student=None, bg_student=None):
    fg_s = official["fg_student"] if fg_student is None else fg_student
    bg_s = official["bg_student"] if bg_student is None else bg_student
    s, fg, bg = dsig_pad_nodes(_split(fg_s, official["num_fg"]), _split(bg_s, official["num_bg"]))
    t, _, _ = dsig_pad_nodes(_split(official["fg_teacher"], official["num_fg"]),
                             _split(official["bg_teacher"], official["num_bg"]))
    logits, _, _ = dsig_pad_nodes(_split(torch.zeros(sum(official["num_fg"]), 6), official["num_fg"]),
                                  _split(official["bg_teacher_logits"], official["num_bg"]))
    return s, t, fg, bg, logits


@pytest.mark.parity
def test_graph_loss_matches_official(official):
    fg_s = official["fg_student"].clone().requires_grad_(True)
    bg_s = official["bg_student"].clone().requires_grad_(True)
    s, t, fg, bg, logits = _padded(official, fg_s, bg_s)
    options = dict(background_index=-1, mining_threshold=official["mining_threshold"],
                   adaptive_bg_weight=official["adaptive_bg_weight"])
    loss = DSIGGraphLoss(**options)(s, t, fg, bg, logits)
    torch.testing.assert_close(loss, official["total"], rtol=1e-5, atol=0)
    grad_fg, grad_bg = torch.autograd.grad(loss, (fg_s, bg_s))
    torch.testing.assert_close(grad_fg, official["grad_fg"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grad_bg, official["grad_bg"], rtol=1e-4, atol=1e-7)
    # each term on its own (the fixture stores them unweighted)
    only = dict(edge_weight=0.0, fg_weight=0.0, bg_weight=0.0)
    for key, weight in (("edge", "edge_weight"), ("fg", "fg_weight"), ("bg", "bg_weight")):
        term = dsig_graph_loss(s.detach(), t, fg, bg, logits, **options, **{**only, weight: 1.0})
        torch.testing.assert_close(term, official[key], rtol=1e-5, atol=0)
    mined = dsig_mine_background(logits, bg, mining_threshold=official["mining_threshold"], background_index=-1)
    for i, (index, n_fg) in enumerate(zip(official["mined"], official["num_fg"])):
        assert mined[i].nonzero().flatten().tolist() == (index + n_fg).tolist()


@pytest.mark.parity
def test_logit_loss_matches_official(official):
    for temperature, value, grad in zip(official["temperatures"], official["kl"], official["kl_grads"]):
        student = official["logit_student"].clone().requires_grad_(True)
        loss = DSIGLogitLoss(temperature=temperature)(student, official["logit_teacher"])
        torch.testing.assert_close(loss, value, rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.autograd.grad(loss, student)[0], grad, rtol=1e-4, atol=1e-8)


def test_logit_normalisations():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 81, generator=g), torch.randn(4, 81, generator=g)
    kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="none")
    torch.testing.assert_close(dsig_logit_loss(s, t), kl.mean())
    torch.testing.assert_close(dsig_logit_loss(s, t, normalisation="batchmean"), kl.sum() / 4)
    torch.testing.assert_close(dsig_logit_loss(s, t, reduction="none"), kl)
    with pytest.raises(ValueError, match="normalisation"):
        dsig_logit_loss(s, t, normalisation="sum")


def _loop_oracle(s, t, fg, bg, logits, thr, alpha, weights, background):
    """The equations per image with index lists (the official loop structure)."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(s.shape[0]):
        f_idx, b_idx = fg[i].nonzero().flatten(), bg[i].nonzero().flatten()
        ce = -torch.log_softmax(logits[i, b_idx].double(), -1)[:, background]
        nodes = torch.cat([f_idx, b_idx[ce >= thr]])
        vs, vt = s[i, nodes].flatten(1).double(), t[i, nodes].flatten(1).double()
        edge = 0.5 * (F.cosine_similarity(vs[:, None], vs[None], dim=-1, eps=1e-12)
                      - F.cosine_similarity(vt[:, None], vt[None], dim=-1, eps=1e-12)).square().mean() if len(nodes) else 0
        fg_term = (s[i, f_idx] - t[i, f_idx]).double().square().mean() if len(f_idx) else 0
        bg_term = (alpha * len(f_idx) / len(b_idx) * (s[i, b_idx] - t[i, b_idx]).double().square().mean()
                   if len(b_idx) else 0)
        total = total + weights[0] * edge + weights[1] * fg_term + weights[2] * bg_term
    return total


@pytest.mark.parametrize("background_index", [0, -1])
def test_graph_loss_equals_a_per_image_loop(background_index):
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(3, 9, 2, 3, 3, generator=g), torch.randn(3, 9, 2, 3, 3, generator=g)
    fg = torch.zeros(3, 9, dtype=torch.bool)
    bg = torch.zeros(3, 9, dtype=torch.bool)
    fg[0, :3], bg[0, 3:9] = True, True
    fg[1, :1], bg[1, 1:5] = True, True  # padding rows 5..8
    bg[2, :4] = True  # no foreground
    logits = 2 * torch.randn(3, 9, 4, generator=g)
    loss = dsig_graph_loss(s, t, fg, bg, logits, background_index=background_index, edge_weight=1.3,
                           fg_weight=0.7, bg_weight=0.2, adaptive_bg_weight=3.0, mining_threshold=1.0)
    expected = _loop_oracle(s, t, fg, bg, logits, 1.0, 3.0, (1.3, 0.7, 0.2), background_index)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)
    per_image = dsig_graph_loss(s, t, fg, bg, logits, background_index=background_index, reduction="none")
    assert per_image.shape == (3,)
    torch.testing.assert_close(per_image.sum(), dsig_graph_loss(s, t, fg, bg, logits, background_index=background_index))


def test_hand_case_orthogonal_teacher_parallel_student():
    # two foreground nodes: teacher orthogonal (cos 0), student parallel (cos 1): 0.5 * mean([0, 1, 1, 0])
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    fg, bg = torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.bool)
    edge = dsig_graph_loss(s, t, fg, bg, edge_weight=1.0, fg_weight=0.0, bg_weight=0.0)
    torch.testing.assert_close(edge, torch.tensor(0.25))


def test_without_teacher_logits_the_graph_has_only_foreground():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 5, 6, generator=g), torch.randn(1, 5, 6, generator=g)
    fg = torch.tensor([[True, True, False, False, False]])
    bg = ~fg
    only_edges = dict(fg_weight=0.0, bg_weight=0.0, edge_weight=1.0)
    never_mined = torch.zeros(1, 5, 3)
    never_mined[..., 0] = 50.0  # the teacher is sure these are background
    torch.testing.assert_close(dsig_graph_loss(s, t, fg, bg, **only_edges),
                               dsig_graph_loss(s, t, fg, bg, never_mined, **only_edges))
    torch.testing.assert_close(dsig_graph_loss(s, t, fg, bg, **only_edges),
                               dsig_graph_loss(s[:, :2], t[:, :2], fg[:, :2], bg[:, :2], **only_edges))


def test_images_without_foreground_or_background_give_finite_zero_terms():
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 4)
    fg = torch.tensor([[False, False, False], [True, True, False]])
    bg = torch.tensor([[True, True, False], [False, False, False]])
    logits = torch.randn(2, 3, 3)
    loss = dsig_graph_loss(s, t, fg, bg, logits, reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(s.grad).all()
    # image 0: no foreground, so the adaptive weight alpha * 0 / 2 zeroes its background node term
    nodes_only = dsig_graph_loss(s, t, fg, bg, logits, edge_weight=0.0, reduction="none")
    assert nodes_only[0] == 0 and nodes_only[1] > 0


def test_pad_nodes():
    nodes, fg, bg = dsig_pad_nodes([torch.ones(2, 3), torch.ones(0, 3)], [2 * torch.ones(1, 3), 3 * torch.ones(2, 3)])
    assert nodes.shape == (2, 3, 3)
    assert fg.tolist() == [[True, True, False], [False, False, False]]
    assert bg.tolist() == [[False, False, True], [True, True, False]]
    assert nodes[1, 2].abs().sum() == 0 and nodes[1, 0, 0] == 3
    with pytest.raises(ValueError, match="one entry per image"):
        dsig_pad_nodes([torch.ones(1, 3)], [])


def test_checks():
    s, t = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    fg = torch.tensor([[True, False, False, False]] * 2)
    bg = ~fg
    with pytest.raises(ValueError, match="overlap"):
        dsig_graph_loss(s, t, fg, fg | bg)
    with pytest.raises(ValueError, match="fg_mask"):
        dsig_graph_loss(s, t, fg[:, :3], bg)
    with pytest.raises(ValueError, match="teacher_logits"):
        dsig_graph_loss(s, t, fg, bg, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="same shape"):
        dsig_graph_loss(s, t[:, :3], fg, bg)
    with pytest.raises(ValueError, match="student"):
        dsig_graph_loss(s[0], t[0], fg, bg)
    with pytest.raises(TypeError, match="student"):
        dsig_graph_loss(s.long(), t, fg, bg)
    with pytest.raises(ValueError, match="background_index"):
        dsig_graph_loss(s, t, fg, bg, torch.randn(2, 4, 3), background_index=3)
    with pytest.raises(ValueError, match="adaptive_bg_weight"):
        dsig_graph_loss(s, t, fg, bg, adaptive_bg_weight=-1.0)
    with pytest.raises(TypeError, match="teacher"):
        dsig_logit_loss(torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long))


@pytest.mark.parametrize("side", [0, 1])
def test_nan_in_gives_nan_out(side):
    s, t = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    fg, bg = torch.tensor([[True, False, False]]), torch.tensor([[False, True, True]])
    inputs = [s, t]
    inputs[side] = inputs[side].clone()
    inputs[side][0, 1, 0] = float("nan")  # one background element
    assert torch.isnan(dsig_graph_loss(*inputs, fg, bg))
    assert torch.isnan(dsig_logit_loss(*(x[0] for x in inputs)))


def test_empty_batch():
    s = torch.zeros(0, 4, 5, requires_grad=True)
    mask = torch.zeros(0, 4, dtype=torch.bool)
    loss = dsig_graph_loss(s, torch.zeros(0, 4, 5), mask, mask, torch.zeros(0, 4, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert not s.grad.any()


def test_levels_in_one_line():
    # per-level node features (pooled from one level each) through multilevel_loss: the sum of the levels
    g = torch.Generator().manual_seed(4)
    students = [torch.randn(2, 6, 3, 2, 2, generator=g) for _ in range(3)]
    teachers = [torch.randn(2, 6, 3, 2, 2, generator=g) for _ in range(3)]
    fg = torch.tensor([[True, True, False, False, False, False]] * 2)
    bg = ~fg
    logits = torch.randn(2, 6, 4, generator=g)
    total = multilevel_loss(DSIGGraphLoss(), students, teachers, fg_mask=fg, bg_mask=bg, teacher_logits=logits)
    expected = sum(dsig_graph_loss(s, t, fg, bg, logits) for s, t in zip(students, teachers))
    torch.testing.assert_close(total, expected)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_gathered_edges_equal_the_masked_reference(scale):
    from kdimpl.losses import dsig

    g = torch.Generator().manual_seed(6)
    s = (scale * torch.randn(3, 7, 10, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = scale * torch.randn(3, 7, 10, generator=g, dtype=torch.float64)
    graph = torch.rand(3, 7, generator=g) < 0.6
    graph[2] = False  # an image without graph nodes
    fast, reference = dsig._edges_gathered(s, t, graph), dsig._edges(s, t, graph)
    torch.testing.assert_close(fast, reference)
    weights = torch.rand(3, generator=g, dtype=torch.float64)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), s)
    (g_reference,) = torch.autograd.grad((reference * weights).sum(), s)
    torch.testing.assert_close(g_fast, g_reference)
