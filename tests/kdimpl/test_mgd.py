"""MGD: parity with yzd-v/MGD and mmrazor, explicit randomness, hand-checkable cases."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kdimpl import ChannelAdapter, MGDGenerator, MultiLevelLoss, PerLevel, multilevel_loss  # noqa: E402
from kdimpl.checkpoints import mgd_state_dict  # noqa: E402
from kdimpl.losses.mgd import MGDLoss, mgd_loss, mgd_random_mask  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "mgd" / "official_mgd.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parity
@pytest.mark.parametrize(
    "tag, student_key, seed, ratio",
    [("yzdv", "student", 4, 0.65), ("yzdv_align", "student_3ch", 6, 0.45), ("mmrazor", "student", 8, 0.65)],
)
def test_matches_official(official, tag, student_key, seed, ratio):
    generator = MGDGenerator(4)
    generator.load_state_dict(official[f"{tag}_generation"])
    student = official[student_key].clone().requires_grad_(True)
    aligned = student
    if f"{tag}_align" in official:
        adapter = ChannelAdapter(3, 4)
        adapter.proj.load_state_dict(official[f"{tag}_align"])
        aligned = adapter(student)
    # a CPU generator with the official seed draws the official mask
    mask = mgd_random_mask(aligned, ratio, rng=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(mask, official[f"{tag}_mask"], rtol=0, atol=0)
    loss = MGDLoss(mask_ratio=ratio, loss_weight=2e-5)(aligned, official["teacher"], generator, mask=mask)
    loss.backward()
    torch.testing.assert_close(loss.detach(), official[f"{tag}_loss"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(student.grad, official[f"{tag}_grad"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(generator[0].weight.grad, official[f"{tag}_generation_grad0"], rtol=1e-5, atol=1e-9)
    if f"{tag}_align" in official:  # the same numbers with the adapter passed to the loss
        student_grad, student.grad = student.grad, None
        value = 2e-5 * mgd_loss(student, official["teacher"], generator, mask, adapter_student=adapter)
        value.backward()
        torch.testing.assert_close(value.detach(), loss.detach(), rtol=0, atol=0)
        torch.testing.assert_close(student.grad, student_grad, rtol=0, atol=0)


@pytest.mark.parity
def test_rng_argument_reproduces_official_without_mask(official):
    generator = MGDGenerator(4)
    generator.load_state_dict(official["yzdv_generation"])
    loss = 2e-5 * mgd_loss(official["student"], official["teacher"], generator, rng=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss.detach(), official["yzdv_loss"], rtol=1e-5, atol=1e-9)


@pytest.mark.parity
def test_twin_built_with_channels_owns_the_official_pieces(official):
    # the official FeatureLoss(student_channels=3, teacher_channels=4): align conv, then generation
    loss = MGDLoss(student_channels=3, teacher_channels=4, mask_ratio=0.45, loss_weight=2e-5)
    checkpoint = {"state_dict": {  # the official distiller's keys for this FeatureLoss
        **{f"distill_losses.loss_mgd_fpn_0.generation.{k}": v for k, v in official["yzdv_align_generation"].items()},
        **{f"distill_losses.loss_mgd_fpn_0.align.{k}": v for k, v in official["yzdv_align_align"].items()},
    }}
    loss.load_state_dict(mgd_state_dict(checkpoint, "distill_losses.loss_mgd_fpn_0."))
    student = official["student_3ch"].clone().requires_grad_(True)
    value = loss(student, official["teacher"], rng=torch.Generator().manual_seed(6))
    value.backward()
    torch.testing.assert_close(value.detach(), official["yzdv_align_loss"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(student.grad, official["yzdv_align_grad"], rtol=1e-5, atol=1e-9)
    names = {name for name, _ in loss.named_parameters()}
    assert {"generator_student.0.weight", "adapter_student.proj.weight"} <= names
    assert not hasattr(MGDLoss(teacher_channels=4), "adapter_student")  # equal widths: no adapter


def test_per_level_pieces_over_levels_in_one_line():
    students = [torch.randn(2, 3, 12 // 2**i, 20 // 2**i) for i in range(3)]
    teachers = [torch.randn(2, 4, *s.shape[2:]) for s in students]
    criterion = MultiLevelLoss([MGDLoss(student_channels=3, teacher_channels=4) for _ in students], loss_weight=2e-5)
    params = list(criterion.parameters())
    assert len(params) == 3 * (4 + 2)  # per level: two generator convs and the adapter conv, weight and bias
    value = criterion(students, teachers, rng=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(0)
    expected = 2e-5 * sum(
        mgd_loss(s, t, m.generator_student, adapter_student=m.adapter_student, rng=rng)
        for s, t, m in zip(students, teachers, criterion.losses)
    )
    torch.testing.assert_close(value, expected)
    value.backward()
    assert all(p.grad is not None for p in params)
    # the function form: per-level generators and masks as per-level sequences
    generators = [MGDGenerator(4) for _ in students]
    masks = [mgd_random_mask(t, 0.5, rng=torch.Generator().manual_seed(i)) for i, t in enumerate(teachers)]
    aligned = [ChannelAdapter(3, 4)(s) for s in students]
    total = multilevel_loss(mgd_loss, aligned, teachers, generators, masks)
    torch.testing.assert_close(total, sum(mgd_loss(*a) for a in zip(aligned, teachers, generators, masks)))
    # the module form, which holds each level's generator: per-level masks by keyword
    owned = criterion(students, teachers, mask=PerLevel(masks))
    expected = 2e-5 * sum(mgd_loss(s, t, m.generator_student, mask, adapter_student=m.adapter_student)
                          for s, t, m, mask in zip(students, teachers, criterion.losses, masks))
    torch.testing.assert_close(owned, expected)
    with pytest.raises(ValueError, match="mask has 2 per-level entries for 3 levels"):
        criterion(students, teachers, mask=PerLevel(masks[:2]))


def test_identity_generator_gives_masked_sum_of_squares_over_batch():
    s, t = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    mask = (torch.rand(3, 1, 4, 5) > 0.5).float()
    expected = ((s * mask - t) ** 2).sum() / 3
    torch.testing.assert_close(mgd_loss(s, t, nn.Identity(), mask=mask), expected)
    elements = mgd_loss(s, t, nn.Identity(), mask=mask, reduction="none")
    torch.testing.assert_close(elements, (s * mask - t) ** 2)
    torch.testing.assert_close(elements.sum(), expected * 3)


def test_channel_mask_broadcasts():
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    mask = mgd_random_mask(s, 0.5, rng=torch.Generator().manual_seed(0), per_channel=True)
    assert mask.shape == (2, 3, 1, 1)
    torch.testing.assert_close(mgd_loss(s, t, nn.Identity(), mask=mask), ((s * mask - t) ** 2).sum() / 2)


def test_mask_ratio_extremes_and_frequency():
    x = torch.randn(4, 2, 50, 60)
    assert mgd_random_mask(x, 0.0).min() == 1
    assert mgd_random_mask(x, 1.0).max() == 0
    kept = mgd_random_mask(x, 0.65, rng=torch.Generator().manual_seed(1)).mean()
    assert abs(float(kept) - 0.35) < 0.02


def test_same_rng_seed_same_loss_and_module_without_channels_owns_nothing():
    s, t = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    generator = MGDGenerator(4)
    module = MGDLoss()
    a = module(s, t, generator, rng=torch.Generator().manual_seed(3))
    b = module(s, t, generator, rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not list(module.parameters())
    seeded = MGDLoss(rng=torch.Generator().manual_seed(3))  # a stored rng draws the same masks
    torch.testing.assert_close(seeded(s, t, generator), a, rtol=0, atol=0)


def test_generator_weights_are_trained():
    s, t = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    generator = MGDGenerator(4)
    mgd_loss(s, t, generator, rng=torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


def test_rejects_bad_inputs():
    s, t = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    with pytest.raises(ValueError, match="mask"):
        mgd_loss(s, t, nn.Identity(), mask=torch.ones(2, 1, 5, 7))
    with pytest.raises(ValueError, match="generator_student returned"):
        mgd_loss(s, t, nn.Conv2d(4, 3, 1), mask=torch.ones(2, 1, 6, 7))
    with pytest.raises(ValueError, match="mask_ratio"):
        MGDLoss(mask_ratio=1.5)
    with pytest.raises(ValueError, match="channels"):
        MGDGenerator(0)
    with pytest.raises(ValueError, match="teacher_channels"):
        MGDLoss(student_channels=3)
    with pytest.raises(ValueError, match="Channels differ"):
        mgd_loss(torch.randn(2, 3, 6, 7), t, nn.Identity())


def test_empty_batch_with_owned_pieces_and_masked_out_nan():
    student = torch.randn(0, 3, 6, 7, requires_grad=True)
    loss = MGDLoss(student_channels=3, teacher_channels=4)(student, torch.randn(0, 4, 6, 7))
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad.shape == student.shape
    s, t = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    s[0, :, 0, 0] = float("nan")
    mask = torch.ones(2, 1, 6, 7)
    mask[0, :, 0, 0] = 0.0
    assert torch.isnan(mgd_loss(s, t, nn.Identity(), mask))  # a masked-out NaN still gives NaN (NaN * 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_the_official_mse_form(dtype):
    # the official form: F.mse_loss(generated, teacher, reduction="sum") / N on float32 upcasts
    s0, t = torch.randn(2, 3, 5, 7).to(dtype), torch.randn(2, 3, 5, 7).to(dtype)
    mask = mgd_random_mask(s0, 0.5, rng=torch.Generator().manual_seed(0))
    s = s0.clone().requires_grad_(True)
    mgd_loss(s, t, nn.Identity(), mask=mask).float().backward()
    s_ref = s0.clone().requires_grad_(True)
    ref = F.mse_loss(s_ref.float() * mask.float(), t.float(), reduction="sum") / 2
    ref.to(dtype).float().backward()
    torch.testing.assert_close(mgd_loss(s0, t, nn.Identity(), mask=mask), ref.to(dtype))
    torch.testing.assert_close(s.grad, s_ref.grad)


@pytest.mark.parametrize("generator", [nn.Identity(), nn.Conv2d(3, 3, 1).double()])
def test_second_order_gradients(generator):
    s = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mask = mgd_random_mask(s, 0.5, rng=torch.Generator().manual_seed(1))
    assert torch.autograd.gradgradcheck(lambda x: mgd_loss(x, t, generator, mask=mask, reduction="none"), (s,))
