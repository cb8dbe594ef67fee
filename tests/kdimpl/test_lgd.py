"""LGD: parity with megvii-research/LGD (dynamic teacher after the label encoder, distillation loss), gates, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kdimpl import (  # noqa: E402
    LabelEncAdapter,
    LGDKnowledgeMapper,
    LGDLabelEncoder,
    LGDRelationAdapter,
    MultiLevelLoss,
    multilevel_loss,
)
from kdimpl.adapters.lgd import lgd_mask_pool  # noqa: E402
from kdimpl.losses.labelenc import labelenc_level_weights  # noqa: E402
from kdimpl.losses.lgd import (  # noqa: E402
    LGDLoss,
    lgd_gates,
    lgd_inside_box_masks,
    lgd_label_descriptors,
    lgd_loss,
    lgd_teacher_features,
)

FIXTURE = Path(__file__).parent / "fixtures" / "lgd" / "official_lgd.pt"
C = 256
LEVELS = [(3, 4), (2, 2), (1, 2)]
IMAGE = (24, 32)
BOXES = [[[2.0, 3.0, 17.5, 15.0], [10.0, 0.0, 32.0, 24.0], [20.0, 9.0, 22.0, 12.0]],
         [[0.0, 4.0, 12.0, 20.0], [6.5, 1.5, 30.0, 11.0]]]
# ours -> official parameter names, in the order the fixture's generator filled them
NAMES = [
    ("relation_teacher.label_proj", "canoni_proj_1D.0.0"),
    ("relation_teacher.appearance_proj", "student_proj_2D.0.0"),
    ("relation_teacher.attention.in_proj", "multi_head_attn.in_proj"),
    ("relation_teacher.attention.out_proj", "multi_head_attn.out_proj"),
    ("mapper_teacher.object_proj", "local_inst_proj_1D"),
    ("mapper_teacher.context_proj", "global_ctx_proj_1D"),
    ("mapper_teacher.paint_conv", "local_inst_proj_2D"),
    ("mapper_teacher.refine.0", "refinement_module.0"),
    ("mapper_teacher.refine.3", "refinement_module.3"),
    ("mapper_teacher.refine.6", "refinement_module.6"),
]


def _pairs():
    for ours, theirs in NAMES:
        if ours.endswith("in_proj"):
            yield ours + "_weight", theirs + "_weight"
            yield ours + "_bias", theirs + "_bias"
        else:
            yield ours + ".weight", theirs + ".weight"
            yield ours + ".bias", theirs + ".bias"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _teacher_inputs(context: bool):
    generator = torch.Generator().manual_seed(100 + int(context))
    pieces = nn.ModuleDict({"relation_teacher": LGDRelationAdapter(C), "mapper_teacher": LGDKnowledgeMapper(C)})
    params = dict(pieces.named_parameters())
    with torch.no_grad():
        for ours, _ in _pairs():
            params[ours].copy_(torch.randn(params[ours].shape, generator=generator) * 0.05)
    features = [(torch.randn(2, C, h, w, generator=generator) * 2 + 0.5).requires_grad_(True) for h, w in LEVELS]
    embeddings = torch.randn(5 + 2 * context, C, generator=generator).requires_grad_(True)
    weights = [torch.randn(2, C, h, w, generator=generator) for h, w in LEVELS]
    return pieces, features, embeddings, weights


@pytest.mark.parity
@pytest.mark.parametrize("context", [False, True])
def test_teacher_features_match_official(official, context):
    tag = "ctx" if context else "noctx"
    pieces, features, embeddings, weights = _teacher_inputs(context)
    boxes = [torch.tensor(b) for b in BOXES]
    if context:  # official order per image: its boxes, then its context box
        per_image, context_embeddings = [embeddings[0:3], embeddings[4:6]], embeddings[[3, 6]]
    else:
        per_image, context_embeddings = [embeddings[0:3], embeddings[3:5]], None
    teachers = lgd_teacher_features(per_image, features, boxes, IMAGE, pieces["relation_teacher"],
                                    pieces["mapper_teacher"], context_embeddings=context_embeddings)
    sum((t * w).sum() for t, w in zip(teachers, weights)).backward()
    for level, teacher in enumerate(teachers):
        torch.testing.assert_close(teacher.detach(), official[f"{tag}_teacher{level}"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embeddings.grad, official[f"{tag}_grad_embeddings"], rtol=1e-5, atol=2e-5)
    if context:
        torch.testing.assert_close(features[0].grad, official["ctx_grad_features0"], rtol=1e-5, atol=1e-6)
    params = dict(pieces.named_parameters())
    for ours, theirs in _pairs():
        if theirs in official[f"{tag}_weight_grad"]:
            torch.testing.assert_close(params[ours].grad.flatten()[:16], official[f"{tag}_weight_grad"][theirs],
                                       rtol=1e-4, atol=1e-5)
        else:  # without the context box its projection is unused
            assert params[ours].grad is None


@pytest.mark.parity
def test_inside_box_masks_match_official(official):
    boxes = [torch.tensor(b) for b in BOXES]
    for level, size in enumerate(LEVELS):
        masks = lgd_inside_box_masks(boxes, IMAGE, size)
        for image, count in enumerate((3, 2)):
            torch.testing.assert_close(masks[image, :count].flatten(1), official[f"noctx_masks{level}"][image])
        assert masks[1, 2].sum() == 0  # padding slot


@pytest.mark.parity
@pytest.mark.parametrize("distill", [1, 0])
def test_distillation_loss_matches_official(official, distill):
    generator = torch.Generator().manual_seed(200)
    adapter = LabelEncAdapter(C)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    students = [(torch.randn(2, C, h, w, generator=generator) * (1 + i) + i).requires_grad_(True)
                for i, (h, w) in enumerate(LEVELS)]
    teachers = [torch.randn(2, C, h, w, generator=generator) * 3 - 1 for h, w in LEVELS]
    inputs = students if distill else [s.detach() for s in students]  # what lgd_gates' distill_student=False means
    criterion = MultiLevelLoss(LGDLoss(), level_weights=labelenc_level_weights(students))
    loss = criterion(inputs, teachers, adapter_student=adapter)
    loss.backward()
    torch.testing.assert_close(loss.detach(), official[f"distill{distill}_loss"], rtol=1e-6, atol=1e-7)
    for i, student in enumerate(students):
        expected = official[f"distill{distill}_student_grads"][i]
        if expected is None:
            assert student.grad is None
        else:
            torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-10)
    for name, p in adapter.named_parameters():
        torch.testing.assert_close(p.grad.flatten()[:16], official[f"distill{distill}_adapter_grad"][name],
                                   rtol=1e-4, atol=1e-9)


def test_inside_box_mask_hand_checked():
    # scaled box (0, 0, 1.75, 0.75): centre (0.875, 0.375), so only y = 0, x in {0, 1} are within half a box
    masks = lgd_inside_box_masks([torch.tensor([[0.0, 0.0, 7.0, 3.0]])], (8, 16), (2, 4))
    torch.testing.assert_close(masks[0, 0], torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]]))


def test_inside_box_masks_clamp_like_official_and_skip_empty_boxes():
    # a box past the border is clamped to width - 1 first; a zero-width box covers nothing (no NaN)
    masks = lgd_inside_box_masks([torch.tensor([[-5.0, 0.0, 40.0, 8.0], [3.0, 1.0, 3.0, 5.0]])], (8, 8), (8, 8))
    clamped = lgd_inside_box_masks([torch.tensor([[0.0, 0.0, 7.0, 7.0]])], (8, 8), (8, 8))
    torch.testing.assert_close(masks[0, 0], clamped[0, 0])
    assert masks[0, 1].sum() == 0 and torch.isfinite(masks).all()
    # per-image sizes as an (N, 2) tensor
    two = lgd_inside_box_masks([torch.tensor([[0.0, 0.0, 7.0, 3.0]])] * 2, torch.tensor([[8, 16], [16, 32]]), (2, 4))
    assert two[0].sum() == 2 and two[1].sum() == 1


def test_mask_pool_is_the_mean_of_covered_cells():
    features = torch.randn(2, 3, 4, 5)
    masks = torch.zeros(2, 2, 4, 5)
    masks[0, 0, 1:3, 2:4] = 1
    pooled = lgd_mask_pool(features, masks)
    torch.testing.assert_close(pooled[0, 0], features[0, :, 1:3, 2:4].mean(dim=(1, 2)))
    assert pooled[0, 1].abs().sum() == 0 and pooled[1].abs().sum() == 0


def test_relation_adapter_keeps_images_apart_and_image_without_boxes_is_finite():
    adapter, mapper = LGDRelationAdapter(16, num_heads=2), LGDKnowledgeMapper(16)
    features = [torch.randn(2, 16, 4, 6), torch.randn(2, 16, 2, 3)]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 16.0], [8.0, 4.0, 40.0, 30.0]]), torch.zeros(0, 4)]
    emb = [torch.randn(2, 16), torch.zeros(0, 16)]
    teachers = lgd_teacher_features(emb, features, boxes, (32, 48), adapter, mapper)
    assert all(torch.isfinite(t).all() for t in teachers)
    # image 0 alone gives the same teacher: attention does not cross images
    alone = lgd_teacher_features(emb[:1], [f[:1] for f in features], boxes[:1], (32, 48), adapter, mapper)
    for t, a in zip(teachers, alone):
        torch.testing.assert_close(t[:1], a, rtol=1e-5, atol=1e-5)


def test_teacher_features_check_inputs():
    adapter, mapper = LGDRelationAdapter(16, num_heads=2), LGDKnowledgeMapper(16)
    features = [torch.randn(1, 16, 4, 6)]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 16.0]])]
    with pytest.raises(ValueError, match="one embedding per box"):
        lgd_teacher_features([torch.randn(2, 16)], features, boxes, (32, 48), adapter, mapper)
    with pytest.raises(ValueError, match="label_embeddings has 2 images"):
        lgd_teacher_features([torch.randn(1, 16)] * 2, features, boxes, (32, 48), adapter, mapper)
    with pytest.raises(ValueError, match="x2 < x1"):
        lgd_teacher_features([torch.randn(1, 16)], features, [torch.tensor([[9.0, 0, 1, 1]])], (32, 48), adapter, mapper)
    with pytest.raises(ValueError, match="non-finite"):
        lgd_teacher_features([torch.randn(1, 16)], features, [torch.tensor([[0.0, 0, float("inf"), 1]])], (32, 48),
                             adapter, mapper)
    with pytest.raises(ValueError, match="gt_boxes has 2 images"):
        lgd_teacher_features([torch.randn(1, 16)], features, boxes * 2, (32, 48), adapter, mapper)
    with pytest.raises(ValueError, match="image_size must be finite and > 0"):
        lgd_teacher_features([torch.randn(1, 16)], features, boxes, (0, 48), adapter, mapper)
    with pytest.raises(ValueError, match="mapper_teacher is None"):
        lgd_teacher_features([torch.randn(1, 16)], features, boxes, (32, 48), adapter, None)
    with pytest.raises(ValueError, match="not \\(width, height\\)"):
        lgd_teacher_features([torch.randn(1, 16)], features, boxes, (48, 32), adapter, mapper)


def test_loss_is_the_plain_formula_and_differs_from_labelenc():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 5, 7, dtype=torch.float64), torch.randn(2, 6, 5, 7, dtype=torch.float64)

    def instance_norm(x):
        mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
        return (x - mean) / (var + 1e-5).sqrt()

    expected = (instance_norm(teacher) - instance_norm(student)).square()
    torch.testing.assert_close(lgd_loss(student, teacher, reduction="none"), expected)
    torch.testing.assert_close(lgd_loss(student, teacher), expected.mean())
    # a per-channel affine change of the student leaves it unchanged (instance normalisation)
    scale, shift = torch.rand(1, 6, 1, 1, dtype=torch.float64) + 0.5, torch.randn(1, 6, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(lgd_loss(student * scale + shift, teacher), lgd_loss(student, teacher), rtol=1e-4,
                               atol=1e-8)


def test_levels_in_one_line_and_twin_owns_one_shared_adapter():
    students = [torch.randn(2, 8, 8 // 2**i, 12 // 2**i) for i in range(3)]
    teachers = [torch.randn_like(s) for s in students]
    weights = labelenc_level_weights(students)
    criterion = MultiLevelLoss(LGDLoss(channels=8), level_weights=weights)
    adapter = criterion.losses[0].adapter_student
    expected = F.mse_loss(
        torch.cat([F.instance_norm(t).flatten(2) for t in teachers], 2),
        torch.cat([F.instance_norm(adapter(s)).flatten(2) for s in students], 2),
    )
    torch.testing.assert_close(criterion(students, teachers), expected)
    torch.testing.assert_close(
        multilevel_loss(lgd_loss, students, teachers, adapter_student=adapter, level_weights=weights), expected
    )
    assert {n for n, _ in criterion.named_parameters()} >= {"losses.0.adapter_student.0.weight"}


def test_nan_in_nan_out_empty_batch_and_checks():
    assert torch.isnan(lgd_loss(torch.full((1, 2, 3, 3), float("nan")), torch.randn(1, 2, 3, 3)))
    assert torch.isnan(lgd_loss(torch.randn(1, 2, 3, 3), torch.full((1, 2, 3, 3), float("nan"))))
    student = torch.zeros(0, 4, 3, 3, requires_grad=True)
    loss = lgd_loss(student, torch.zeros(0, 4, 3, 3), adapter_student=LabelEncAdapter(4))
    assert loss.item() == 0
    loss.backward()
    assert student.grad is not None and not student.grad.any()
    with pytest.raises(ValueError, match="same shape"):
        lgd_loss(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 4))
    with pytest.raises(TypeError, match="teacher must be a floating-point"):
        lgd_loss(torch.randn(1, 4, 3, 3), torch.ones(1, 4, 3, 3, dtype=torch.long))


def test_gates_follow_the_official_training_loop():
    # detach while iteration < 30000 or iteration > max_iter - post; freeze while iteration < 20000
    assert lgd_gates(0, 180000) == (False, True)
    assert lgd_gates(19999, 180000) == (False, True)
    assert lgd_gates(20000, 180000) == (False, False)
    assert lgd_gates(29999, 180000) == (False, False)
    assert lgd_gates(30000, 180000) == (True, False)
    assert lgd_gates(179999, 180000) == (True, False)
    assert lgd_gates(130000, 180000, post_nondistill_iters=50000) == (True, False)
    assert lgd_gates(130001, 180000, post_nondistill_iters=50000) == (False, False)
    assert lgd_gates(39999, 90000, pre_nondistill_iters=40000, freeze_backbone_iters=10000) == (False, False)


CLASSES = [[3, 79, 0], [41, 3]]  # detectron2's 0-based foreground classes


def _official_order(context):
    """(image, slot) of the official flat order: per image its boxes, then its context box (our slot 0)."""
    if context:
        return [(0, 1), (0, 2), (0, 3), (0, 0), (1, 1), (1, 2), (1, 0)]
    return [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


@pytest.mark.parity
@pytest.mark.parametrize("context", [False, True])
def test_label_descriptors_and_encoder_match_official(context):
    official = torch.load(FIXTURE.with_name("official_lgd_encoder.pt"), weights_only=True)
    tag = "ctx" if context else "noctx"
    descriptors, valid = lgd_label_descriptors([torch.tensor(b) for b in BOXES], [torch.tensor(c) for c in CLASSES],
                                               IMAGE, 81, background_index=-1, context_box=context)
    order = _official_order(context)
    flat = torch.stack([descriptors[i, j] for i, j in order])
    torch.testing.assert_close(flat, official[f"{tag}_descriptors"], rtol=0, atol=0)
    assert valid.sum() == len(order)
    generator = torch.Generator().manual_seed(300 + int(context))
    encoder = LGDLabelEncoder(80, C)
    with torch.no_grad():  # the official parameter order (STN of descriptors, STN of features, conv1..conv4)
        for p in encoder.parameters():
            p.copy_(torch.randn(p.numel(), generator=generator).view_as(p) * 0.1)
    embeddings = encoder(descriptors, valid)
    flat = torch.stack([embeddings[i, j] for i, j in order])
    (flat * official[f"{tag}_weights"]).sum().backward()
    torch.testing.assert_close(flat.detach(), official[f"{tag}_embeddings"], rtol=1e-5, atol=2e-5)
    for (name, p), theirs in zip(encoder.named_parameters(), official[f"{tag}_grad_sum"]):
        torch.testing.assert_close(p.grad.flatten()[:16], official[f"{tag}_grad"][theirs], rtol=1e-3, atol=1e-4)


def test_label_descriptors_conventions_and_checks():
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 8.0]])]
    torchvision_style = lgd_label_descriptors(boxes, [torch.tensor([2])], (16, 32), 4)[0]
    mmdet_style = lgd_label_descriptors(boxes, [torch.tensor([1])], (16, 32), 4, background_index=-1)[0]
    torch.testing.assert_close(torchvision_style, mmdet_style)
    # padding slots are zeros and not valid; the context box is slot 0 of every image, without a class
    descriptors, valid = lgd_label_descriptors(boxes + [torch.zeros(0, 4)], [torch.tensor([2]), torch.zeros(0, dtype=torch.long)],
                                               (16, 32), 4, context_box=True)
    assert valid.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(descriptors[1, 0], torch.tensor([-1.0, -1.0, 31 / 16 - 1, 15 / 8 - 1, -1.0, -1.0, -1.0]))
    assert descriptors[1, 1].abs().sum() == 0
    with pytest.raises(ValueError, match="background class 0"):
        lgd_label_descriptors(boxes, [torch.tensor([0])], (16, 32), 4)
    with pytest.raises(ValueError, match=r"labels\[0\] must hold one label per box"):
        lgd_label_descriptors(boxes, [torch.tensor([1, 2])], (16, 32), 4)
    with pytest.raises(ValueError, match="x2 < x1"):
        lgd_label_descriptors([torch.tensor([[9.0, 0.0, 1.0, 8.0]])], [torch.tensor([1])], (16, 32), 4)


def test_label_encoder_pools_within_images_and_ignores_padding():
    torch.manual_seed(0)
    encoder = LGDLabelEncoder(num_classes=3, channels=16)
    descriptors = torch.rand(2, 4, 7) * 2 - 1
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    out = encoder(descriptors, valid)
    assert out[~valid].abs().sum() == 0
    alone = encoder(descriptors[:1, :3], valid[:1, :3])  # padding and the other image change nothing
    torch.testing.assert_close(out[:1, :3], alone, rtol=1e-5, atol=1e-6)
    empty = encoder(descriptors, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(empty).all() and empty.abs().sum() == 0


def test_label_encoder_feeds_the_teacher_end_to_end():
    encoder, relation, mapper = LGDLabelEncoder(3, 16), LGDRelationAdapter(16, num_heads=2), LGDKnowledgeMapper(16)
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0], [30, 8, 60, 40]])]
    labels = [torch.tensor([1]), torch.tensor([3, 2])]
    descriptors, valid = lgd_label_descriptors(boxes, labels, (64, 96), 4, context_box=True)
    embeddings = encoder(descriptors, valid)
    features = [torch.randn(2, 16, 8 // 2**l, 12 // 2**l, requires_grad=True) for l in range(2)]
    teachers = lgd_teacher_features(embeddings[:, 1:], features, boxes, (64, 96), relation, mapper,
                                    context_embeddings=embeddings[:, 0])
    sum(t.sum() for t in teachers).backward()
    assert all(p.grad is not None for p in encoder.parameters())
