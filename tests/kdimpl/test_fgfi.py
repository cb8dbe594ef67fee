"""FGFI: parity with twangnh/Distilling-Object-Detectors@c6583f3 and mask-builder checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl.adapters.fgfi import FGFIAdapter  # noqa: E402
from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses import fgfi  # noqa: E402
from kdimpl.losses.fgfi import FGFILoss, fgfi_grid_anchors, fgfi_imitation_mask, fgfi_loss  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "fgfi"


def _naive_mask(gt_boxes, anchors, psi=0.5):
    """Per-image, per-box loop over explicit anchors, written from the paper's description."""
    height, width, num_anchors = anchors.shape[:3]
    flat = anchors.reshape(-1, 4).double()
    masks = []
    for boxes in gt_boxes:
        mask = torch.zeros(height * width * num_anchors, dtype=torch.bool)
        for box in boxes.double():
            ix = (torch.minimum(flat[:, 2], box[2]) - torch.maximum(flat[:, 0], box[0]) + 1).clamp(min=0)
            iy = (torch.minimum(flat[:, 3], box[3]) - torch.maximum(flat[:, 1], box[1]) + 1).clamp(min=0)
            inter = ix * iy
            area_a = (flat[:, 2] - flat[:, 0] + 1) * (flat[:, 3] - flat[:, 1] + 1)
            area_b = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
            iou = inter / (area_a + area_b - inter)
            if box[2] == box[0] and box[3] == box[1]:
                iou = torch.zeros_like(iou)
            mask |= iou > psi * iou.max()
        masks.append(mask.view(height, width, num_anchors).any(dim=-1))
    return torch.stack(masks).float()


def _fixture():
    return torch.load(FIXTURES / "fgfi_parity.pt")


@pytest.mark.parity
def test_mask_matches_official():
    f = _fixture()
    anchors = fgfi_grid_anchors(f["base_anchors"], f["feature_size"], f["stride"])
    mask = fgfi_imitation_mask(f["gt_boxes"], anchors)
    assert torch.equal(mask.bool(), f["mask"])
    padded_valid = f["gt_boxes_padded"].abs().sum(-1) > 0
    padded = fgfi_imitation_mask(f["gt_boxes_padded"], anchors, gt_mask=padded_valid)
    assert torch.equal(padded.bool(), f["mask"])


def _adapted_loss(f, dtype):
    adapter = FGFIAdapter(8, 8).to(dtype)
    adapter.conv.load_state_dict({k.removeprefix("0."): v.to(dtype) for k, v in f["adapter_state"].items()})
    anchors = fgfi_grid_anchors(f["base_anchors"], f["feature_size"], f["stride"])
    student = f["student"].to(dtype).requires_grad_(True)
    loss = fgfi_loss(adapter(student), f["teacher"].to(dtype), anchors, f["gt_boxes"])
    loss.backward()
    return loss, student.grad


@pytest.mark.parity
def test_loss_and_gradient_match_official_float64():
    f = _fixture()
    loss, grad = _adapted_loss(f, torch.float64)
    torch.testing.assert_close(loss, f["loss_float64"], rtol=1e-10, atol=0)
    torch.testing.assert_close(grad.float(), f["grad_float64"], rtol=1e-5, atol=1e-9)


@pytest.mark.parity
def test_loss_and_gradient_match_official_float32():
    f = _fixture()
    loss, grad = _adapted_loss(f, torch.float32)
    torch.testing.assert_close(loss, f["loss_float32"], rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, f["grad_float32"], rtol=1e-5, atol=1e-7)


