"""A plain-PyTorch ``torchvision::nms`` for torchvision wheels whose compiled operators do not load.

A torchvision wheel built for another torch variant (a CUDA wheel beside a CPU-only torch, for
example) fails at ``import torchvision`` with "operator torchvision::nms does not exist": its
``_C`` extension does not load, so the operator its fake-tensor registrations refer to is
missing. Of the compiled operators, torchvision's detectors need only ``nms`` and
``roi_align`` to train and evaluate. :func:`import_torchvision` imports torchvision and, only
when that failure happens, defines ``nms`` here in plain PyTorch (slow: a greedy loop, fine for
small CPU runs), imports again, and makes ``roi_align`` use torchvision's own pure-PyTorch
version eagerly (torchvision compiles it on first use). The right fix is a torchvision wheel that matches the installed torch.
"""

from __future__ import annotations

import sys
import warnings

import torch

_LIBRARY = None


def plain_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score (torchvision.ops.nms semantics)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(boxes)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def register_plain_nms() -> None:
    """Define ``torchvision::nms`` (and the ``qnms`` schema torchvision registers a fake for) in PyTorch."""
    global _LIBRARY
    if _LIBRARY is not None or hasattr(torch.ops.torchvision, "nms"):
        return
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", plain_nms, "CompositeExplicitAutograd")


def import_torchvision():
    """``import torchvision``, falling back to :func:`register_plain_nms` if its operators do not load."""
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        warnings.warn(
            f"torchvision's compiled operators do not load with torch {torch.__version__} ({error}); "
            "using a plain-PyTorch nms (slow). Install a torchvision wheel that matches torch to avoid this.",
            RuntimeWarning,
            stacklevel=2,
        )
        register_plain_nms()
        import torchvision
        import torchvision.ops.boxes

        # torchvision.ops.nms asserts that the compiled extension loaded before calling the operator.
        torchvision.ops.boxes._assert_has_ops = lambda: None
        # Without the extension roi_align runs a pure-PyTorch version under torch.compile, which takes
        # a minute to compile on CPU and whose backward refuses retain_graph=True: run it eagerly.
        roi_align_module = sys.modules["torchvision.ops.roi_align"]
        roi_align_module._roi_align = getattr(roi_align_module._roi_align, "__wrapped__", roi_align_module._roi_align)
    return torchvision
