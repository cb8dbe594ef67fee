"""SSD-Det: parity with ucas-vg/PointTinyBenchmark@SSD-Det (SPSD both stages, SISD, selection), analytic cases, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl.losses.ssd_det import (  # noqa: E402
    SSDDetSISDLoss,
    SSDDetSPSDLoss,
    ssd_det_box_deltas,
    ssd_det_identity_target,
    ssd_det_merge_boxes,
    ssd_det_selection_scores,
    ssd_det_sisd_loss,
    ssd_det_spsd_loss,
)

FIXTURE = Path(__file__).parent / "fixtures" / "ssd_det" / "official_ssd_det.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
def test_spsd_stage_one_matches_official(official):
    deltas = official["reg_pred"].clone().requires_grad_(True)
    targets = ssd_det_box_deltas(official["proposals"], official["gt"][:, None])
    torch.testing.assert_close(targets.reshape(-1, 4), official["spsd1_target"], rtol=1e-6, atol=1e-7)
    loss = SSDDetSPSDLoss(loss_weight=0.25)(deltas, official["gt"], official["proposals"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["spsd1_loss"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(deltas.grad, official["spsd1_grad"], rtol=1e-6, atol=1e-10)


@pytest.mark.parity
def test_spsd_stage_two_matches_official(official):
    deltas = official["reg_pred"].clone().requires_grad_(True)
    loss = 0.25 * ssd_det_spsd_loss(deltas, official["refined"], official["proposals"], bag_scores=official["bag_scores"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["spsd2_loss"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(deltas.grad, official["spsd2_grad"], rtol=1e-6, atol=1e-10)


@pytest.mark.parity
def test_sisd_matches_official(official):
    scores = official["iou_pred"][..., 0].clone().requires_grad_(True)
    torch.testing.assert_close(ssd_det_identity_target(official["proposals"], official["refined"]),
                               official["sisd_target"], rtol=1e-6, atol=1e-7)
    loss = SSDDetSISDLoss(loss_weight=5.0)(scores, official["refined"], official["proposals"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["sisd_loss"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(scores.grad, official["sisd_grad"][..., 0], rtol=1e-6, atol=1e-10)


@pytest.mark.parity
def test_selection_with_identity_scores_matches_official_merge(official):
    objects = torch.arange(official["labels"].shape[0])
    class_scores = official["cls_logits"].sigmoid()[objects, :, official["labels"]]
    scores = ssd_det_selection_scores(class_scores, official["iou_pred"][..., 0])
    merged = ssd_det_merge_boxes(official["proposals"], scores, top_k=7)
    torch.testing.assert_close(merged, official["merged"], rtol=1e-6, atol=1e-5)


def test_identity_target_analytic_cases():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]]])
    torch.testing.assert_close(ssd_det_identity_target(proposals, box), torch.tensor([[1.0, 0.0, -1.0]]))


def test_spsd_is_the_plain_formula_and_zero_at_the_exact_deltas():
    torch.manual_seed(0)
    proposals = torch.rand(3, 4, 2) * 20
    proposals = torch.cat([proposals, proposals + 5 + torch.rand(3, 4, 2) * 10], dim=-1)
    target = proposals[:, 0] + 1.0
    exact = ssd_det_box_deltas(proposals, target[:, None])
    assert ssd_det_spsd_loss(exact, target, proposals) == 0
    deltas = torch.randn(3, 4, 4, dtype=torch.float64)
    scores = torch.rand(3, dtype=torch.float64)
    p, t = proposals.double(), target.double()
    pw, ph = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    gw, gh = (t[:, 2] - t[:, 0])[:, None], (t[:, 3] - t[:, 1])[:, None]
    manual = torch.stack([
        ((t[:, 0] + t[:, 2])[:, None] / 2 - (p[..., 0] + p[..., 2]) / 2) / pw / 0.1,
        ((t[:, 1] + t[:, 3])[:, None] / 2 - (p[..., 1] + p[..., 3]) / 2) / ph / 0.1,
        torch.log(gw / pw) / 0.2,
        torch.log(gh / ph) / 0.2,
    ], dim=-1)
    expected = ((deltas - manual).abs() * scores[:, None, None]).sum() / 12
    torch.testing.assert_close(ssd_det_spsd_loss(deltas, t, p, bag_scores=scores), expected)
    none = ssd_det_spsd_loss(deltas, t, p, bag_scores=scores, reduction="none")
    assert none.shape == (3, 4, 4)
    torch.testing.assert_close(none.mean() * 4, expected)


def test_sisd_is_smooth_l1_with_its_threshold():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    scores = torch.tensor([[0.5, 1.5]])  # errors 0.5 (quadratic) and 2.5 (linear) with beta = 1
    torch.testing.assert_close(ssd_det_sisd_loss(scores, box, proposals, reduction="none"), torch.tensor([[0.125, 2.0]]))
    torch.testing.assert_close(ssd_det_sisd_loss(scores, box, proposals, beta=4.0, reduction="sum"),
                               torch.tensor(0.5**2 / 8 + 2.5**2 / 8))


def test_selection_and_merge_edge_cases():
    # equal identity estimates: U' = 1 (the official code divides by zero); a bag of zero scores averages uniformly
    class_scores = torch.tensor([[0.2, 0.4, 0.6]])
    torch.testing.assert_close(ssd_det_selection_scores(class_scores, torch.zeros(1, 3)), class_scores)
    torch.testing.assert_close(ssd_det_selection_scores(class_scores, torch.tensor([[-1.0, 0.0, 1.0]])),
                               torch.tensor([[0.0, 0.2, 0.6]]))
    proposals = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0], [9.0, 9.0, 9.0, 9.0]]])
    merged = ssd_det_merge_boxes(proposals, torch.zeros(1, 3), top_k=2)
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(ssd_det_merge_boxes(proposals, torch.tensor([[1.0, 3.0, 0.0]]), top_k=2),
                               torch.tensor([[1.5, 1.5, 3.5, 3.5]]), atol=1e-6, rtol=0)


def test_gradients_stop_at_teacher_boxes_proposals_and_bag_scores():
    teacher = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    proposals = torch.tensor([[[1.0, 1.0, 9.0, 12.0], [0.0, 2.0, 8.0, 9.0]]], requires_grad=True)
    scores = torch.tensor([0.7], requires_grad=True)
    deltas = torch.zeros(1, 2, 4, requires_grad=True)
    (ssd_det_spsd_loss(deltas, teacher, proposals, bag_scores=scores)
     + ssd_det_sisd_loss(deltas[..., 0], teacher, proposals)).backward()
    assert deltas.grad.abs().sum() > 0
    assert teacher.grad is None and proposals.grad is None and scores.grad is None


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="teacher_boxes has G=2"):
        ssd_det_spsd_loss(torch.zeros(1, 3, 4), torch.zeros(2, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="proposals"):
        ssd_det_spsd_loss(torch.zeros(1, 3, 4), torch.zeros(1, 4), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="bag_scores"):
        ssd_det_spsd_loss(torch.zeros(1, 3, 4), torch.zeros(1, 4), torch.zeros(1, 3, 4), bag_scores=torch.ones(2))
    with pytest.raises(TypeError, match="student_scores"):
        ssd_det_sisd_loss(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="beta"):
        ssd_det_sisd_loss(torch.zeros(1, 3), torch.zeros(1, 4), torch.zeros(1, 3, 4), beta=0.0)


def test_nan_in_nan_out_and_no_objects():
    box, proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[[1.0, 1.0, 9.0, 9.0]]])
    assert torch.isnan(ssd_det_spsd_loss(torch.full((1, 1, 4), float("nan")), box, proposals))
    assert torch.isnan(ssd_det_sisd_loss(torch.zeros(1, 1), torch.full((1, 4), float("nan")), proposals))
    deltas = torch.zeros(0, 5, 4, requires_grad=True)
    loss = ssd_det_spsd_loss(deltas, torch.zeros(0, 4), torch.zeros(0, 5, 4))
    assert loss.item() == 0
    loss.backward()
    assert deltas.grad is not None and not deltas.grad.any()
    # a zero-size target box gives finite (large) deltas rather than log(0)
    flat = ssd_det_spsd_loss(torch.zeros(1, 1, 4), torch.tensor([[5.0, 5.0, 5.0, 5.0]]), proposals)
    assert torch.isfinite(flat)


@pytest.mark.parity
def test_identity_head_matches_official():
    from kdimpl import SSDDetIdentityHead

    official = torch.load(FIXTURE.with_name("official_ssd_det_head.pt"), weights_only=True)
    head = SSDDetIdentityHead(8 * 7 * 7, 16)
    for ours, theirs in ((head.fcs[0], "0."), (head.fcs[2], "1.")):
        ours.load_state_dict({k[2:]: v for k, v in official["fcs"].items() if k.startswith(theirs)})
    head.fc_iou.load_state_dict(official["fc_iou"])
    features = official["feats"].reshape(3, 4, 8, 7, 7).clone().requires_grad_(True)
    scores = head(features)
    (scores * official["weights"][..., 0]).sum().backward()
    torch.testing.assert_close(scores.detach(), official["iou_score"][..., 0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(features.grad.reshape(12, 8, 7, 7), official["grad_feats"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.fcs[0].weight.grad, official["grad_fc0"], rtol=1e-6, atol=1e-9)
    assert scores.shape == (3, 4)
