"""The declarative input checks every loss uses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kdimpl import _checks  # noqa: E402
from kdimpl._checks import (  # noqa: E402
    check_boxes,
    check_image_size,
    check_labels,
    check_options,
    check_shape,
    check_shapes,
)


def test_check_shape_names_the_argument_and_the_expected_layout():
    check_shape(torch.zeros(2, 3, 4, 5), "student", "N C H W")
    check_shape(torch.zeros(7, 3, 4), "anchors", "* 4")
    with pytest.raises(ValueError, match=r"student must have shape \(N C H W\), got \(2, 3, 4\)"):
        check_shape(torch.zeros(2, 3, 4), "student", "N C H W")
    with pytest.raises(ValueError, match=r"anchors must have shape \(\* 4\)"):
        check_shape(torch.zeros(5, 3), "anchors", "* 4")
    with pytest.raises(TypeError, match="student must be a floating-point tensor, got torch.int64"):
        check_shape(torch.zeros(2, 3, dtype=torch.long), "student", "N C")
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        check_shape([1.0], "student", "N")


def test_check_shapes_binds_names_across_tensors():
    check_shapes(a=(torch.zeros(2, 3, 4, 5), "N C H W"), m=(torch.zeros(2, 4, 5), "N H W"),
                 labels=(torch.zeros(2, dtype=torch.long), "N int"), mask=(torch.ones(2, 4, 5, dtype=torch.bool), "N H W any"))
    with pytest.raises(ValueError, match=r"m has W=6 but a has W=5: expected a \(N C H W\), m \(N H W\)"):
        check_shapes(a=(torch.zeros(2, 3, 4, 5), "N C H W"), m=(torch.zeros(2, 4, 6), "N H W"))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        check_shapes(labels=(torch.zeros(2), "N int"))


def test_check_options_follows_the_vocabulary():
    check_options(temperature=0.5, fg_weight=0.0, mask_ratio=1.0, reduction="sum", other=-3)
    for bad, message in [
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(channel_temperature=float("inf")), "channel_temperature must be a finite number > 0"),
        (dict(fg_weight=-1.0), "fg_weight must be a finite number >= 0"),
        (dict(bg_weight=float("nan")), "bg_weight must be a finite number >= 0"),
        (dict(mask_ratio=1.5), r"mask_ratio must be in \[0, 1\]"),
        (dict(reduction="avg"), "reduction must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_options(**bad)


def test_check_boxes_refuses_what_is_not_xyxy_pixels():
    good = [torch.tensor([[0.0, 0.0, 4.0, 2.0]]), torch.zeros(0, 4)]
    check_boxes(good, 2)
    check_boxes(torch.zeros(2, 3, 4), 2)
    with pytest.raises(ValueError, match="gt_boxes has 1 images but the features have batch size 2"):
        check_boxes(good[:1], 2)
    with pytest.raises(ValueError, match=r"gt_boxes\[0\] holds non-finite coordinates"):
        check_boxes([torch.tensor([[0.0, float("nan"), 4.0, 2.0]]), torch.zeros(0, 4)], 2)
    with pytest.raises(ValueError, match="x2 < x1 or y2 < y1.*box_convert"):
        check_boxes([torch.tensor([[5.0, 0.0, 4.0, 2.0]]), torch.zeros(0, 4)], 2)
    with pytest.raises(ValueError, match=r"gt_boxes\[1\] must be a tensor of shape \(M, 4\)"):
        check_boxes([torch.zeros(0, 4), torch.zeros(3)], 2)
    with pytest.raises(TypeError, match="gt_boxes must be a list"):
        check_boxes(None, 2)


def test_value_checks_can_be_turned_off():
    bad = [torch.tensor([[0.0, float("nan"), 4.0, 2.0]])]
    try:
        _checks.set_value_checks(False)
        check_boxes(bad, 1)  # only the shape is checked
        with pytest.raises(ValueError, match="has 1 images"):
            check_boxes(bad, 2)
    finally:
        _checks.set_value_checks(True)
    with pytest.raises(ValueError, match="non-finite"):
        check_boxes(bad, 1)


def test_check_image_size_catches_width_height_swaps_and_bad_values():
    feature = torch.zeros(2, 8, 100, 168)  # stride 8 on an 800x1344 input
    check_image_size((800, 1344), 2, feature)
    check_image_size(torch.tensor([[800, 1344], [800, 1344]]), 2, feature)
    check_image_size((797, 1333), 2, feature)  # padding: the strides agree to a cell
    with pytest.raises(ValueError, match=r"\(height, width\) of the input tensor, not \(width, height\)"):
        check_image_size((1344, 800), 2, feature)
    for bad in [(0, 1344), (800, float("nan")), (-1, 5)]:
        with pytest.raises(ValueError, match="finite and > 0"):
            check_image_size(bad, 2)
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\)"):
        check_image_size((800, 1344, 3), 2)
    with pytest.raises(ValueError, match="N=2"):
        check_image_size(torch.tensor([[800, 1344]] * 3), 2)


def test_check_labels_range():
    check_labels(torch.tensor([0, 3]), 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        check_labels(torch.tensor([0, 4]), 4)
    with pytest.raises(TypeError, match="integer tensor"):
        check_labels(torch.tensor([0.0]), 4)
