"""Contract tests run on every registered loss (timm style): adding a loss adds it here."""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")

import kdimpl  # noqa: E402
from kdimpl.masks import pad_boxes  # noqa: E402

from .cases import all_cases  # noqa: E402

CASES = all_cases()
NAMES = kdimpl.list_losses()


def _inputs(case, device, dtype, seed=0, **shape):
    size = dict(batch=2, height=12, width=20, num_boxes=3)  # H != W on purpose
    size.update(shape)
    generator = torch.Generator().manual_seed(seed)
    args, kwargs = case.make_inputs(generator, device, dtype, **size)
    return list(args), dict(kwargs)


def _call_function(name, args, kwargs, **options):
    return kdimpl.get_loss_function(name)(*args, **kwargs, **options)


def _call_module(name, args, kwargs, **options):
    module = kdimpl.get_loss(name)(**options)
    return module(*args, **kwargs)


def _assert_finite(value, what):
    assert torch.isfinite(value).all(), f"{what} is not finite: {value}"


def test_every_registered_loss_has_a_case():
    assert NAMES, "no loss is registered"
    missing = sorted(set(NAMES) - set(CASES))
    assert not missing, f"registered losses without a contract case in tests/kdimpl/cases/: {missing}"
    unknown = sorted(set(CASES) - set(NAMES))
    assert not unknown, f"contract cases for unregistered losses: {unknown}"


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


@pytest.fixture
def case(name):
    return CASES[name]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduction_gives_a_scalar(name, case, device, dtype, reduction):
    args, kwargs = _inputs(case, device, dtype)
    loss = _call_function(name, args, kwargs, **{**case.options, "reduction": reduction})
    assert loss.dim() == 0
    assert loss.dtype == dtype and loss.device.type == device.type
    _assert_finite(loss, "loss")


