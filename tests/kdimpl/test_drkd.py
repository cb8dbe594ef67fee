"""DRKD: parity with the official KD block, RoIAlign against a per-box reference, hand-checkable cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl.adapters.drkd import GloReUnit, InstanceRelation  # noqa: E402
from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.losses.drkd import DRKDInstanceLoss, DRKDPixelLoss, drkd_instance_loss, drkd_pixel_loss  # noqa: E402
from kdimpl.masks import pad_boxes  # noqa: E402
from kdimpl.ops import roi_align_padded  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "drkd" / "official_kd_block.pt"


# ---------------------------------------------------------------- RoIAlign reference (naive loops)
def _bilinear(feature, y, x):
    """torchvision's CPU kernel for one sample of a (C, H, W) map."""
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(feature.shape[0], dtype=feature.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    f = feature
    return (
        hy * hx * f[:, y_low, x_low]
        + hy * lx * f[:, y_low, x_high]
        + ly * hx * f[:, y_high, x_low]
        + ly * lx * f[:, y_high, x_high]
    )


def _roi_align_reference(feature, box, scale_x, scale_y, k=3, samples_per_bin=-1):
    x1, y1, x2, y2 = (float(v) for v in box)
    start_x, start_y = x1 * scale_x, y1 * scale_y
    roi_w, roi_h = max(x2 * scale_x - start_x, 1.0), max(y2 * scale_y - start_y, 1.0)
    bin_w, bin_h = roi_w / k, roi_h / k
    grid_h = samples_per_bin if samples_per_bin > 0 else math.ceil(roi_h / k)
    grid_w = samples_per_bin if samples_per_bin > 0 else math.ceil(roi_w / k)
    out = torch.zeros(feature.shape[0], k, k, dtype=feature.dtype)
    for py in range(k):
        for px in range(k):
            acc = torch.zeros(feature.shape[0], dtype=feature.dtype)
            for iy in range(grid_h):
                y = start_y + py * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_x + px * bin_w + (ix + 0.5) * bin_w / grid_w
                    acc = acc + _bilinear(feature, y, x)
            out[:, py, px] = acc / max(grid_h * grid_w, 1)
    return out


@pytest.mark.parametrize("samples_per_bin", [-1, 2])
def test_roi_align_matches_per_box_reference(samples_per_bin):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 9, 14, generator=g, dtype=torch.float64)
    image_size = (36, 70)  # scale 1/4 on y, 1/5 on x: the axes must not be swapped
    boxes = [
        torch.tensor(
            [[0.0, 0.0, 70.0, 36.0], [5.0, 3.0, 6.0, 3.5], [-8.0, -6.0, 20.0, 10.0], [50.0, 20.0, 80.0, 44.0]]
        ),
        torch.tensor([[12.3, 7.7, 48.9, 30.1]]),
    ]
    padded, valid = pad_boxes([b.double() for b in boxes])
    ours = roi_align_padded(features, padded, image_size, 3, samples_per_bin=samples_per_bin)
    for n, image_boxes in enumerate(boxes):
        for j, box in enumerate(image_boxes):
            expected = _roi_align_reference(features[n], box, 14 / 70, 9 / 36, samples_per_bin=samples_per_bin)
            torch.testing.assert_close(ours[n, j], expected, rtol=1e-10, atol=1e-10)


