"""kdimpl.masks against naive per-box loops (Python floats, one box and one cell at a time)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kdimpl import masks


def naive_bounds(box, img_hw, feat_hw):
    """Documented covering: floor of the near edge, ceil of the far edge, clamped to the map."""
    (img_h, img_w), (h, w) = img_hw, feat_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    x0, y0 = math.floor(x1 * w / img_w), math.floor(y1 * h / img_h)
    xe, ye = math.ceil(x2 * w / img_w), math.ceil(y2 * h / img_h)
    clamp = lambda v, hi: min(max(v, 0), hi)
    return clamp(x0, w - 1), clamp(y0, h - 1), clamp(xe, w - 1), clamp(ye, h - 1)


def naive_masks(gt_boxes, img_sizes, feat_hw):
    """Per-image (foreground, inverse-area) maps built one box and one cell at a time."""
    h, w = feat_hw
    fgs, invs = [], []
    for boxes, img_hw in zip(gt_boxes, img_sizes):
        fg = [[0.0] * w for _ in range(h)]
        inv = [[0.0] * w for _ in range(h)]
        for box in boxes.tolist():
            x0, y0, x1, y1 = naive_bounds(box, img_hw, feat_hw)
            area = (x1 - x0 + 1) * (y1 - y0 + 1)
            for y in range(h):
                for x in range(w):
                    if y0 <= y <= y1 and x0 <= x <= x1:
                        fg[y][x] = 1.0
                        inv[y][x] = max(inv[y][x], 1.0 / area)
        fgs.append(fg)
        invs.append(inv)
    return torch.tensor(fgs), torch.tensor(invs)


def check(gt_boxes, img_sizes, feat_hw, image_size=None):
    image_size = img_sizes[0] if image_size is None else image_size
    fg_ref, inv_ref = naive_masks(gt_boxes, img_sizes, feat_hw)
    fg = masks.foreground_mask(gt_boxes, image_size, feat_hw)
    inv = masks.inverse_area_mask(gt_boxes, image_size, feat_hw)
    assert fg.shape == (len(gt_boxes), *feat_hw) and inv.shape == fg.shape
    torch.testing.assert_close(fg, fg_ref)
    torch.testing.assert_close(inv, inv_ref)


def test_boxes_on_every_border():
    # 48x80 image on a 6x10 map (8 px cells, exact in binary): boxes touching each border.
    boxes = torch.tensor(
        [[0.0, 0.0, 12.0, 10.0], [70.0, 3.0, 80.0, 9.0], [5.0, 40.0, 30.0, 48.0], [0.0, 20.0, 80.0, 28.0]]
    )
    check([boxes], [(48, 80)], (6, 10))


def test_edges_on_cell_boundaries_reach_one_cell_further():
    # x2 = 16 px is exactly cell 2's left edge: ceil(2.0) = 2, so columns 0..2 are covered.
    bounds = masks.box_cell_bounds(torch.tensor([[[0.0, 0.0, 16.0, 8.0]]]), (48, 80), (6, 10))
    assert bounds.tolist() == [[[0.0, 0.0, 2.0, 1.0]]]
    check([torch.tensor([[8.0, 8.0, 16.0, 16.0]])], [(48, 80)], (6, 10))


def test_degenerate_boxes_cover_one_cell_or_line():
    boxes = torch.tensor(
        [[20.0, 20.0, 20.0, 20.0], [33.0, 5.0, 33.0, 30.0], [41.0, 17.0, 70.0, 17.0], [12.5, 44.1, 12.5, 44.1]]
    )
    check([boxes], [(48, 80)], (6, 10))


def test_overlapping_boxes_keep_the_smallest_area():
    boxes = torch.tensor([[0.0, 0.0, 60.0, 40.0], [10.0, 10.0, 25.0, 22.0], [18.0, 5.0, 50.0, 20.0]])
    check([boxes], [(48, 80)], (6, 10))
    inv = masks.inverse_area_mask([boxes], (48, 80), (6, 10))
    x0, y0, x1, y1 = naive_bounds(boxes[1].tolist(), (48, 80), (6, 10))
    assert inv[0, y0, x0] == pytest.approx(1 / ((x1 - x0 + 1) * (y1 - y0 + 1)))


def test_non_square_map_with_asymmetric_boxes():
    # 7x13 map of a 100x300 image: x and y scale differently; wide-short and tall-thin boxes.
    boxes = torch.tensor([[13.0, 41.0, 287.0, 52.0], [150.5, 3.3, 161.2, 97.0], [290.0, 90.0, 300.0, 100.0]])
    check([boxes], [(100, 300)], (7, 13))
    fg = masks.foreground_mask([boxes[:1]], (100, 300), (7, 13))[0]
    assert fg.sum(0).count_nonzero() > fg.sum(1).count_nonzero()  # wide box spans more columns than rows


def test_per_image_image_sizes():
    boxes = [torch.tensor([[10.0, 10.0, 90.0, 50.0]]), torch.tensor([[10.0, 10.0, 90.0, 50.0]])]
    sizes = [(64, 128), (100, 100)]
    check(boxes, sizes, (8, 16), image_size=torch.tensor(sizes))
    fg = masks.foreground_mask(boxes, torch.tensor(sizes), (8, 16))
    assert not torch.equal(fg[0], fg[1])


def test_images_without_boxes_and_padded_input():
    boxes = [torch.zeros(0, 4), torch.tensor([[3.0, 4.0, 20.0, 30.0]])]
    check(boxes, [(40, 60)] * 2, (5, 7))
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    assert masks.inverse_area_mask(empty, (40, 60), (5, 7)).eq(0).all()
    assert masks.foreground_mask(empty, (40, 60), (5, 7)).shape == (2, 5, 7)
    padded, valid = masks.pad_boxes(boxes)
    assert padded.shape == (2, 1, 4) and valid.tolist() == [[False], [True]]
    torch.testing.assert_close(
        masks.inverse_area_mask(padded, (40, 60), (5, 7), valid), masks.inverse_area_mask(boxes, (40, 60), (5, 7))
    )


def test_integer_boxes_are_accepted():
    check([torch.tensor([[3, 4, 20, 30]])], [(40, 60)], (5, 7))


@pytest.mark.parametrize("seed", range(5))
def test_random_boxes_match_the_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    feat_hw = [(5, 9), (13, 21), (9, 4), (1, 1), (2, 17)][seed]
    sizes = [(120, 200), (96, 150), (200, 90)]
    gt_boxes = []
    for img_h, img_w in sizes:
        count = int(torch.randint(0, 7, (1,), generator=generator))
        xy = torch.rand(count, 2, generator=generator) * torch.tensor([img_w, img_h])
        wh = torch.rand(count, 2, generator=generator) * torch.tensor([img_w, img_h]) * 0.5
        gt_boxes.append(torch.cat([xy, (xy + wh).minimum(torch.tensor([img_w, img_h]))], dim=1))
    check(gt_boxes, sizes, feat_hw, image_size=torch.tensor(sizes))


def test_vectorised_masks_compile_without_graph_breaks():
    boxes = torch.tensor([[[3.0, 4.0, 20.0, 30.0], [0.0, 0.0, 60.0, 40.0]]])
    valid = torch.tensor([[True, False]])
    fn = torch.compile(lambda b, v: masks.inverse_area_mask(b, (40, 60), (5, 7), v), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(boxes, valid), masks.inverse_area_mask(boxes, (40, 60), (5, 7), valid))


def test_bad_inputs_are_rejected_with_the_argument_name():
    with pytest.raises(ValueError, match="gt_boxes"):
        masks.foreground_mask(torch.zeros(1, 3, 5), (40, 60), (5, 7))
    with pytest.raises(ValueError, match="image_size"):
        masks.foreground_mask([torch.zeros(1, 4)], (40, 60, 3), (5, 7))
    with pytest.raises(ValueError, match="image_size"):
        masks.foreground_mask([torch.zeros(1, 4)], torch.ones(3, 2), (5, 7))


def test_scaled_edge_on_an_exact_integer():
    # 150 / 300 * 22 = 11 exactly, but 150 * (22 / 300) rounds to 11.000001 in float32 and ceil gives 12.
    bounds = masks.box_cell_bounds(torch.tensor([[[150.0, 90.0, 150.0, 90.0]]]), (180, 300), (14, 22))
    assert bounds.tolist() == [[[11.0, 7.0, 11.0, 7.0]]]


def test_inverted_box_is_refused():
    # x2 < x1 usually means cxcywh or xywh boxes: refused with a clear message, not rasterised as empty.
    with pytest.raises(ValueError, match=r"x2 < x1 or y2 < y1.*box_convert"):
        masks.inverse_area_mask([torch.tensor([[60.0, 10.0, 20.0, 50.0]])], (100, 100), (4, 4))
    with pytest.raises(ValueError, match=r"gt_boxes has boxes with x2 < x1"):
        masks.foreground_mask(torch.tensor([[[0.0, 50.0, 10.0, 20.0]]]), (100, 100), (4, 4))


def test_malformed_box_list_gets_a_clear_error():
    with pytest.raises(ValueError, match="gt_boxes"):
        masks.foreground_mask([torch.zeros(3, 5)], (40, 60), (5, 7))


def test_box_outside_the_map_covers_nothing():
    inv = masks.inverse_area_mask([torch.tensor([[300.0, 0.0, 400.0, 50.0], [-80.0, 0.0, -30.0, 50.0]])], (100, 100), (4, 4))
    assert inv.eq(0).all()


def test_box_past_the_border_counts_only_visible_cells():
    # cells 2..3 of 4 columns are visible (x from 60 to 140 on a 100-pixel image), rows 0..2
    inv = masks.inverse_area_mask([torch.tensor([[60.0, 0.0, 140.0, 50.0]])], (100, 100), (4, 4))
    assert inv[0, :3, 2:].eq(1 / 6).all() and inv.count_nonzero() == 6


def _naive_cover(bounds, valid, weight, feat_hw):
    """Per image and cell: how many valid boxes cover it and the largest weight among them (0 if none)."""
    h, w = feat_hw
    counts = torch.zeros(bounds.shape[0], h, w)
    best = torch.zeros(bounds.shape[0], h, w)
    for n in range(bounds.shape[0]):
        for m in range(bounds.shape[1]):
            if not valid[n, m]:
                continue
            x0, y0, x1, y1 = (float(v) for v in bounds[n, m])
            for i in range(h):
                for j in range(w):
                    if y0 <= i <= y1 and x0 <= j <= x1:
                        counts[n, i, j] += 1
                        best[n, i, j] = max(best[n, i, j], float(weight[n, m]))
    return counts, best


@pytest.mark.parametrize("num_boxes", [0, 1, 5, 24, 47])
def test_cover_counts_and_max_cover_match_a_loop_over_boxes(num_boxes):
    g = torch.Generator().manual_seed(num_boxes)
    feat_hw = (7, 9)
    start = torch.randint(-3, 9, (2, num_boxes, 2), generator=g).float()  # some start left/above the map
    size = torch.randint(-1, 6, (2, num_boxes, 2), generator=g).float()  # -1: an empty range, covers nothing
    bounds = torch.cat([start, start + size], dim=-1)
    valid = torch.rand(2, num_boxes, generator=g) > 0.2
    weight = torch.randint(1, 6, (2, num_boxes), generator=g).float() / 7  # ties on purpose
    counts, best = _naive_cover(bounds, valid, weight, feat_hw)
    assert torch.equal(masks.cover_counts(bounds, valid, feat_hw), counts)
    assert torch.equal(masks.max_cover(bounds, valid, weight, feat_hw), best)
    inside = masks.rasterize_boxes(bounds, valid, feat_hw)
    assert inside.dtype == torch.bool and inside.shape == (2, num_boxes, *feat_hw)


def test_padded_boxes_compile_to_one_graph_for_any_box_count():
    # Boxes padded to a fixed capacity with a validity mask: one graph (dynamic=False) for 0, 2 or 5 boxes.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    build = torch.compile(
        lambda b, v: (masks.foreground_mask(b, (40, 60), (5, 7), v), masks.inverse_area_mask(b, (40, 60), (5, 7), v)),
        backend=backend,
        dynamic=False,
    )
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 5, 2, generator=g) * torch.tensor([40.0, 25.0])
    padded = torch.cat([xy, xy + 3 + torch.rand(2, 5, 2, generator=g) * 15], dim=-1)
    for count in (0, 2, 5):
        valid = torch.zeros(2, 5, dtype=torch.bool)
        valid[:, :count] = True
        fg, inv = build(padded, valid)
        per_image = [padded[0, :count], padded[1, :count]]
        assert torch.equal(fg, masks.foreground_mask(per_image, (40, 60), (5, 7)))
        assert torch.equal(inv, masks.inverse_area_mask(per_image, (40, 60), (5, 7)))
    assert len(graphs) == 1


def test_empty_batch_gives_empty_masks():
    boxes, valid = masks.pad_boxes([])
    assert boxes.shape == (0, 0, 4) and valid.shape == (0, 0)
    assert masks.foreground_mask([], (40, 60), (5, 7)).shape == (0, 5, 7)
    assert masks.inverse_area_mask([], torch.zeros(0, 2), (5, 7)).shape == (0, 5, 7)


def test_image_hw_gives_per_image_columns():
    height, width = masks.image_hw(torch.tensor([[10, 20], [30, 40]]), 2, torch.zeros(1))
    assert height.tolist() == [[10.0], [30.0]] and width.tolist() == [[20.0], [40.0]]


def test_pad_box_values_lays_values_out_like_the_boxes():
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0]]), torch.zeros(0, 4), torch.tensor([[2.0, 2.0, 3.0, 3.0]])]
    labels = [torch.tensor([3, 1]), torch.zeros(0, dtype=torch.long), torch.tensor([2])]
    _, valid = masks.pad_boxes(boxes, min_boxes=3)
    padded = masks.pad_box_values(labels, valid, name="gt_labels", num_classes=4)
    assert padded.dtype == torch.int64 and padded.tolist() == [[3, 1, 0], [0, 0, 0], [2, 0, 0]]
    # a padded tensor, wider than the boxes, with -1 in its padding: only real slots are read and checked
    tensor = torch.tensor([[3, 1, -1, -1], [-1, -1, -1, -1], [2, -1, -1, -1]])
    assert torch.equal(masks.pad_box_values(tensor, valid, name="gt_labels", num_classes=4), padded)
    scores = masks.pad_box_values([torch.tensor([0.5, 0.25]), torch.zeros(0), torch.tensor([1.0])], valid, name="scores",
                                  dtype=torch.float64)
    assert scores.dtype == torch.float64 and scores.tolist() == [[0.5, 0.25, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_pad_box_values_refuses_values_that_do_not_match_the_boxes():
    _, valid = masks.pad_boxes([torch.zeros(2, 4), torch.zeros(1, 4)])
    with pytest.raises(ValueError, match=r"gt_labels\[1\] must hold one label per box: shape \(2,\) for 1 boxes"):
        masks.pad_box_values([torch.tensor([1, 2]), torch.tensor([1, 2])], valid, name="gt_labels", num_classes=3)
    with pytest.raises(ValueError, match="gt_labels has 1 images but the boxes have 2"):
        masks.pad_box_values([torch.tensor([1, 2])], valid, name="gt_labels", num_classes=3)
    with pytest.raises(ValueError, match=r"gt_labels\[0\] must lie in \[0, 3\)"):
        masks.pad_box_values([torch.tensor([1, 3]), torch.tensor([0])], valid, name="gt_labels", num_classes=3)
    with pytest.raises(ValueError, match="one value per box: shape \\(2, 1\\) for boxes padded to \\(2, 2\\)"):
        masks.pad_box_values(torch.zeros(2, 1), valid, name="scores")
    with pytest.raises(TypeError, match="integer tensor"):
        masks.pad_box_values([torch.tensor([1.0, 2.0]), torch.tensor([0.0])], valid, name="gt_labels", num_classes=3)
    scattered = torch.tensor([[False, True], [True, False]])  # padded boxes whose real row is not first
    with pytest.raises(ValueError, match="are not its first rows"):
        masks.pad_box_values([torch.tensor([1]), torch.tensor([2])], scattered, name="gt_labels", num_classes=3)


def test_pad_boxes_names_the_mask_and_refuses_it_with_a_list():
    boxes = [torch.zeros(1, 4), torch.zeros(2, 4)]
    with pytest.raises(ValueError, match="roi_mask marks the real rows of a padded \\(N, M, 4\\) rois tensor"):
        masks.pad_boxes(boxes, torch.ones(2, 2, dtype=torch.bool), name="rois", mask_name="roi_mask")
    padded, valid = masks.pad_boxes(boxes)
    with pytest.raises(ValueError, match="roi_mask must be a bool tensor of shape \\(2, 2\\)"):
        masks.pad_boxes(padded, valid.float(), name="rois", mask_name="roi_mask")
    junk = padded.clone()
    junk[0, 1] = torch.tensor([float("nan"), 0.0, -1.0, -1.0])  # a padding row: not checked, returned as zeros
    out, mask = masks.pad_boxes(junk, valid, min_boxes=3)
    assert out.shape == (2, 3, 4) and torch.equal(mask.sum(dim=1), torch.tensor([1, 2]))
    assert torch.isfinite(out).all() and not out[0, 1:].any()
