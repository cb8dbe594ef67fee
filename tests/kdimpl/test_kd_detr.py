"""KD-DETR: parity with the first author's code, the equations by hand, the point sampler, detaching, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import KDDETRLoss, MultiLevelLoss, multilevel_loss
from kdimpl.losses.kd_detr import kd_detr_logits_loss, kd_detr_loss, kd_detr_sample_points
from kdimpl.ops import aligned_box_iou, box_cxcywh_to_xyxy

FIXTURE = Path(__file__).parent / "fixtures" / "kd_detr" / "official_kd_detr.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE)


def _boxes(generator, *shape):
    raw = torch.randn(*shape, 4, generator=generator)
    return torch.cat([0.15 + 0.7 * raw[..., :2].sigmoid(), 0.05 + 0.5 * raw[..., 2:].sigmoid()], dim=-1)


# ---------------------------------------------------------------- parity with wennyuhey/KD-DETR eecf1705


@pytest.mark.parametrize("points", ["auxrf", "randomrf"])
def test_point_loss_over_layers_matches_official(official, points):
    data, expected = official["points"][points], official["result"][points]
    logits = data["student_logits"].clone().requires_grad_(True)
    boxes = data["student_boxes"].clone().requires_grad_(True)
    layers = logits.shape[0]
    loss = multilevel_loss(kd_detr_loss, list(logits), [data["teacher_logits"]] * layers, list(boxes),
                           [data["teacher_boxes"]] * layers)
    grad_logits, grad_boxes = torch.autograd.grad(loss, [logits, boxes])
    torch.testing.assert_close(loss.detach(), expected["total"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_logits, expected["grad_student_logits"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_boxes, expected["grad_student_boxes"], rtol=1e-4, atol=1e-4)
    module = MultiLevelLoss([KDDETRLoss() for _ in range(layers)])
    torch.testing.assert_close(module(list(data["student_logits"]), [data["teacher_logits"]] * layers,
                                      list(data["student_boxes"]), [data["teacher_boxes"]] * layers),
                               expected["total"], rtol=1e-5, atol=1e-5)


def test_logits_branch_matches_official(official):
    data, expected = official["detection"], official["result"]["logits"]
    logits = data["student_logits"].clone().requires_grad_(True)
    boxes = data["student_boxes"].clone().requires_grad_(True)
    loss = multilevel_loss(kd_detr_logits_loss, list(logits), list(data["teacher_logits"]), list(boxes),
                           list(data["teacher_boxes"]), list(official["student_match"]),
                           list(official["teacher_match"]))
    grad_logits, grad_boxes = torch.autograd.grad(loss, [logits, boxes])
    torch.testing.assert_close(loss.detach(), expected["total"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_logits, expected["grad_student_logits"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_boxes, expected["grad_student_boxes"], rtol=1e-4, atol=1e-6)


def test_official_box_terms_do_not_detach_the_teacher_but_ours_do(official):
    # what the official code did on the fixture's inputs (teacher tensors requiring grad)
    for points in ("auxrf", "randomrf"):
        assert official["result"][points]["teacher_logits_grad_is_none"]
        assert official["result"][points]["grad_teacher_boxes"].abs().sum() > 0
    assert official["result"]["logits"]["teacher_logits_grad_is_none"]
    assert official["result"]["logits"]["teacher_boxes_grad_is_none"]
    # ours: no gradient reaches any teacher input, in either loss
    data = official["points"]["auxrf"]
    t_logits = data["teacher_logits"].clone().requires_grad_(True)
    t_boxes = data["teacher_boxes"].clone().requires_grad_(True)
    s_logits = data["student_logits"][0].clone().requires_grad_(True)
    s_boxes = data["student_boxes"][0].clone().requires_grad_(True)
    loss = kd_detr_loss(s_logits, t_logits, s_boxes, t_boxes)
    match = torch.tensor([[0, 1], [2, -1]])
    loss = loss + kd_detr_logits_loss(s_logits, t_logits, s_boxes, t_boxes, match, match.flip(1))
    loss.backward()
    assert t_logits.grad is None and t_boxes.grad is None
    assert s_logits.grad.abs().sum() > 0 and s_boxes.grad.abs().sum() > 0


# ---------------------------------------------------------------- the equations by hand


def test_point_loss_equals_a_loop_over_points():
    generator = torch.Generator().manual_seed(1)
    s_logits = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64)
    t_logits = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64)
    s_boxes, t_boxes = _boxes(generator, 2, 4).double(), _boxes(generator, 2, 4).double()
    temperature = 4.0
    cls, box, weights = 0.0, 0.0, 0.0
    for i in range(2):
        for p in range(4):
            w = torch.sigmoid(t_logits[i, p]).max()
            p_t = torch.softmax(t_logits[i, p] / temperature, dim=0)
            p_s = torch.softmax(s_logits[i, p] / temperature, dim=0)
            cls = cls + w * (p_t * (p_t.log() - p_s.log())).mean() * temperature**2
            giou = aligned_box_iou(box_cxcywh_to_xyxy(s_boxes[i, p]), box_cxcywh_to_xyxy(t_boxes[i, p]),
                                   generalized=True)
            box = box + w * (5 * (s_boxes[i, p] - t_boxes[i, p]).abs().mean() + 2 * (1 - giou))
            weights = weights + w
    loss = kd_detr_loss(s_logits, t_logits, s_boxes, t_boxes, temperature=temperature)
    torch.testing.assert_close(loss, cls + box / weights)
    total = kd_detr_loss(s_logits, t_logits, s_boxes, t_boxes, temperature=temperature, reduction="sum")
    torch.testing.assert_close(total, cls + box)


def test_box_terms_cancel_the_weights_and_the_class_term_does_not():
    # two points, teacher confidences 0.9 and 0.1, the same box error e on every coordinate
    logit = lambda p: torch.log(torch.tensor(p / (1 - p)))
    # the same gap between the two classes: the same softmax, different sigmoid confidences
    t_logits = torch.stack([torch.stack([logit(0.9), logit(0.9) - 3]), torch.stack([logit(0.1), logit(0.1) - 3])])[None]
    s_logits = t_logits.clone()
    t_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    e = 0.01
    loss = kd_detr_loss(s_logits, t_logits, t_boxes + e, t_boxes, giou_weight=0.0)
    torch.testing.assert_close(loss, torch.tensor(5 * e), rtol=1e-5, atol=1e-7)
    s_logits = s_logits + torch.tensor([1.0, 0.0])
    only_class = kd_detr_loss(s_logits, t_logits, t_boxes, t_boxes)
    per_point = kd_detr_loss(s_logits, t_logits, t_boxes, t_boxes, reduction="none")
    torch.testing.assert_close(only_class, per_point.sum())
    torch.testing.assert_close(per_point[0, 0] / per_point[0, 1], torch.tensor(9.0), rtol=1e-4, atol=0)


def test_logits_branch_equals_its_formula_and_ignores_padding():
    generator = torch.Generator().manual_seed(2)
    s_logits, t_logits = torch.randn(2, 5, 3, generator=generator), torch.randn(2, 4, 3, generator=generator)
    s_boxes, t_boxes = _boxes(generator, 2, 5), _boxes(generator, 2, 4)
    s_match, t_match = torch.tensor([[4, 0], [2, -1]]), torch.tensor([[1, 3], [0, -1]])
    pairs = [(0, 4, 1), (0, 0, 3), (1, 2, 0)]
    kl, smooth = 0.0, 0.0
    for i, s, t in pairs:
        p_t, p_s = torch.softmax(t_logits[i, t] / 10, 0), torch.softmax(s_logits[i, s] / 10, 0)
        kl = kl + (p_t * (p_t.log() - p_s.log())).mean() * 100
        smooth = smooth + torch.nn.functional.smooth_l1_loss(s_boxes[i, s], t_boxes[i, t], beta=1 / 9, reduction="sum")
    loss = kd_detr_logits_loss(s_logits, t_logits, s_boxes, t_boxes, s_match, t_match)
    torch.testing.assert_close(loss, 10 * kl / 3 + smooth / 12, rtol=1e-5, atol=1e-6)
    per_pair = kd_detr_logits_loss(s_logits, t_logits, s_boxes, t_boxes, s_match, t_match, reduction="none")
    assert per_pair.shape == (2, 2) and per_pair[1, 1] == 0
    s_logits[1, 4] = float("nan")  # a query matched to nothing does not count
    torch.testing.assert_close(kd_detr_logits_loss(s_logits, t_logits, s_boxes, t_boxes, s_match, t_match), loss)


# ---------------------------------------------------------------- the distillation points


def test_sample_points_draws_standard_normal_anchors_from_rng():
    anchors = torch.randn(300, 4, requires_grad=True)
    specific, general = kd_detr_sample_points(anchors, 300, rng=torch.Generator().manual_seed(7))
    again = kd_detr_sample_points(anchors, 300, rng=torch.Generator().manual_seed(7))[1]
    assert torch.equal(general, again) and general.shape == (300, 4)
    assert torch.equal(general, torch.randn(300, 4, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(specific, anchors) and not specific.requires_grad
    big = kd_detr_sample_points(anchors, 20000, rng=torch.Generator().manual_seed(8))[1]
    assert abs(float(big.mean())) < 0.03 and abs(float(big.std()) - 1) < 0.03
    other = kd_detr_sample_points(anchors, 300, rng=torch.Generator().manual_seed(9))[1]
    assert not torch.equal(general, other)


def test_sample_points_follows_the_anchors_dtype():
    _specific, general = kd_detr_sample_points(torch.randn(10, 4, dtype=torch.float64), 5)
    assert general.dtype == torch.float64 and general.shape == (5, 4)


# ---------------------------------------------------------------- input checks


def test_inputs_are_checked():
    logits, boxes = torch.randn(2, 6, 3), torch.rand(2, 6, 4)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_detr_loss(logits, torch.randn(2, 5, 3), boxes, boxes)
    with pytest.raises(ValueError, match="student_boxes"):
        kd_detr_loss(logits, logits, torch.rand(2, 6, 2), boxes)
    with pytest.raises(ValueError, match="temperature"):
        kd_detr_loss(logits, logits, boxes, boxes, temperature=0.0)
    with pytest.raises(TypeError, match="student_match"):
        kd_detr_logits_loss(logits, logits, boxes, boxes, torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_match"):
        kd_detr_logits_loss(logits, logits, boxes, boxes, torch.zeros(2, 2, dtype=torch.long),
                            torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_anchors"):
        kd_detr_sample_points(torch.randn(4))


def test_identical_outputs_give_zero():
    generator = torch.Generator().manual_seed(3)
    logits, boxes = torch.randn(2, 5, 4, generator=generator), _boxes(generator, 2, 5)
    torch.testing.assert_close(kd_detr_loss(logits, logits, boxes, boxes), torch.tensor(0.0), atol=1e-6, rtol=0)
    match = torch.tensor([[0, 3], [1, -1]])
    torch.testing.assert_close(kd_detr_logits_loss(logits, logits, boxes, boxes, match, match), torch.tensor(0.0),
                               atol=1e-6, rtol=0)