def test_roi_align_adaptive_cap_only_affects_large_boxes():
    features = torch.randn(1, 2, 40, 40, dtype=torch.float64)
    boxes = torch.tensor([[[0.0, 0.0, 90.0, 90.0], [0.0, 0.0, 30.0, 30.0]]], dtype=torch.float64)  # 30 and 10 cells
    capped = roi_align_padded(features, boxes, (120, 120), 3, max_samples_per_bin=8)
    exact = roi_align_padded(features, boxes, (120, 120), 3, max_samples_per_bin=10)
    reference = _roi_align_reference(features[0], boxes[0, 0], 1 / 3, 1 / 3)
    torch.testing.assert_close(exact[0, 0], reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(capped[0, 1], exact[0, 1], rtol=0, atol=0)  # 10 cells -> 4 samples, below the cap
    assert not torch.allclose(capped[0, 0], exact[0, 0])  # 30 cells -> 10 samples, capped to 8


# ---------------------------------------------------------------- hand-checkable cases
def _identity_glore(channels, nodes):
    unit = GloReUnit(channels, nodes)
    with torch.no_grad():
        unit.norm.weight.zero_()
        unit.norm.bias.zero_()
    return unit


def test_pixel_loss_with_identity_units_is_the_frobenius_norm():
    s, t = torch.randn(2, 4, 5, 7), torch.randn(2, 4, 5, 7)
    unit = _identity_glore(4, 2)
    loss = drkd_pixel_loss(s, t, glore_student=unit, glore_teacher=unit)
    torch.testing.assert_close(loss, ((s - t) ** 2).sum().sqrt())
    per_image = drkd_pixel_loss(s, t, per_image=True, reduction="none")
    torch.testing.assert_close(per_image, ((s - t) ** 2).sum(dim=(1, 2, 3)).sqrt())


def test_pixel_loss_trains_the_teacher_unit_but_not_the_teacher_features():
    s, t = torch.randn(2, 4, 5, 7, requires_grad=True), torch.randn(2, 4, 5, 7, requires_grad=True)
    teacher_unit = GloReUnit(4, 2)
    drkd_pixel_loss(s, t, glore_student=GloReUnit(4, 2), glore_teacher=teacher_unit).backward()
    assert t.grad is None
    assert teacher_unit.state.weight.grad is not None and teacher_unit.state.weight.grad.abs().sum() > 0


def test_pixel_loss_on_precomputed_relation_features_equals_the_full_loss():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 5, 7, requires_grad=True), torch.randn(2, 4, 5, 7)
    units = [GloReUnit(4, 2), GloReUnit(4, 2)]
    adaptation = torch.nn.Conv2d(4, 4, 1)
    full = drkd_pixel_loss(s, t, glore_student=units[0], glore_teacher=units[1], adapter_student=adaptation)
    full.backward()
    expected = [p.grad.clone() for p in [s, *units[0].parameters(), *units[1].parameters(), *adaptation.parameters()]]
    for p in [s, *units[0].parameters(), *units[1].parameters(), *adaptation.parameters()]:
        p.grad = None

    part = drkd_pixel_loss(adaptation(units[0](s)), units[1](t.detach()), detach_teacher=False)
    part.backward()
    actual = [p.grad for p in [s, *units[0].parameters(), *units[1].parameters(), *adaptation.parameters()]]
    torch.testing.assert_close(part, full, rtol=0, atol=0)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    # Detached (the default), the precomputed teacher side would leave the teacher unit untrained.
    units[1].zero_grad(set_to_none=True)
    drkd_pixel_loss(units[0](s), units[1](t)).backward()
    assert units[1].state.weight.grad is None


def test_pixel_loss_per_image_zero_norm_has_zero_gradient():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 4, 5, 7, generator=g, requires_grad=True)
    t = torch.randn(3, 4, 5, 7, generator=g)
    with torch.no_grad():
        s[1] = t[1]
    loss = drkd_pixel_loss(s, t, per_image=True)
    loss.backward()
    diff = (s - t).detach()
    norms = diff.flatten(1).norm(dim=1)
    torch.testing.assert_close(loss, norms.sum())  # 'mean' is the official sum of norms
    assert torch.equal(s.grad[1], torch.zeros_like(s.grad[1]))
    torch.testing.assert_close(s.grad[0], diff[0] / norms[0])


def test_pixel_loss_compiles_on_precomputed_relation_features():
    # aot_eager partitions forward and backward like inductor, so the checkpointed difference is exercised.
    s, t = torch.randn(2, 4, 5, 7, requires_grad=True), torch.randn(2, 4, 5, 7, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda a, b: drkd_pixel_loss(a, b, detach_teacher=False, per_image=True, reduction="sum"),
        backend="aot_eager",
        fullgraph=True,
    )
    loss = compiled(s, t)
    loss.backward()
    diff = (s - t).detach()
    norms = diff.flatten(1).norm(dim=1)
    torch.testing.assert_close(loss, norms.sum())
    torch.testing.assert_close(s.grad, diff / norms[:, None, None, None])
    torch.testing.assert_close(t.grad, -s.grad)