def _edge_case_boxes():
    img_h, img_w = 96, 160
    boxes0 = torch.tensor(
        [
            [0.0, 0.0, 30.0, 20.0],  # top-left corner
            [120.0, 70.0, 159.0, 95.0],  # bottom-right border
            [20.0, 10.0, 60.0, 40.0],  # overlaps the first
            [50.0, 50.0, 50.0, 50.0],  # point box: ignored
            [80.0, 5.0, 80.0, 60.0],  # zero width (one pixel column in +1 convention)
            [-10.0, -5.0, 170.0, 100.0],  # beyond the image
        ]
    )
    generator = torch.Generator().manual_seed(3)
    u = torch.rand(7, 4, generator=generator)
    x1, y1 = u[:, 0] * img_w, u[:, 1] * img_h
    boxes1 = torch.stack([x1, y1, x1 + u[:, 2] * 60, y1 + u[:, 3] * 40], dim=1)
    return [boxes0, boxes1, torch.zeros(0, 4)], (img_h, img_w)


@pytest.mark.parametrize("psi", [0.3, 0.5, 0.9])
def test_mask_matches_naive_loop_on_edge_cases(psi, device):
    boxes, _ = _edge_case_boxes()
    base = torch.tensor([[-4.0, -4.0, 11.0, 11.0], [-12.0, -4.0, 19.0, 11.0], [-4.0, -12.0, 11.0, 19.0]])
    anchors = fgfi_grid_anchors(base, (12, 20), 8)
    mask = fgfi_imitation_mask([b.to(device) for b in boxes], anchors.to(device), psi=psi)
    assert mask.device.type == device.type
    torch.testing.assert_close(mask.cpu(), _naive_mask(boxes, anchors, psi))


def test_point_box_alone_gives_empty_mask_and_zero_loss():
    anchors = fgfi_grid_anchors(torch.tensor([[-4.0, -4.0, 11.0, 11.0]]), (4, 5), 8)
    boxes = [torch.tensor([[10.0, 10.0, 10.0, 10.0]])]
    assert fgfi_imitation_mask(boxes, anchors).sum() == 0
    student = torch.randn(1, 3, 4, 5, requires_grad=True)
    loss = fgfi_loss(student, torch.randn(1, 3, 4, 5), anchors, boxes)
    loss.backward()
    assert loss == 0 and torch.isfinite(student.grad).all()


def test_normaliser_counts_positions_not_channels():
    # unit error on every element: loss = C * N_p / (2 N_p) = C / 2 whatever the mask
    anchors = fgfi_grid_anchors(torch.tensor([[-4.0, -4.0, 11.0, 11.0], [-8.0, -8.0, 15.0, 15.0]]), (6, 7), 8)
    boxes = [torch.tensor([[5.0, 5.0, 30.0, 25.0]]), torch.tensor([[20.0, 8.0, 50.0, 44.0], [0.0, 0.0, 9.0, 9.0]])]
    channels = 6
    student = torch.ones(2, channels, 6, 7)
    loss = fgfi_loss(student, torch.zeros_like(student), anchors, boxes)
    torch.testing.assert_close(loss, torch.tensor(channels / 2))
    positives = fgfi_imitation_mask(boxes, anchors).sum()
    total = fgfi_loss(student, torch.zeros_like(student), anchors, boxes, reduction="sum")
    torch.testing.assert_close(total, positives * channels)


def test_best_anchor_is_always_imitated():
    # a box equal to one anchor: IoU 1 there, so that cell is in the mask
    base = torch.tensor([[-4.0, -4.0, 11.0, 11.0]])
    anchors = fgfi_grid_anchors(base, (5, 6), 8)
    box = anchors[3, 4, 0].clone()
    mask = fgfi_imitation_mask([box[None]], anchors, psi=0.99)
    assert mask[0, 3, 4] == 1 and mask.sum() == 1


def test_anchor_grid_mismatch_is_rejected():
    anchors = fgfi_grid_anchors(torch.tensor([[-4.0, -4.0, 11.0, 11.0]]), (4, 5), 8)
    with pytest.raises(ValueError, match="anchors has W=5 but student has W=6"):
        fgfi_loss(torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 6), anchors, [torch.zeros(0, 4)])


