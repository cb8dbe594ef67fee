"""D-FINE GO-LSD: parity with the official criterion, the DDF normaliser, FGL bins, input checks, layers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.dfine import (  # noqa: E402
    DFineDDFLoss,
    dfine_ddf_loss,
    dfine_fgl_loss,
    dfine_go_matches,
    dfine_weighting_function,
)

FIXTURE = Path(__file__).parent / "fixtures" / "dfine" / "official_dfine.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _xyxy(boxes):
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], dim=-1)


def _official_inputs(official):
    gt = [_xyxy(b) for b in official["gt_boxes_cxcywh"]]
    matched = dfine_go_matches(official["layer_indices"], gt, official["corners"][0].shape[1])
    boxes = [_xyxy(b) for b in official["pred_boxes_cxcywh"]]
    return gt, matched, boxes


@pytest.mark.parity
def test_weighting_function_and_go_matches_match_official(official):
    grid = dfine_weighting_function(official["reg_max"], official["up"], official["reg_scale"])
    torch.testing.assert_close(grid, official["weighting_function"], rtol=0, atol=0)
    _, matched, _ = _official_inputs(official)
    for (queries, gts), row in zip(official["go_indices"], matched):
        expected = torch.full_like(row, -1)
        expected[queries] = gts
        assert torch.equal(row, expected)


@pytest.mark.parity
def test_fgl_per_layer_values_and_gradients_match_official(official):
    gt, matched, boxes = _official_inputs(official)
    ref = _xyxy(official["ref_points_cxcywh"][-1])  # the official criterion reuses the final layer's targets
    corners = [c.clone().requires_grad_(True) for c in official["corners"]]
    values = torch.stack([dfine_fgl_loss(c, ref, b, matched, gt) for c, b in zip(corners, boxes)])
    torch.testing.assert_close(values, official["loss_fgl"], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(torch.autograd.grad(values.sum(), corners), official["grad_fgl"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)


@pytest.mark.parity
def test_ddf_per_layer_values_and_gradients_match_official(official):
    gt, matched, boxes = _official_inputs(official)
    teacher, logits = official["corners"][-1], official["teacher_logits"]
    students = [c.clone().requires_grad_(True) for c in official["corners"][:-1]]
    criterion = DFineDDFLoss(temperature=official["temperature"])
    values = torch.stack([criterion(s, teacher, b, logits, matched, gt) for s, b in zip(students, boxes)])
    torch.testing.assert_close(values, official["loss_ddf"], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(torch.autograd.grad(values.sum(), students), official["grad_ddf"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    # the same sum in one line over the decoder layers
    total = multilevel_loss(criterion, students, [teacher] * len(students), boxes[:-1],
                            teacher_logits=logits, matched_gt=matched, gt_boxes=gt)
    torch.testing.assert_close(total, official["loss_ddf"].sum(), rtol=1e-5, atol=1e-6)


def _random_case(seed, n=2, q=5, bins=9, classes=3):
    g = torch.Generator().manual_seed(seed)
    s, t = 2 * torch.randn(n, q, 4 * bins, generator=g), 2 * torch.randn(n, q, 4 * bins, generator=g)
    logits = torch.randn(n, q, classes, generator=g)
    xy = torch.rand(n, q, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(n, q, 2, generator=g) * 30], dim=-1)
    gt = [boxes[i, :2] + torch.rand(2, 4, generator=g) for i in range(n)]
    matched = torch.tensor([[0, -1, 1, -1, -1], [-1, -1, -1, 1, -1]])[:n, :q]
    return s, t, logits, boxes, matched, gt


def _naive_ddf_terms(s, t, logits, boxes, matched, gt, temperature):
    n, q, c = s.shape
    bins = c // 4
    out = torch.zeros(n, q, 4, dtype=torch.float64)
    for i in range(n):
        for j in range(q):
            if matched[i, j] >= 0:
                a, b = boxes[i, j].double(), gt[i][matched[i, j]].double()
                inter = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0).prod()
                weight = inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter)
            else:
                weight = logits[i, j].double().sigmoid().max()
            for e in range(4):
                p = (t[i, j, e * bins:(e + 1) * bins].double() / temperature).softmax(0)
                r = (s[i, j, e * bins:(e + 1) * bins].double() / temperature).softmax(0)
                out[i, j, e] = weight * temperature**2 * (p * (p / r).log()).sum()
    return out


@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_ddf_terms_and_balanced_mean_match_a_naive_loop(temperature):
    s, t, logits, boxes, matched, gt = _random_case(0)
    naive = _naive_ddf_terms(s, t, logits, boxes, matched, gt, temperature)
    ours = dfine_ddf_loss(s, t, boxes, logits, matched, gt, temperature=temperature, reduction="none")
    torch.testing.assert_close(ours, naive.float(), rtol=1e-5, atol=1e-6)
    is_matched = (matched >= 0)[..., None].expand_as(naive)
    k_m, k_u = is_matched.sum().item(), (~is_matched).sum().item()
    expected = (math.sqrt(k_m) * naive[is_matched].mean() + math.sqrt(k_u) * naive[~is_matched].mean()) / (
        math.sqrt(k_m) + math.sqrt(k_u)
    )
    torch.testing.assert_close(dfine_ddf_loss(s, t, boxes, logits, matched, gt, temperature=temperature),
                               expected.float(), rtol=1e-5, atol=1e-6)


def test_ddf_without_matches_is_the_unmatched_mean():
    s, t, logits, boxes, _, gt = _random_case(1)
    none = torch.full((2, 5), -1)
    terms = dfine_ddf_loss(s, t, boxes, logits, none, gt, reduction="none")
    torch.testing.assert_close(dfine_ddf_loss(s, t, boxes, logits, none, gt), terms.mean())


def test_fgl_trains_the_two_neighbouring_bins_with_interpolation_weights():
    # reg_max 4, up 0.5, c 4: W = [-4, -2, 0, 2, 4]; a 4 x 4 reference box has unit 1 and offset -2 = -c / 2
    assert dfine_weighting_function(4).tolist() == [-4.0, -2.0, 0.0, 2.0, 4.0]
    ref = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]])  # centre (2, 2)
    # left at x = -1: 3 - 2 = 1, halfway between W(2) = 0 and W(3) = 2; top at y = -2: 4 - 2 = 2 = W(3): bin 3 alone;
    # right at x = 20: 18 - 2 = 16 >= W(4): bin 4 alone; bottom at y = 2.5: 0.5 - 2 = -1.5, 1/4 of the way W(1) -> W(2)
    gt = [torch.tensor([[-1.0, -2.0, 20.0, 2.5]])]
    logits = torch.randn(1, 1, 4 * 5)
    log_q = logits.reshape(4, 5).log_softmax(-1)
    expected = -torch.stack([
        0.5 * log_q[0, 2] + 0.5 * log_q[0, 3],
        log_q[1, 3],
        log_q[2, 4],
        0.75 * log_q[3, 1] + 0.25 * log_q[3, 2],
    ])
    # the query's own box is the GT box: IoU weight 1
    ours = dfine_fgl_loss(logits, ref, gt[0][None], torch.tensor([[0]]), gt, reduction="none")
    torch.testing.assert_close(ours[0, 0], expected)
    torch.testing.assert_close(dfine_fgl_loss(logits, ref, gt[0][None], torch.tensor([[0]]), gt), expected.sum())


def test_fgl_offsets_outside_the_grid_train_one_end_bin():
    ref = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]])
    logits = torch.randn(1, 1, 20)
    log_q = logits.reshape(4, 5).log_softmax(-1)
    far = [torch.tensor([[-30.0, -30.0, 34.0, 34.0]])]  # offsets 32 - 2 = 30 >= W(4) = 4: the last bin alone
    terms = dfine_fgl_loss(logits, ref, far[0][None], torch.tensor([[0]]), far, reduction="none")[0, 0]
    torch.testing.assert_close(terms, -log_q[:, 4])
    # a GT box beyond the reference's bottom-right corner: left and top offsets 2 - 50 - 2 < W(0): bin 0 alone
    outside = [torch.tensor([[50.0, 50.0, 52.0, 52.0]])]
    terms = dfine_fgl_loss(logits, ref, outside[0][None], torch.tensor([[0]]), outside, reduction="none")[0, 0]
    torch.testing.assert_close(terms, -torch.cat([log_q[:2, 0], log_q[2:, 4]]))


def test_fgl_ignores_unmatched_queries_and_divides_by_the_matched_count():
    s, _, _, boxes, matched, gt = _random_case(2, bins=9)
    terms = dfine_fgl_loss(s, boxes, boxes, matched, gt, reduction="none")
    assert not terms[matched < 0].any()
    torch.testing.assert_close(dfine_fgl_loss(s, boxes, boxes, matched, gt), terms.sum() / 3)


def test_go_matches_take_the_most_frequent_gt_and_break_ties_to_the_smaller_index():
    gt = [torch.zeros(3, 4)]
    layers = [
        [(torch.tensor([0, 1]), torch.tensor([2, 0]))],
        [(torch.tensor([0, 1]), torch.tensor([1, 2]))],
        [(torch.tensor([0]), torch.tensor([2]))],
    ]
    assert dfine_go_matches(layers, gt, 4).tolist() == [[2, 0, -1, -1]]
    assert dfine_go_matches([[(torch.tensor([], dtype=torch.long),) * 2]], [torch.zeros(0, 4)], 2).tolist() == [[-1, -1]]


def test_input_checks():
    s, t, logits, boxes, matched, gt = _random_case(3)
    with pytest.raises(ValueError, match="matched_gt"):
        dfine_ddf_loss(s, t, boxes, logits, torch.full((2, 5), 2), gt)
    with pytest.raises(TypeError, match="matched_gt"):
        dfine_ddf_loss(s, t, boxes, logits, matched.float(), gt)
    with pytest.raises(ValueError, match="4 \\* \\(reg_max \\+ 1\\)"):
        dfine_ddf_loss(s[..., :-1], t[..., :-1], boxes, logits, matched, gt)
    with pytest.raises(ValueError, match="gt_boxes"):
        dfine_ddf_loss(s, t, boxes, logits, matched, gt[:1])
    bad = [gt[0].clone(), gt[1]]
    bad[0][0, 0] = float("inf")
    with pytest.raises(ValueError, match="gt_boxes"):
        dfine_ddf_loss(s, t, boxes, logits, matched, bad)
    with pytest.raises(ValueError, match="teacher_logits"):
        dfine_ddf_loss(s, t, boxes, logits[:, :3], matched, gt)
    with pytest.raises(ValueError, match="reg_max"):
        dfine_weighting_function(5)


def test_nan_in_an_unmatched_query_gives_nan():
    s, t, logits, boxes, matched, gt = _random_case(4)
    s[1, 4, 0] = float("nan")
    assert torch.isnan(dfine_ddf_loss(s, t, boxes, logits, matched, gt))
    assert torch.isnan(dfine_fgl_loss(s, boxes, boxes, matched, gt))


def test_empty_batch_is_a_zero_in_the_graph():
    student = torch.randn(0, 5, 36, requires_grad=True)
    for loss in (
        dfine_ddf_loss(student, torch.randn(0, 5, 36), torch.zeros(0, 5, 4), torch.randn(0, 5, 3),
                       torch.zeros(0, 5, dtype=torch.long), []),
        dfine_fgl_loss(student, torch.zeros(0, 5, 4), torch.zeros(0, 5, 4), torch.zeros(0, 5, dtype=torch.long), []),
    ):
        assert loss.item() == 0.0
        loss.backward()
        assert not student.grad.any()


def test_three_decoder_layers_in_one_line():
    s, t, logits, boxes, matched, gt = _random_case(5)
    layers = [s, s.flip(1), 0.5 * s]
    layer_boxes = [boxes, boxes.flip(1), boxes]
    criterion = MultiLevelLoss(DFineDDFLoss(), loss_weight=1.5)
    total = criterion(layers, [t] * 3, layer_boxes, teacher_logits=logits, matched_gt=matched, gt_boxes=gt)
    expected = sum(dfine_ddf_loss(x, t, b, logits, matched, gt) for x, b in zip(layers, layer_boxes))
    torch.testing.assert_close(total, 1.5 * expected)