def test_instance_relation_ignores_padding():
    torch.manual_seed(0)
    rel = InstanceRelation(18, max_instances=6)
    x = torch.randn(1, 3, 18)
    padded = torch.cat([x, 100 * torch.randn(1, 2, 18)], dim=1)
    valid = torch.tensor([[True, True, True, False, False]])
    torch.testing.assert_close(rel(padded, valid)[:, :3], rel(x, torch.ones(1, 3, dtype=torch.bool)))


def test_instance_relation_single_instance_attends_to_itself():
    rel = InstanceRelation(8, relation_filter="none")
    x = torch.randn(1, 1, 8)
    expected = x + rel.out(rel.g(x))
    torch.testing.assert_close(rel(x, torch.ones(1, 1, dtype=torch.bool)), expected)


def test_instance_relation_random_filter_is_redrawn_every_call():
    rel = InstanceRelation(8, relation_filter="random")
    x, valid = torch.randn(1, 4, 8), torch.ones(1, 4, dtype=torch.bool)
    assert not torch.allclose(rel(x, valid), rel(x, valid))
    seeded = [InstanceRelation(8, relation_filter="random", rng=torch.Generator().manual_seed(3)) for _ in range(2)]
    seeded[1].load_state_dict(seeded[0].state_dict())
    torch.testing.assert_close(seeded[0](x, valid), seeded[1](x, valid))


def test_instance_relation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="relation_filter"):
        InstanceRelation(8, relation_filter="trained")
    with pytest.raises(ValueError, match="max_instances"):
        InstanceRelation(8, max_instances=2)(torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool))


def test_instance_loss_without_modules_is_the_norm_of_pooled_differences():
    s, t = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 12.0], [8.0, 4.0, 30.0, 20.0]]), torch.zeros(0, 4)]
    per_image = drkd_instance_loss(s, t, boxes, (24, 32), feature_weight=0.5, reduction="none")
    pooled = roi_align_padded(s - t, pad_boxes(boxes)[0], (24, 32))  # RoIAlign is linear in the features
    expected = 1.5 * pooled[0].pow(2).sum().sqrt()
    torch.testing.assert_close(per_image, torch.stack([expected, torch.zeros(())]))


def test_instance_loss_with_no_boxes_at_all_is_zero_with_zero_gradient():
    s = torch.randn(2, 3, 6, 8, requires_grad=True)
    loss = drkd_instance_loss(s, torch.randn(2, 3, 6, 8), [torch.zeros(0, 4)] * 2, (24, 32),
                              relation_student=InstanceRelation(27), relation_teacher=InstanceRelation(27))
    loss.backward()
    assert loss == 0 and torch.equal(s.grad, torch.zeros_like(s))


# ---------------------------------------------------------------- parity with the official code
def _official_setup():
    fx = torch.load(FIXTURE, weights_only=True)
    sd, channels = fx["state_dict"], fx["student"][0].shape[1]

    def sub(prefix):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    def glore(side, i):
        unit = GloReUnit(channels, fx["nodes"][i])
        unit.load_state_dict(GloReUnit.convert_official_state_dict(sub(f"{side}.{i}.")))
        return unit.train()  # the official loss runs in training mode: batch statistics

    def conv(name, i):
        layer = torch.nn.Conv2d(channels, channels, 1)
        layer.load_state_dict(sub(f"{name}.{i}."))
        return layer

    def relation(side, i):
        module = InstanceRelation(channels * 9, max_instances=fx["filters"][f"{side}.{i}"][0].shape[0])
        state = InstanceRelation.convert_official_state_dict(sub(f"{side}.{i}."))
        state["filter.weight"], state["filter.bias"] = fx["filters"][f"{side}.{i}"]
        module.load_state_dict(state)
        return module

    return fx, glore, conv, relation