def test_adapter_is_conv_relu_with_small_init():
    adapter = FGFIAdapter(4, 6)
    assert adapter.conv.weight.abs().max() <= 2e-4
    assert (adapter(torch.randn(1, 4, 3, 5)) >= 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_matches_naive_loop_on_random_boxes_and_fractional_anchors(seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[11.3, 7.9], [23.6, 23.6], [9.1, 30.4], [40.0, 18.5]])
    base = torch.cat([-sizes / 2, sizes / 2], dim=1) + 3.5
    anchors = fgfi_grid_anchors(base, (15, 22), 6.0)
    u = torch.rand(2, 30, 4, generator=generator)
    x1, y1 = u[..., 0] * 140 - 4, u[..., 1] * 95 - 4
    boxes = torch.stack([x1, y1, x1 + u[..., 2] * 50, y1 + u[..., 3] * 35], dim=-1)
    for psi in (0.5, 0.7):
        torch.testing.assert_close(fgfi_imitation_mask(boxes, anchors, psi=psi), _naive_mask(list(boxes), anchors, psi))


def test_non_grid_anchors_use_the_reference_form():
    anchors = fgfi_grid_anchors(torch.tensor([[-4.0, -4.0, 11.0, 11.0]]), (4, 5), 8).clone()
    anchors[2, 3, 0, 0] += 3.0
    boxes = [torch.tensor([[10.0, 12.0, 30.0, 28.0], [0.0, 0.0, 6.0, 40.0]])]
    torch.testing.assert_close(fgfi_imitation_mask(boxes, anchors), _naive_mask(boxes, anchors))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [0.25, 1.0, 37.0])
def test_separable_form_equals_reference(dtype, scale):
    g = torch.Generator().manual_seed(int(scale * 4))
    sizes = torch.tensor([[16.0, 16.0], [23.0, 11.0], [8.0, 31.0]])
    base = (torch.cat([-sizes / 2, sizes / 2], dim=1) + 4) * scale
    anchors = fgfi_grid_anchors(base.to(dtype), (13, 21), 8 * scale)
    u = torch.rand(3, 25, 4, generator=g, dtype=torch.float64)
    x1, y1 = u[..., 0] * 170 - 4, u[..., 1] * 100 - 4
    boxes = (torch.stack([x1, y1, x1 + 1 + u[..., 2] * 60, y1 + 1 + u[..., 3] * 40], dim=-1) * scale).round().to(dtype)
    valid = torch.rand(3, 25, generator=g) > 0.2
    for psi in (0.3, 0.5, 0.8):
        separable = fgfi._imitation_mask_separable(boxes, valid, anchors, psi)
        reference = fgfi._imitation_mask_reference(boxes, valid, anchors, psi)
        assert separable.any() and torch.equal(separable, reference)


def test_multilevel_loss_takes_per_level_anchors_and_boxes_once():
    g = torch.Generator().manual_seed(4)
    sizes, strides = [(24, 32), (12, 16), (6, 8)], [4, 8, 16]
    base = torch.tensor([[-8.0, -8.0, 11.0, 11.0], [-16.0, -6.0, 19.0, 9.0]])
    anchors = [fgfi_grid_anchors(base * s / 4, size, s) for size, s in zip(sizes, strides)]
    students = [torch.randn(2, 3, h, w, generator=g, requires_grad=True) for h, w in sizes]
    teachers = [torch.randn(2, 3, h, w, generator=g) for h, w in sizes]
    boxes = [torch.tensor([[4.0, 4.0, 30.0, 20.0], [40.0, 30.0, 120.0, 90.0]]), torch.tensor([[10.0, 50.0, 60.0, 95.0]])]
    total = MultiLevelLoss(FGFILoss(), loss_weight=0.01)(students, teachers, anchors, gt_boxes=boxes)
    expected = 0.01 * sum(fgfi_loss(s, t, a, boxes) for s, t, a in zip(students, teachers, anchors))
    torch.testing.assert_close(total, expected)
    assert multilevel_loss(fgfi_loss, students, teachers, anchors, gt_boxes=boxes) > 0
    total.backward()
    assert all(s.grad is not None for s in students)


