"""Input checks: one line per check in a loss, messages that say what was expected and how to fix it.

Shapes are declared as strings of dimension names, as kornia's ``KORNIA_CHECK_SHAPE`` does::

    check_shape(student, "student", "N C H W")
    check_shape(anchors, "anchors", "* 4")

Checks raise ``TypeError``/``ValueError`` (never ``assert``) and are skipped while ``torch.compile``
or TorchScript traces. Checks on tensor *values* (finite boxes, label ranges) read the tensor
on the host, which synchronises a CUDA stream; :func:`set_value_checks` turns them off for
production runs once a pipeline is known to be correct.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["set_value_checks", "value_checks_enabled"]

REDUCTIONS = ("none", "mean", "sum")

_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> None:
    """Turn the checks on tensor values (finite boxes, x1 <= x2, label ranges) on or off globally.

    Shape, dtype and option checks always run (they never read tensor data).
    """
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS and not _tracing()


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_scripting()


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def check_shape(x: object, name: str, dims: str, *, floating: bool = True) -> None:
    """Check that ``x`` is a tensor whose shape matches ``dims``.

    ``dims`` is a space-separated list of dimension names; an integer fixes that dimension's
    size and a leading ``*`` allows any number of leading dimensions. ``floating`` requires a
    floating-point dtype (integer logits would give truncated losses).
    """
    if _tracing():
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({dims}), got {type(x).__name__}")
    names = dims.split()
    variadic = bool(names) and names[0] == "*"
    fixed = names[1:] if variadic else names
    if (x.dim() < len(fixed)) if variadic else (x.dim() != len(fixed)):
        raise ValueError(f"{name} must have shape ({dims}), got {tuple(x.shape)}")
    for dim_name, size in zip(reversed(fixed), reversed(x.shape)):
        if dim_name.isdigit() and size != int(dim_name):
            raise ValueError(f"{name} must have shape ({dims}), got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; convert it with .float()")


def check_shapes(**tensors: tuple[object, str]) -> None:
    """Check several tensors against dimension names shared between them.

    ``check_shapes(student=(student, "N C H W"), region_map=(region_map, "N H W"))`` checks each
    shape as :func:`check_shape` does (floating point, except where a spec ends with ``int``: an
    integer dtype, or ``any``: any dtype), and that a name means the same size everywhere it appears.
    Integers fix a size; ``*`` leads any dimensions.
    """
    if _tracing():
        return
    bound: dict[str, tuple[int, str]] = {}
    for name, (x, spec) in tensors.items():
        dims = spec.split()
        kind = dims.pop() if dims and dims[-1] in ("int", "any") else "float"
        floating = kind == "float"
        if kind == "int" and isinstance(x, Tensor) and x.is_floating_point():
            raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
        check_shape(x, name, " ".join(dims), floating=floating)
        fixed = dims[1:] if dims and dims[0] == "*" else dims
        for dim, size in zip(reversed(fixed), reversed(x.shape)):
            if dim.isdigit():
                continue
            if dim in bound and bound[dim][0] != size:
                first_size, first = bound[dim]
                raise ValueError(
                    f"{name} has {dim}={size} but {first} has {dim}={first_size}: expected "
                    + ", ".join(f"{n} ({s.removesuffix(' int').removesuffix(' any')})" for n, (_, s) in tensors.items())
                )
            bound.setdefault(dim, (size, name))


def check_same_shape(a: Tensor, b: Tensor, names: tuple[str, str], hint: str = "") -> None:
    """Check that two tensors have the same shape and device."""
    if _tracing():
        return
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
            + (f" {hint}" if hint else "")
        )
    if a.device != b.device:
        raise ValueError(f"{names[0]} is on {a.device} but {names[1]} is on {b.device}")


def check_feature_pair(
    student: Tensor, teacher: Tensor, dims: str = "N C H W", *, same_spatial: bool = True
) -> None:
    """Check student/teacher feature maps: declared rank, floating dtype, same shape and device.

    With ``same_spatial=False`` only batch and channels must agree (for losses that resize one side).
    """
    if _tracing():
        return
    check_shape(student, "student", dims)
    check_shape(teacher, "teacher", dims)
    compared = slice(None) if same_spatial else slice(0, 2)
    if student.shape[compared] != teacher.shape[compared]:
        hint = ""
        if student.dim() >= 2 and student.shape[1] != teacher.shape[1]:
            hint = " Channels differ: project the student with an adapter (e.g. kdimpl.ChannelAdapter) first."
        elif student.shape[2:] != teacher.shape[2:]:
            hint = " Spatial sizes differ: resize one side (F.interpolate) before the loss."
        expected = "shape" if same_spatial else "batch size and channels"
        raise ValueError(
            f"student and teacher must have the same {expected}, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}.{hint}"
        )
    if student.device != teacher.device:
        raise ValueError(f"student is on {student.device} but teacher is on {teacher.device}")


def check_reduction(reduction: str, allowed: Sequence[str] = REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {tuple(allowed)}, got {reduction!r}")


def check_options(**options: Any) -> None:
    """Check hyper-parameters by the package's vocabulary.

    ``reduction`` must be a known reduction; ``temperature`` and ``*_temperature`` must be
    finite and > 0; ``*_weight`` (scalar weights) finite and >= 0; ``*_ratio`` in [0, 1].
    Other names are not checked here.
    """
    for name, value in options.items():
        if name == "reduction":
            check_reduction(value)
        elif name == "temperature" or name.endswith("_temperature"):
            check_positive(value, name)
        elif name.endswith("_weight") and not isinstance(value, Tensor):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        elif name.endswith("_ratio"):
            check_unit_interval(value, name)


def check_positive(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_unit_interval(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_boxes(
    gt_boxes: Sequence[Tensor] | Tensor,
    batch_size: int,
    name: str = "gt_boxes",
    mask: Tensor | None = None,
    mask_name: str = "gt_mask",
) -> None:
    """Check per-image boxes in ``x1, y1, x2, y2`` pixels of the input tensor.

    ``gt_boxes`` is a sequence of ``N`` tensors of shape ``(M_i, 4)`` or one padded ``(N, M, 4)``
    tensor, optionally with ``mask``, an ``(N, M)`` bool tensor of its real rows (the others are
    padding and are not checked). Refuses a wrong number of images, non-finite coordinates, and
    boxes with ``x2 < x1`` or ``y2 < y1`` (the usual sign of ``cxcywh`` or ``xywh`` boxes).
    """
    if _tracing():
        return
    if gt_boxes is None or isinstance(gt_boxes, (str, bytes)) or not hasattr(gt_boxes, "__len__"):
        raise TypeError(
            f"{name} must be a list of (M_i, 4) tensors, one per image, or an (N, M, 4) tensor; "
            f"got {type(gt_boxes).__name__}"
        )
    if isinstance(gt_boxes, Tensor):
        check_shape(gt_boxes, name, "N M 4", floating=False)
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != gt_boxes.shape[:2]:
                raise ValueError(
                    f"{mask_name} must be a bool tensor of shape {tuple(gt_boxes.shape[:2])} (N, M) marking the real "
                    f"rows of the padded {name}, got {_describe(mask)}"
                    + (f" of dtype {mask.dtype}" if isinstance(mask, Tensor) else "")
                )
        per_image = [gt_boxes.reshape(-1, 4) if mask is None else gt_boxes[mask]]
        count = gt_boxes.shape[0]
    else:
        if mask is not None:
            raise ValueError(f"{mask_name} marks the real rows of a padded (N, M, 4) {name} tensor; with a list of "
                             f"per-image {name} leave it None")
        for i, boxes in enumerate(gt_boxes):
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"{name}[{i}] must be a tensor of shape (M, 4) in x1, y1, x2, y2 pixels, got "
                                 f"{_describe(boxes)}")
        per_image = list(gt_boxes)
        count = len(gt_boxes)
    if count != batch_size:
        raise ValueError(f"{name} has {count} images but the features have batch size {batch_size}: "
                         "pass one (M_i, 4) tensor per image (M_i may be 0)")
    if not value_checks_enabled():
        return
    for i, boxes in enumerate(per_image):
        if boxes.numel() == 0:
            continue
        where = name if isinstance(gt_boxes, Tensor) else f"{name}[{i}]"
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"{where} holds non-finite coordinates (NaN or inf)")
        if bool((boxes[:, 2] < boxes[:, 0]).any() | (boxes[:, 3] < boxes[:, 1]).any()):
            raise ValueError(
                f"{where} has boxes with x2 < x1 or y2 < y1: boxes must be x1, y1, x2, y2 in pixels of the "
                "input tensor (convert cxcywh/xywh boxes with torchvision.ops.box_convert)"
            )


def check_image_size(image_size: Sequence[int] | Tensor, batch_size: int, feature: Tensor | None = None) -> None:
    """Check ``image_size``: the ``(height, width)`` of the input tensor, or an ``(N, 2)`` tensor of them.

    With ``feature``, also checks that height and width give the same stride on that map (up to
    one cell of padding), which catches an image size given as ``(width, height)``.
    """
    if _tracing():
        return
    if isinstance(image_size, Tensor):
        size = image_size
        if not (size.shape == (2,) or size.shape == (batch_size, 2)):
            raise ValueError(
                f"image_size must be (height, width) or an (N, 2) tensor with N={batch_size}, got {tuple(size.shape)}"
            )
        if not value_checks_enabled():
            return
        size = size.detach().to("cpu", torch.float64).reshape(-1, 2)
    else:
        if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__") or len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width) of the input tensor, got {image_size!r}")
        try:
            size = torch.tensor([[float(v) for v in image_size]], dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be two numbers (height, width), got {image_size!r}") from None
    if not bool(torch.isfinite(size).all()) or not bool((size > 0).all()):
        raise ValueError(f"image_size must be finite and > 0 (height, width), got {size.squeeze(0).tolist()}")
    if feature is not None and feature.dim() >= 2:
        h, w = feature.shape[-2:]
        stride_h, stride_w = size[:, 0] / h, size[:, 1] / w
        # a padded input gives ceil(size / stride) cells, so the two strides agree to about one cell
        tolerance = max(1.0 / h, 1.0 / w) + 0.1
        if bool(((stride_h - stride_w).abs() > tolerance * torch.maximum(stride_h, stride_w)).any()):
            raise ValueError(
                f"image_size {size[0].tolist()} and the feature map ({h}, {w}) give different strides along "
                f"height and width ({float(stride_h[0]):.3g} vs {float(stride_w[0]):.3g}): image_size must be "
                "(height, width) of the input tensor, not (width, height)"
            )


def check_labels(labels: Tensor, num_classes: int, name: str = "labels") -> None:
    """Check integer class labels in ``[0, num_classes)``."""
    if _tracing():
        return
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor of class indices, got {_describe(labels)}")
    if value_checks_enabled() and labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (the logits have {num_classes} classes, background included), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def check_background_index(background_index: int, num_classes: int) -> int:
    """Resolve ``background_index`` (negative counts from the end) to ``[0, num_classes)``."""
    index = background_index + num_classes if background_index < 0 else background_index
    if not 0 <= index < num_classes:
        raise ValueError(f"background_index {background_index} is out of range for {num_classes} classes")
    return index



def check_modules(*, all_or_none: bool = False, **modules: Any) -> None:
    """Check the learnable pieces a loss function takes, by name (``adapter_student=...``).

    Each must be a callable module; with ``all_or_none=True`` they may also all be ``None`` (the
    loss then drops the term they serve), but not some of them.
    """
    if _tracing():
        return
    missing = [name for name, module in modules.items() if module is None]
    if all_or_none and len(missing) == len(modules):
        return
    if missing:
        wanted = " and ".join(modules) + (" (or none of them)" if all_or_none else "")
        raise ValueError(f"{', '.join(missing)} is None: pass {wanted}")
    for name, module in modules.items():
        if not callable(module):
            raise TypeError(f"{name} must be a module (an nn.Module), got {type(module).__name__}")