@pytest.mark.parity
def test_parity_with_official_kd_block():
    fx, glore, conv, relation = _official_setup()
    student = [s.clone().requires_grad_(True) for s in fx["student"]]
    teacher = fx["teacher"]
    pixel = 1e-3 * sum(
        drkd_pixel_loss(
            student[i],
            teacher[i],
            glore_student=glore("student_non_local", i),
            glore_teacher=glore("teacher_non_local", i),
            adapter_student=conv("non_local_adaptation", i),
        )
        for i in range(5)
    )
    torch.testing.assert_close(pixel, fx["kd_glore_loss"], rtol=1e-5, atol=0)

    relation_terms, feature_terms = [], []
    for i in range(2):
        # The official loop pools every image's boxes from image 0 (see drkd_instance_loss Notes).
        s0, t0 = student[i][:1].expand_as(student[i]), teacher[i][:1].expand_as(teacher[i])
        common = dict(
            relation_student=relation("student_relation", i),
            relation_teacher=relation("teacher_relation", i),
            relation_adapter_student=conv("relation_adaptation", i),
            reduction="sum",
        )
        relation_terms.append(drkd_instance_loss(s0, t0, fx["boxes"], fx["image_size"], feature_weight=0.0, **common))
        feature_terms.append(
            drkd_instance_loss(s0, t0, fx["boxes"], fx["image_size"], feature_adapter_student=conv("for_adaptation", i),
                               feature_weight=1.0, reduction="sum")
            - drkd_instance_loss(s0, t0, fx["boxes"], fx["image_size"], feature_weight=0.0, reduction="sum")
        )
        both = drkd_instance_loss(s0, t0, fx["boxes"], fx["image_size"], feature_adapter_student=conv("for_adaptation", i),
                                  feature_weight=0.6, **common)
        torch.testing.assert_close(both, relation_terms[-1] + 0.6 * feature_terms[-1], rtol=1e-5, atol=0)
    torch.testing.assert_close(0.004 * sum(relation_terms), fx["kd_relation_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(0.0024 * sum(feature_terms), fx["kd_fore_loss"], rtol=1e-5, atol=0)

    total = pixel + 0.004 * sum(relation_terms) + 0.0024 * sum(feature_terms)
    total.backward()
    for ours, official in zip(student, fx["student_grad"]):
        torch.testing.assert_close(ours.grad, official, rtol=1e-5, atol=1e-5 * official.abs().max().item())


@pytest.mark.parity
def test_parity_roi_align_with_torchvision():
    fx = torch.load(FIXTURE, weights_only=True)
    boxes, _ = pad_boxes(fx["boxes"])
    for level in range(2):
        ours = roi_align_padded(fx["student"][level], boxes, fx["image_size"])[0, : len(fx["boxes"][0])]
        torch.testing.assert_close(ours, fx["pooled_image0"][level], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- levels and learnable pieces
def test_pixel_twins_own_every_levels_pieces():
    criterion = MultiLevelLoss([DRKDPixelLoss(channels=4, num_nodes=n) for n in (2, 2, 3)], loss_weight=1e-3)
    owned = {id(p) for p in criterion.parameters()}
    for level in criterion.losses:
        for piece in (level.glore_student, level.glore_teacher, level.adapter_student):
            assert all(id(p) in owned for p in piece.parameters())
    assert len(owned) == sum(len(list(level.parameters())) for level in criterion.losses)
    g = torch.Generator().manual_seed(0)
    students = [torch.randn(2, 4, 8 // 2**i, 10 // 2**i, generator=g) for i in range(3)]
    teachers = [torch.randn(2, 4, 8 // 2**i, 10 // 2**i, generator=g) for i in range(3)]
    total = criterion(students, teachers)
    expected = 1e-3 * sum(
        drkd_pixel_loss(s, t, glore_student=level.glore_student, glore_teacher=level.glore_teacher,
                        adapter_student=level.adapter_student)
        for s, t, level in zip(students, teachers, criterion.losses)
    )
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is not None for level in criterion.losses for p in level.glore_teacher.parameters()
               if p.requires_grad and p.dim() > 1)


def test_instance_loss_over_three_levels_with_boxes_given_once():
    torch.manual_seed(0)
    criterion = MultiLevelLoss([DRKDInstanceLoss(channels=3, max_instances=4) for _ in range(3)])
    owned = {id(p) for p in criterion.parameters()}
    for level in criterion.losses:
        for name in ("relation_student", "relation_teacher", "relation_adapter_student", "feature_adapter_student"):
            assert all(id(p) in owned for p in getattr(level, name).parameters())
    students = [torch.randn(2, 3, 16 // 2**i, 24 // 2**i, requires_grad=True) for i in range(3)]
    teachers = [torch.randn(2, 3, 16 // 2**i, 24 // 2**i) for i in range(3)]
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 40.0], [30.0, 0.0, 90.0, 30.0]]), torch.tensor([[0.0, 0.0, 96.0, 64.0]])]
    total = criterion(students, teachers, gt_boxes=boxes, image_size=(64, 96))
    expected = multilevel_loss(list(criterion.losses), students, teachers, gt_boxes=boxes, image_size=(64, 96))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)


# ---------------------------------------------------------------- input checks
def _instance_pair(n=2):
    return torch.randn(n, 3, 6, 8, requires_grad=True), torch.randn(n, 3, 6, 8)


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([torch.tensor([[0.0, 0.0, float("nan"), 10.0]]), torch.zeros(0, 4)], "non-finite"),
        ([torch.tensor([[0.0, float("-inf"), 5.0, 10.0]]), torch.zeros(0, 4)], "non-finite"),
        ([torch.tensor([[10.0, 0.0, 5.0, 10.0]]), torch.zeros(0, 4)], "x2 < x1"),
        ([torch.tensor([[0.0, 0.0, 5.0, 10.0]])], "batch size 2"),
    ],
)
def test_instance_loss_refuses_bad_boxes_before_roi_align(boxes, message):
    # a NaN box used to crash the process in grid_sample's backward; it must be refused up front
    s, t = _instance_pair()
    with pytest.raises(ValueError, match=message):
        drkd_instance_loss(s, t, boxes, (24, 32), relation_student=InstanceRelation(27),
                           relation_teacher=InstanceRelation(27))


@pytest.mark.parametrize("image_size", [(0, 0), (float("nan"), 32), (24, -32), (32, 24)])
def test_instance_loss_refuses_bad_image_size_before_roi_align(image_size):
    s, t = _instance_pair()
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 12.0]]), torch.zeros(0, 4)]
    with pytest.raises(ValueError, match="image_size"):
        drkd_instance_loss(s, t, boxes, image_size)


