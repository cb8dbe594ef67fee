"""LAD: the teacher's PAA assignment. GMM against scikit-learn's numbers, reassignment parity with mmdetection's
paa_reassign, the degenerate GMM case, candidate losses and candidates against their equations, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kdimpl.losses.lad import LADAssignment, lad_assign, lad_fit_gmm, lad_select  # noqa: E402
from kdimpl.losses import lad as lad_module  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "lad" / "official_lad.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=False)


@pytest.mark.parity
def test_gmm_matches_sklearn(official):
    for x, component, score in zip(official["gmm_inputs"], official["gmm_components"], official["gmm_scores"]):
        ours, density = lad_fit_gmm(x)
        assert ours.tolist() == component.tolist()
        torch.testing.assert_close(density, score, rtol=1e-6, atol=1e-8)


def test_degenerate_gmm_is_defined(official):
    # scikit-learn raises on these (mmdetection does not catch it); here the fit is finite and deterministic
    assert "ill-defined empirical covariance" in official["degenerate_error"]
    component, density = lad_fit_gmm(official["degenerate_input"])
    assert torch.isfinite(density).all()
    again, _ = lad_fit_gmm(official["degenerate_input"])
    assert component.tolist() == again.tolist()
    losses = official["degenerate_input"].float()
    chosen = lad_select(losses, torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long))
    assert 1 <= int(chosen.sum()) <= 9
    # exactly equal losses: two equal components, ties to component 0, the first (lowest-index) candidate wins
    equal = lad_select(torch.full((5,), 0.7), torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    assert equal.tolist() == [True, False, False, False, False]


def test_boxes_with_too_few_or_non_finite_candidates_are_skipped():
    losses = torch.tensor([0.1, 0.2, float("nan"), 0.3, 0.15, 2.0, 2.1])
    gt = torch.tensor([0, 1, 1, 1, 2, 2, 2])
    level = torch.zeros(7, dtype=torch.long)
    chosen = lad_select(losses, gt, level)
    assert not chosen[0]  # one candidate: no GMM
    assert not chosen[1:4].any()  # a NaN loss: the box is skipped, its candidates are negatives
    assert chosen[4:].tolist() == [True, False, False]


def test_analytic_case():
    # the small losses form component 0; its highest density is at 0.11 (scikit-learn: 3.19 vs 2.45 at 0.10 and
    # 0.12), and PAA's scheme (c) takes the component-0 candidates up to it in ascending loss: 0.10 and 0.11
    losses = torch.tensor([0.1, 0.12, 0.11, 2.0, 2.1, 1.9])
    chosen = lad_select(losses, torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long))
    assert chosen.tolist() == [True, False, True, False, False, False]


def test_topk_per_level():
    # 12 candidates of one box on 2 levels, topk 3: only the 3 lowest of each level enter the GMM
    losses = torch.tensor([0.1, 0.11, 0.12, 0.13, 0.14, 5.0, 0.2, 0.21, 3.0, 3.1, 3.2, 0.05])
    level = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    chosen = lad_select(losses, torch.zeros(12, dtype=torch.long), level, topk=3)
    assert not chosen[3:6].any() and not chosen[8:11].any()
    assert chosen[[11, 0, 1, 2]].all()  # the lowest losses of the kept six


@pytest.mark.parity
def test_reassignment_matches_mmdetection(official):
    k = official["teacher_logits"].shape[-1]
    level = torch.repeat_interleave(torch.arange(3), torch.tensor(official["anchors_per_level"]))
    index = official["candidate_index"]
    chosen = lad_select(official["candidate_losses"], official["candidate_gt"], level[index])
    expected = official["official_labels"][index] < k
    assert chosen.tolist() == expected.tolist()
    out = lad_assign(official["teacher_logits"], official["teacher_boxes"], official["anchors"],
                     official["anchors_per_level"], [official["gt_boxes"]], [official["gt_labels"]])
    assert isinstance(out, LADAssignment)
    assert out.labels[0].tolist() == official["official_labels"].tolist()
    assert int(out.num_pos) == official["official_num_pos"]
    assert bool((official["official_label_weights"] == 1).all())  # PAA ignores nothing
    pos = out.pos_mask[0]
    torch.testing.assert_close(out.bbox_targets[0, pos], official["gt_boxes"][out.gt_index[0, pos]])
    assert (out.gt_index[0, ~pos] == -1).all() and not out.bbox_targets[0, ~pos].any()


def test_candidate_losses_follow_the_equations():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 5, dtype=torch.float64)
    targets = torch.tensor([[2.0, 0.0, 6.0, 4.0]] * 5, dtype=torch.float64)
    ours = lad_module._candidate_losses(logits, boxes, labels, targets, alpha=0.25, gamma=2.0, cls_weight=1.0,
                                        bbox_weight=1.3)
    # focal loss written with log-sigmoids; GIoU of the pair by hand: IoU 8/24, enclosing 24 -> GIoU 1/3
    t = F.one_hot(labels, 4).double()
    p = logits.sigmoid()
    focal = -(0.25 * t * (1 - p) ** 2 * F.logsigmoid(logits) + 0.75 * (1 - t) * p**2 * F.logsigmoid(-logits))
    torch.testing.assert_close(ours, focal.sum(1) + 1.3 * (1 - 1 / 3))


def test_max_iou_candidates():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 100.0, 100.0],
                            [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [99.0, 99.0, 200.0, 200.0]])
    overlaps = lad_module.box_iou(gt, anchors)
    assigned = lad_module._max_iou_candidates(overlaps, 0.1)
    # anchor 0: IoU 0.81 with box 0; anchor 1: IoU < 0.1 with box 1 but its best anchor; anchor 3: nothing
    assert assigned.tolist() == [0, 1, -1, -1]


def test_checks():
    logits, boxes, anchors = torch.randn(1, 4, 3), torch.rand(1, 4, 4), torch.rand(4, 4)
    anchors[:, 2:] += 1
    gt, gl = [torch.tensor([[0.0, 0.0, 1.0, 1.0]])], [torch.tensor([1])]
    with pytest.raises(ValueError, match="anchors_per_level"):
        lad_assign(logits, boxes, anchors, [3], gt, gl)
    with pytest.raises(ValueError, match="gt_labels"):
        lad_assign(logits, boxes, anchors, [4], gt, [torch.tensor([3])])
    with pytest.raises(ValueError, match="gt_boxes"):
        lad_assign(logits, boxes, anchors, [4], [torch.tensor([[1.0, 1.0, 0.0, 2.0]])], gl)
    with pytest.raises(ValueError, match="one entry per image"):
        lad_assign(logits, boxes, anchors, [4], gt, [])
    with pytest.raises(TypeError, match="teacher_logits"):
        lad_assign(logits.long(), boxes, anchors, [4], gt, gl)
    with pytest.raises(ValueError, match="at least 2"):
        lad_fit_gmm(torch.tensor([1.0]))


def test_images_without_boxes_and_empty_batch():
    logits, boxes, anchors = torch.randn(2, 4, 3), torch.rand(2, 4, 4), torch.rand(4, 4)
    anchors[:, 2:] += 1
    out = lad_assign(logits, boxes, anchors, [4], [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert out.num_pos == 0 and (out.labels == 3).all()
    empty = lad_assign(logits[:0], boxes[:0], anchors, [4], [], [])
    assert empty.labels.shape == (0, 4)