def _pair(n=2):
    anchors = fgfi_grid_anchors(torch.tensor([[-4.0, -4.0, 11.0, 11.0]]), (4, 5), 8)
    return torch.randn(n, 3, 4, 5, requires_grad=True), torch.randn(n, 3, 4, 5), anchors


def test_one_box_list_for_a_batch_of_two_is_refused():
    s, t, anchors = _pair()
    with pytest.raises(ValueError, match="batch size 2"):
        fgfi_loss(s, t, anchors, [torch.tensor([[0.0, 0.0, 20.0, 20.0]])])


@pytest.mark.parametrize(
    "box, message",
    [([0.0, 0.0, float("nan"), 10.0], "non-finite"), ([0.0, float("inf"), 5.0, 10.0], "non-finite"),
     ([10.0, 0.0, 5.0, 10.0], "x2 < x1"), ([0.0, 10.0, 5.0, 0.0], "x2 < x1")],
)
def test_bad_boxes_are_refused(box, message):
    s, t, anchors = _pair()
    with pytest.raises(ValueError, match=message):
        fgfi_loss(s, t, anchors, [torch.tensor([box]), torch.zeros(0, 4)])


def test_integer_features_raise_type_error():
    _, _, anchors = _pair()
    s = torch.ones(2, 3, 4, 5, dtype=torch.long)
    with pytest.raises(TypeError, match="floating"):
        fgfi_loss(s, s, anchors, [torch.zeros(0, 4)] * 2)


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_nan_in_gives_nan_out(where):
    s, t, anchors = _pair()
    (s if where == "student" else t).data[1, 0, 0, 0] = float("nan")  # outside the mask
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 20.0]]), torch.zeros(0, 4)]
    assert torch.isnan(fgfi_loss(s, t, anchors, boxes))


def test_empty_batch_gives_a_connected_zero():
    s, t, anchors = _pair(0)
    loss = fgfi_loss(s, t, anchors, [])
    loss.backward()
    assert loss == 0 and s.grad is not None and s.grad.shape == s.shape


def test_loss_and_gradient_equal_under_both_forms():
    # eager uses the separable mask for grid anchors, torch.compile the reference one
    g = torch.Generator().manual_seed(7)
    anchors = fgfi_grid_anchors(torch.tensor([[-4.0, -4.0, 11.0, 11.0], [-12.0, -4.0, 19.0, 11.0]]), (12, 20), 8)
    student = torch.randn(2, 3, 12, 20, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 12, 20, generator=g, dtype=torch.float64)
    boxes = [torch.tensor([[5.0, 5.0, 60.0, 40.0], [100.0, 30.0, 150.0, 90.0]]), torch.tensor([[20.0, 50.0, 70.0, 95.0]])]
    eager = fgfi_loss(student, teacher, anchors, boxes)
    (grad_eager,) = torch.autograd.grad(eager, student)
    torch._dynamo.reset()
    compiled = torch.compile(fgfi_loss, backend="eager", fullgraph=True)(student, teacher, anchors, boxes)
    (grad_compiled,) = torch.autograd.grad(compiled, student)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=0, atol=0)


@pytest.mark.parity
def test_twin_owning_the_adapter_matches_official():
    f = _fixture()
    criterion = FGFILoss(student_channels=8)
    criterion.adapter_student.conv.load_state_dict({k.removeprefix("0."): v for k, v in f["adapter_state"].items()})
    assert len(list(criterion.parameters())) == 2
    criterion.double()
    anchors = fgfi_grid_anchors(f["base_anchors"], f["feature_size"], f["stride"])
    student = f["student"].double().requires_grad_(True)
    loss = criterion(student, f["teacher"].double(), anchors, f["gt_boxes"])
    loss.backward()
    torch.testing.assert_close(loss, f["loss_float64"], rtol=1e-10, atol=0)
    torch.testing.assert_close(student.grad.float(), f["grad_float64"], rtol=1e-5, atol=1e-9)