def test_roi_align_gives_nan_not_a_crash_for_unchecked_boxes():
    features = torch.randn(1, 2, 6, 8, requires_grad=True)
    pooled = roi_align_padded(features, torch.tensor([[[0.0, 0.0, float("nan"), 10.0]]]), (24, 32))
    pooled.sum().backward()
    assert torch.isnan(pooled).all()


def test_integer_features_raise_type_error():
    s = torch.ones(2, 3, 6, 8, dtype=torch.long)
    with pytest.raises(TypeError, match="floating"):
        drkd_pixel_loss(s, s)
    with pytest.raises(TypeError, match="floating"):
        drkd_instance_loss(s, s, [torch.zeros(0, 4)] * 2, (24, 32))


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_nan_in_gives_nan_out(where):
    s, t = _instance_pair()
    (s if where == "student" else t).data[0, 1, 2, 3] = float("nan")
    assert torch.isnan(drkd_pixel_loss(s, t))
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 24.0]]), torch.zeros(0, 4)]
    assert torch.isnan(drkd_instance_loss(s, t, boxes, (24, 32)))


def test_empty_batch_gives_a_connected_zero():
    s, t = torch.randn(0, 3, 6, 8, requires_grad=True), torch.randn(0, 3, 6, 8)
    for loss in (drkd_pixel_loss(s, t), drkd_pixel_loss(s, t, per_image=True),
                 drkd_instance_loss(s, t, [], (24, 32))):
        s.grad = None
        loss.backward()
        assert loss == 0 and s.grad is not None and s.grad.shape == s.shape
