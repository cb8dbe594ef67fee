"""CLIPSelf: parity with wusize/CLIPSelf (loss and student gradient), the region pooling against a RoIAlign loop, checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, multilevel_loss  # noqa: E402
from kdimpl.distributed import distributed_behaviour  # noqa: E402
from kdimpl.losses.clipself import CLIPSelfLoss, clipself_loss, clipself_region_embeddings  # noqa: E402

from .test_drkd import _bilinear  # noqa: E402  torchvision's bilinear sampling, as loops

FIXTURE = Path(__file__).parent / "fixtures" / "clipself" / "official_clipself.pt"


@pytest.mark.parity
def test_matches_official():
    official = torch.load(FIXTURE, weights_only=True)
    student = official["student"].clone().requires_grad_(True)
    loss = CLIPSelfLoss()(student, official["teacher"], valid_mask=official["valid_mask"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["loss"], rtol=1e-12, atol=0)
    torch.testing.assert_close(student.grad, official["student_grad"], rtol=1e-10, atol=1e-15)


def _roi_align_loop(dense, box, scale_x, scale_y):
    """torchvision's RoIAlign forward, (1, 1) output, aligned=True, sampling_ratio=-1, written as loops."""
    x1, y1, x2, y2 = (float(v) for v in box)
    start_x, start_y = x1 * scale_x - 0.5, y1 * scale_y - 0.5
    roi_w, roi_h = (x2 - x1) * scale_x, (y2 - y1) * scale_y
    grid_h, grid_w = math.ceil(roi_h), math.ceil(roi_w)
    count = max(grid_h * grid_w, 1)
    total = torch.zeros(dense.shape[0], dtype=dense.dtype)
    for iy in range(grid_h):
        for ix in range(grid_w):
            total += _bilinear(dense, start_y + (iy + 0.5) * roi_h / grid_h, start_x + (ix + 0.5) * roi_w / grid_w)
    return total / count


def test_region_embeddings_match_roi_align_loop():
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(2, 5, 6, 9, generator=generator, dtype=torch.float64)
    image_size = (48, 72)  # stride 8
    boxes = [
        torch.tensor([[0.0, 0.0, 72.0, 48.0], [3.0, 5.0, 40.5, 21.0], [60.0, 40.0, 72.0, 48.0], [10.0, 10.0, 10.0, 10.0]],
                     dtype=torch.float64),
        torch.tensor([[1.0, 2.0, 9.0, 7.0], [-20.0, -9.0, 30.0, 60.0]], dtype=torch.float64),
    ]
    regions, valid = clipself_region_embeddings(dense, boxes, image_size)
    assert regions.shape == (2, 4, 5) and valid.tolist() == [[True] * 4, [True, True, False, False]]
    for n, per_image in enumerate(boxes):
        for m, box in enumerate(per_image):
            torch.testing.assert_close(regions[n, m], _roi_align_loop(dense[n], box, 9 / 72, 6 / 48))
    assert not regions[1, 2:].any()


def test_region_embeddings_checks():
    dense = torch.randn(2, 5, 6, 9)
    with pytest.raises(ValueError, match="boxes"):
        clipself_region_embeddings(dense, [torch.tensor([[5.0, 0.0, 1.0, 4.0]]), torch.zeros(0, 4)], (48, 72))
    with pytest.raises(ValueError, match="boxes"):
        clipself_region_embeddings(dense, [torch.zeros(0, 4)], (48, 72))
    with pytest.raises(ValueError, match="image_size"):
        clipself_region_embeddings(dense, [torch.zeros(0, 4)] * 2, (72, 48))


def test_equation_and_reduction():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 3, 8, generator=generator), torch.randn(2, 3, 8, generator=generator)
    valid = torch.tensor([[True, False, True], [True, True, False]])
    cos = torch.nn.functional.cosine_similarity(student, teacher, dim=-1)
    expected = (1 - cos[valid]).mean()
    torch.testing.assert_close(clipself_loss(student, teacher, valid_mask=valid), expected)
    none = clipself_loss(student, teacher, valid_mask=valid, reduction="none")
    torch.testing.assert_close(none.sum() / valid.sum(), expected)
    assert (none[~valid] == 0).all()
    assert distributed_behaviour("clipself") == "count"


def test_nan_padding_is_ignored_and_nan_box_propagates():
    student, teacher = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    student[0, 1] = float("nan")
    assert torch.isfinite(clipself_loss(student, teacher, valid_mask=torch.tensor([[True, False]])))
    assert torch.isnan(clipself_loss(student, teacher))


def test_empty_and_checks():
    student = torch.randn(2, 0, 4, requires_grad=True)
    loss = clipself_loss(student, torch.randn(2, 0, 4))
    loss.backward()
    assert loss.item() == 0 and student.grad is not None
    with pytest.raises(ValueError, match="valid_mask"):
        clipself_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), valid_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher"):
        clipself_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 5))


def test_levels_one_line():
    # e.g. region embeddings pooled from several feature maps, each matched to the same crops
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 3, 8, generator=generator)
    students = [torch.randn(2, 3, 8, generator=generator) for _ in range(3)]
    valid = torch.tensor([[True, True, False], [True, False, False]])
    value = multilevel_loss(clipself_loss, students, [teacher] * 3, valid_mask=valid)
    torch.testing.assert_close(value, sum(clipself_loss(s, teacher, valid_mask=valid) for s in students))
    torch.testing.assert_close(MultiLevelLoss([CLIPSelfLoss() for _ in range(3)])(students, [teacher] * 3, valid_mask=valid), value)
