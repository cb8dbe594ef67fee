"""GLAMD (unverified reconstruction): patch-local attention against per-patch loops, analytic cases."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss
from kdimpl.attention import channel_attention, spatial_attention
from kdimpl.losses.glamd import GLAMDLoss, glamd_local_attention, glamd_loss, glamd_patch_index


def patch_slices(size, parts):
    bounds = [k * size // parts for k in range(parts + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(parts)]


@pytest.mark.parametrize("grid,shape", [((2, 3), (7, 11)), ((1, 1), (4, 6)), ((3, 2), (3, 5)), ((4, 4), (8, 8))])
def test_local_attention_equals_global_attention_of_each_crop(grid, shape):
    features = torch.randn(2, 5, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spatial, channel = glamd_local_attention(features, grid, 0.7)
    for rows in patch_slices(shape[0], grid[0]):
        for cols in patch_slices(shape[1], grid[1]):
            crop = features[:, :, rows, cols]
            torch.testing.assert_close(spatial[:, rows, cols], spatial_attention(crop, 0.7))
            expected = channel_attention(crop, 0.7)[:, :, None, None].expand_as(channel[:, :, rows, cols])
            torch.testing.assert_close(channel[:, :, rows, cols], expected)


def test_patch_index_covers_the_grid_evenly():
    index = glamd_patch_index((7, 10), (3, 4))
    assert index.shape == (7, 10) and set(index.flatten().tolist()) == set(range(12))
    row_sizes = torch.bincount(index[:, 0] // 4)
    col_sizes = torch.bincount(index[0])
    assert row_sizes.tolist() == [2, 2, 3] and col_sizes.tolist() == [2, 3, 2, 3]  # floor(k H / rows) starts
    assert (index[:, 1:] >= index[:, :-1]).all() and (index[1:] >= index[:-1]).all()


def test_one_patch_makes_local_equal_global():
    s, t = torch.randn(2, 4, 6, 9), torch.randn(2, 4, 6, 9)
    torch.testing.assert_close(
        glamd_loss(s, t, grid=1, global_weight=1.0, local_weight=0.0),
        glamd_loss(s, t, grid=1, global_weight=0.0, local_weight=1.0),
    )


def test_constant_teacher_gives_uniform_masks():
    # |F^T| constant: every attention is 1, so the elements are (global + local weight) * (S - T)^2.
    teacher = torch.full((2, 3, 5, 8), 2.0)
    student = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(3))
    weights = {"global_weight": 0.3, "local_weight": 0.2}
    elements = glamd_loss(student, teacher, grid=(2, 3), **weights, reduction="none")
    torch.testing.assert_close(elements, 0.5 * (student - teacher).square())
    # 'mean' is the paper-style sum per image, averaged over images
    torch.testing.assert_close(GLAMDLoss(grid=(2, 3), **weights)(student, teacher), elements.sum() / 2)


def test_local_mask_emphasises_a_peak_inside_each_patch():
    # A peak in a quiet patch dominates that patch's local map, though the global map barely sees it.
    teacher = torch.ones(1, 2, 4, 4)
    teacher[:, :, 0, 0] = 50.0  # a huge peak in patch 0
    teacher[:, :, 3, 3] = 1.5  # a small peak in patch 3
    spatial, _ = glamd_local_attention(teacher, 2, 0.5)
    global_map = spatial_attention(teacher, 0.5)
    assert spatial[0, 3, 3] > 1.8 and global_map[0, 3, 3] < 1e-6  # 4 e / (3 + e) = 1.90
    torch.testing.assert_close(spatial[0, 2:, 2:].sum(), torch.tensor(4.0))


def test_bad_grid_is_rejected():
    s, t = torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5)
    with pytest.raises(ValueError, match="grid"):
        glamd_loss(s, t, grid=(4, 1))
    with pytest.raises(ValueError, match="grid"):
        GLAMDLoss(grid=0)


def test_levels_take_a_grid_each():
    g = torch.Generator().manual_seed(4)
    sizes, grids = [(16, 24), (8, 12), (4, 6)], [4, 2, 1]
    students = [torch.randn(2, 4, h, w, generator=g, requires_grad=True) for h, w in sizes]
    teachers = [0.5 * s.detach() + torch.randn(s.shape, generator=g) for s in students]
    criterion = MultiLevelLoss([GLAMDLoss(grid=grid) for grid in grids], level_weights=[1.0, 0.5, 2.0])
    expected = sum(
        w * glamd_loss(s, t, grid=grid) for w, s, t, grid in zip([1.0, 0.5, 2.0], students, teachers, grids)
    )
    loss = criterion(students, teachers)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(s.grad is not None for s in students)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_one_nan_element_gives_a_nan_loss(side):
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g)
    (s if side == "student" else t)[1, 2, 5, 7] = float("nan")
    assert torch.isnan(glamd_loss(s, t, grid=2))
    per_image = glamd_loss(s, t, grid=2, reduction="none").sum(dim=(1, 2, 3))
    assert torch.isfinite(per_image[0]) and torch.isnan(per_image[1])


def test_empty_batch_gives_a_zero_in_the_graph():
    student = torch.zeros(0, 4, 6, 8, requires_grad=True)
    loss = GLAMDLoss(grid=(2, 3))(student, torch.zeros(0, 4, 6, 8))
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert student.grad is not None and not student.grad.any()


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_integer_features_are_refused(side):
    args = {"student": torch.randn(2, 4, 6, 8), "teacher": torch.randn(2, 4, 6, 8)}
    args[side] = args[side].round().long()
    with pytest.raises(TypeError, match=side):
        glamd_loss(args["student"], args["teacher"])


def test_bad_options_are_refused():
    s, t = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="temperature"):
        glamd_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="local_weight"):
        GLAMDLoss(local_weight=-1.0)