def test_reduction_none_keeps_elements_and_sums_to_sum(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    per_element = _call_function(name, args, kwargs, **{**case.options, "reduction": "none"})
    total = _call_function(name, args, kwargs, **{**case.options, "reduction": "sum"})
    assert per_element.dim() >= 1
    torch.testing.assert_close(per_element.sum(), total, rtol=1e-5, atol=1e-6)


def test_invalid_reduction_is_rejected(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    with pytest.raises(ValueError, match="reduction"):
        _call_function(name, args, kwargs, **{**case.options, "reduction": "average"})


def test_function_equals_module(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    expected = _call_function(name, args, kwargs, **case.options)
    actual = _call_module(name, args, kwargs, **case.options)
    torch.testing.assert_close(actual, expected)


def test_loss_weight_scales_linearly(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    base = _call_module(name, args, kwargs, **case.options)
    scaled = _call_module(name, args, kwargs, **case.options, loss_weight=2.5)
    torch.testing.assert_close(scaled, 2.5 * base)


def test_gradient_reaches_student_not_teacher(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    args[0] = args[0].detach().requires_grad_(True)
    t = case.teacher_index
    args[t] = args[t].detach().requires_grad_(True)
    _call_function(name, args, kwargs, **case.options).backward()
    assert args[0].grad is not None, "no gradient reached the student"
    _assert_finite(args[0].grad, "student gradient")
    assert args[0].grad.abs().sum() > 0, "the student gradient is identically zero"
    assert args[t].grad is None, "the loss let gradient flow into the teacher features"


def test_zero_when_student_equals_teacher(name, case, device, dtype):
    if not case.zero_when_equal:
        pytest.skip("the loss is not zero at student == teacher")
    args, kwargs = _inputs(case, device, dtype)
    args[0] = args[case.teacher_index].clone()
    loss = _call_function(name, args, kwargs, **case.options)
    torch.testing.assert_close(loss, torch.zeros_like(loss), atol=1e-5, rtol=0)


def _grads_finite(name, case, args, kwargs):
    args[0] = args[0].detach().requires_grad_(True)
    loss = _call_function(name, args, kwargs, **case.options)
    _assert_finite(loss, "loss")
    loss.backward()
    _assert_finite(args[0].grad, "student gradient")
    return loss


def test_image_without_boxes_is_finite(name, case, device, dtype):
    if not case.uses_boxes:
        pytest.skip("the loss takes no boxes")
    args, kwargs = _inputs(case, device, dtype, num_boxes=0)
    _grads_finite(name, case, args, kwargs)


def test_constant_channels_are_finite(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    args[0] = torch.full_like(args[0], 0.25)
    args[case.teacher_index] = torch.full_like(args[case.teacher_index], -0.5)
    _grads_finite(name, case, args, kwargs)


def test_large_magnitude_features_are_finite(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    args[0] = args[0] * 1e3
    args[case.teacher_index] = args[case.teacher_index] * 1e3
    _grads_finite(name, case, args, kwargs)


def test_half_precision_is_finite_and_close(name, case, device, half_dtype):
    if not case.half:
        pytest.skip("the loss does not support half precision")
    args, kwargs = _inputs(case, device, half_dtype)
    loss = _grads_finite(name, case, args, kwargs)
    ref_args, ref_kwargs = _inputs(case, device, torch.float32)
    reference = _call_function(name, ref_args, ref_kwargs, **case.options)
    torch.testing.assert_close(loss.float(), reference, rtol=5e-2, atol=5e-3)


def test_batch_permutation_invariance(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype, num_boxes=2)
    loss = _call_function(name, args, kwargs, **{**case.options, "reduction": "sum"})
    flipped_args, flipped_kwargs = _inputs(case, device, dtype, num_boxes=2)
    flipped_args = [a.flip(0) if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == 2 else a for a in flipped_args]
    for key, value in flipped_kwargs.items():
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(torch.is_tensor(v) for v in value):
            flipped_kwargs[key] = type(value)(reversed(value))
        elif torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == 2:
            flipped_kwargs[key] = value.flip(0)
    flipped = _call_function(name, flipped_args, flipped_kwargs, **{**case.options, "reduction": "sum"})
    torch.testing.assert_close(flipped, loss, rtol=1e-4, atol=1e-5)


def test_torch_compile_fullgraph(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    function = kdimpl.get_loss_function(name)
    expected = function(*args, **kwargs, **case.options)
    torch._dynamo.reset()  # every test compiles the same lambda; start from a clean cache
    compiled = torch.compile(lambda *a, **k: function(*a, **k, **case.options), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args, **kwargs), expected)


def test_gradcheck_float64(name, case, device):
    if not case.gradcheck:
        pytest.skip("the loss is not smooth enough for gradcheck")
    args, kwargs = _inputs(case, device, torch.float64, batch=2, height=3, width=5, num_boxes=1)
    teacher = args[case.teacher_index]

    def fn(student):
        call_args = list(args)
        call_args[0] = student
        call_args[case.teacher_index] = teacher
        return _call_function(name, call_args, kwargs, **case.options)

    student = args[0].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (student,), fast_mode=True)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_nan_in_gives_nan_out(name, case, device, dtype, side):
    args, kwargs = _inputs(case, device, dtype)
    index = 0 if side == "student" else case.teacher_index
    args[index] = torch.full_like(args[index], float("nan"))
    loss = _call_function(name, args, kwargs, **case.options)
    assert torch.isnan(loss).all(), f"a NaN {side} gave {loss} instead of NaN"


def test_empty_batch_gives_a_zero_in_the_graph(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype, batch=0)
    args[0] = args[0].detach().requires_grad_(True)
    loss = _call_function(name, args, kwargs, **case.options)
    assert loss.dim() == 0 and loss.item() == 0.0, f"an empty batch gave {loss}"
    loss.backward()
    assert args[0].grad is not None and not args[0].grad.any()


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_integer_inputs_are_refused(name, case, device, dtype, side):
    args, kwargs = _inputs(case, device, dtype)
    index = 0 if side == "student" else case.teacher_index
    args[index] = (args[index] * 10).round().long()
    argument = list(inspect.signature(kdimpl.get_loss_function(name)).parameters)[index]
    with pytest.raises(TypeError, match=argument):
        _call_function(name, args, kwargs, **case.options)


GT_MASK_NAMES = [n for n in NAMES if "gt_mask" in inspect.signature(kdimpl.get_loss_function(n)).parameters]


@pytest.mark.parametrize("name", GT_MASK_NAMES)
def test_padded_boxes_with_gt_mask_equal_the_list(name, case, device, dtype):
    """A loss that takes ``gt_mask`` gives the list's value and gradients for boxes padded with junk rows."""
    args, kwargs = _inputs(case, device, dtype)
    boxes = kwargs["gt_boxes"]
    assert isinstance(boxes, list), "the case should give per-image boxes"
    boxes = [boxes[0][:1], *boxes[1:]]  # different counts per image
    capacity = max(len(b) for b in boxes) + 2
    padded = torch.stack([torch.cat([b, b.new_full((capacity - len(b), 4), float("nan"))]) for b in boxes])
    padded[0, -1] = padded.new_tensor([90.0, 50.0, 10.0, 5.0])  # x2 < x1: junk, never read
    gt_mask = torch.stack([torch.arange(capacity, device=device) < len(b) for b in boxes])

    def value_and_grad(**box_kwargs):
        student = args[0].detach().requires_grad_(True)
        loss = _call_function(name, [student, *args[1:]], {**kwargs, **box_kwargs}, **case.options)
        loss.backward()
        return loss, student.grad

    expected = value_and_grad(gt_boxes=boxes)
    actual = value_and_grad(gt_boxes=padded, gt_mask=gt_mask)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("name", GT_MASK_NAMES)
def test_gt_mask_is_checked(name, case, device, dtype):
    args, kwargs = _inputs(case, device, dtype)
    padded, _ = pad_boxes(kwargs["gt_boxes"])
    with pytest.raises(ValueError, match="gt_mask must be a bool tensor of shape"):
        _call_function(name, args, {**kwargs, "gt_boxes": padded, "gt_mask": torch.ones(padded.shape[:2])}, **case.options)
    with pytest.raises(ValueError, match="gt_mask marks the real rows"):
        _call_function(name, args, {**kwargs, "gt_mask": torch.ones(padded.shape[:2], dtype=torch.bool)}, **case.options)
