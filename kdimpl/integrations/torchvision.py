r"""Distil torchvision detectors with kdimpl: FPN features, boxes and RoIs, read by forward hooks.

Nothing here imports torchvision: the helpers use the public submodules every torchvision
detector has (``transform``, ``backbone``; ``roi_heads.box_roi_pool``, ``box_head`` and
``box_predictor`` for two-stage detectors) and register forward hooks on them, so the detector
is used unmodified.

**The frame.** A torchvision detector first runs ``detector.transform``
(``GeneralizedRCNNTransform``): it normalises each image, resizes it (short side to ``min_size``,
long side at most ``max_size``), scales the target boxes by the same factors, and pads the
batch at the bottom and right to a multiple of ``size_divisible`` (32). The backbone's FPN
features are computed from that padded batch tensor. The ``gt_boxes`` a kdimpl loss needs are
therefore the *transformed* targets' boxes (padding at the bottom/right shifts nothing) and
``image_size`` is the *padded* tensor's ``(height, width)``: :class:`DetectorTap` returns both.
The original boxes, or a per-image size before padding, or ``(width, height)``, give finite
losses computed on wrong masks.

**Loss weights.** The papers' weights were tuned for COCO at 1333x800 with pretrained
backbones; at other scales (smaller images, fewer boxes, fewer channels, detectors trained
from scratch) the distillation gradient can be orders of magnitude larger than the detection
gradient and swamp it. Measure :func:`gradient_norm_ratio` (distillation over detection
gradient norm on the student's parameters) over the first steps and set the loss's
``loss_weight`` so that the ratio is of order 0.1 to 1; then tune from there on held-out AP.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from kdimpl import CWDLoss, MultiLevelLoss
    >>> from kdimpl.integrations.torchvision import DetectorTap, backbone_features
    >>> class ToyTransform(nn.Module):  # stands in for GeneralizedRCNNTransform
    ...     def forward(self, images, targets=None):
    ...         return type("ImageList", (), {"tensors": torch.stack(images), "image_sizes": [(32, 32)] * 2})(), targets
    >>> class ToyDetector(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.transform, self.backbone = ToyTransform(), ToyBackbone()
    ...     def forward(self, images, targets=None):
    ...         images, targets = self.transform(images, targets)
    ...         return sum(f.mean() for f in self.backbone(images.tensors).values())
    >>> class ToyBackbone(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
    ...     def forward(self, x):
    ...         f = self.conv(x)
    ...         return {"0": f, "1": nn.functional.max_pool2d(f, 2)}
    >>> student, teacher = ToyDetector(), ToyDetector()
    >>> targets = [{"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1])}] * 2
    >>> with DetectorTap(student) as tap:
    ...     detection_loss = student([torch.rand(3, 32, 32), torch.rand(3, 32, 32)], targets)
    ...     with torch.no_grad():
    ...         teacher_feats = backbone_features(teacher, tap.images.tensors)
    ...     loss = MultiLevelLoss(CWDLoss())(tap.fpn_features, list(teacher_feats.values()))
    >>> tap.image_size, len(tap.gt_boxes), loss.shape
    ((32, 32), 2, torch.Size([]))
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["DetectorTap", "backbone_features", "roi_head_outputs", "gradient_norm_ratio", "mark_dynamic_sizes"]


class DetectorTap:
    """Forward hooks on a torchvision detector that record what distillation needs from one forward.

    After ``detector(images, targets)`` (training or eval mode) the tap holds:

    - ``images``: the ``ImageList`` out of ``detector.transform`` (``images.tensors`` is the
      resized, normalised, padded batch the backbone saw; feed it to the teacher's backbone so
      both detectors see the same pixels).
    - ``features``: the backbone's ``OrderedDict`` of FPN maps; ``fpn_features`` lists them
      finest first (the order kdimpl's :class:`~kdimpl.MultiLevelLoss` takes).
    - ``gt_boxes``, ``gt_labels``: the transformed targets (boxes in pixels of ``images.tensors``),
      and ``image_size``: ``images.tensors``' ``(height, width)``. See the module docstring.
    - two-stage detectors (with ``roi_heads``): ``rois``, the proposals the RoI head sampled for
      training (one ``(K_i, 4)`` tensor per image, in the same frame; in eval mode, the RPN's
      proposals), ``class_logits`` and ``box_regression`` of the RoI head on them, and
      :meth:`roi_labels` (their class labels, background 0).

    Use it as a context manager, or call :meth:`remove` to take the hooks off.

    Args:
        detector: a torchvision detection model (``RetinaNet``, ``FCOS``, ``FasterRCNN``, ...).
    """

    def __init__(self, detector: nn.Module) -> None:
        for name in ("transform", "backbone"):
            if not isinstance(getattr(detector, name, None), nn.Module):
                raise TypeError(f"detector has no {name!r} submodule: expected a torchvision detection model")
        self.detector = detector
        self._handles = [
            detector.transform.register_forward_hook(self._on_transform),
            detector.backbone.register_forward_hook(self._on_backbone),
        ]
        roi_heads = getattr(detector, "roi_heads", None)
        if roi_heads is not None:
            self._handles += [
                roi_heads.box_roi_pool.register_forward_pre_hook(self._on_roi_pool),
                roi_heads.box_predictor.register_forward_hook(self._on_box_predictor),
            ]
        self.clear()

    def clear(self) -> None:
        """Forget what the last forward recorded."""
        self.images: Any = None
        self.targets: list[dict[str, Tensor]] | None = None
        self.features: dict[str, Tensor] | None = None
        self.rois: list[Tensor] | None = None
        self.class_logits: Tensor | None = None
        self.box_regression: Tensor | None = None

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> DetectorTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _on_transform(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.clear()
        self.images, self.targets = output

    def _on_backbone(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.features = output

    def _on_roi_pool(self, module: nn.Module, inputs: Any) -> None:
        self.rois = list(inputs[1])  # MultiScaleRoIAlign(features, proposals, image_shapes)

    def _on_box_predictor(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.class_logits, self.box_regression = output

    def _need(self, value: Any, what: str) -> Any:
        if value is None:
            raise RuntimeError(f"no {what} recorded: run the detector forward (with targets for boxes) inside the tap")
        return value

    @property
    def fpn_features(self) -> list[Tensor]:
        """The backbone's feature maps, finest first."""
        return list(self._need(self.features, "backbone features").values())

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the padded batch tensor the features were computed from."""
        height, width = self._need(self.images, "transformed images").tensors.shape[-2:]
        return int(height), int(width)

    @property
    def gt_boxes(self) -> list[Tensor]:
        """Ground-truth boxes per image, xyxy in pixels of the padded batch tensor."""
        return [t["boxes"] for t in self._need(self.targets, "targets")]

    @property
    def gt_labels(self) -> list[Tensor]:
        return [t["labels"] for t in self._need(self.targets, "targets")]

    def roi_labels(self) -> list[Tensor]:
        """Class labels of the sampled RoIs (0 = background), as the RoI head's own loss assigns them.

        Calls the public ``roi_heads.assign_targets_to_proposals`` on :attr:`rois` and the
        transformed targets: the assignment is deterministic given the sampled RoIs, so these
        are the labels the RoI head's classification loss used.
        """
        rois = self._need(self.rois, "RoIs (two-stage detectors only)")
        _, labels = self.detector.roi_heads.assign_targets_to_proposals(rois, self.gt_boxes, self.gt_labels)
        return labels


def backbone_features(detector: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """The detector's FPN features for an already transformed batch (``DetectorTap.images.tensors``).

    Running the teacher's backbone on the student's transformed batch puts both detectors'
    features in one frame (their transforms must normalise alike: torchvision's default
    ImageNet mean and std for both).
    """
    return detector.backbone(images)


def roi_head_outputs(
    detector: nn.Module, features: dict[str, Tensor], rois: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
) -> tuple[Tensor, Tensor]:
    """A two-stage detector's RoI-head ``(class_logits, box_regression)`` on given RoIs.

    With the teacher's features and the student's sampled RoIs (``DetectorTap.rois``) this gives
    the teacher's predictions on exactly the RoIs the student is trained on, as RoI-level
    distillation (e.g. :func:`kdimpl.defeat_roi_kd_loss`) needs. ``image_sizes`` are the per-image
    sizes before padding (``DetectorTap.images.image_sizes``).
    """
    roi_heads = detector.roi_heads
    pooled = roi_heads.box_roi_pool(features, list(rois), list(image_sizes))
    return roi_heads.box_predictor(roi_heads.box_head(pooled))


def gradient_norm_ratio(distillation: Tensor, detection: Tensor, parameters: Iterable[Tensor]) -> float:
    """``||grad distillation|| / ||grad detection||`` over ``parameters`` (the student's).

    Both graphs are kept (``retain_graph=True``) so the caller can still call ``backward``. A ratio
    well above 1 means the distillation term dominates the update; see the module docstring for
    how to pick ``loss_weight`` from it.
    """
    params = [p for p in parameters if p.requires_grad]

    def norm(loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().pow(2).sum() for g in grads if g is not None]
        return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())

    return float(norm(distillation) / norm(detection).clamp_min(torch.finfo(torch.float32).tiny))


def mark_dynamic_sizes(
    students: Sequence[Tensor], teachers: Sequence[Tensor], gt_boxes: Sequence[Tensor] | Tensor | None = None
) -> None:
    """Hint ``torch.compile`` that feature sizes (and box counts) change from batch to batch.

    Call on each batch's inputs before the compiled loss (``torch._dynamo.maybe_mark_dynamic`` on
    the maps' height and width, and on the box axis of ``gt_boxes``). One graph for every batch
    takes three things together:

    - boxes padded to a fixed capacity with their mask, outside the compiled loss:
      ``gt_boxes, gt_mask = kdimpl.masks.pad_boxes(tap.gt_boxes, min_boxes=M)``, passed as
      ``gt_boxes=gt_boxes, gt_mask=gt_mask``. A list of per-image boxes makes a graph per pattern
      of counts: dynamo gives a count of 0 or 1 its own graph and guards on the longest entry;
    - ``image_size`` as a tensor (``torch.tensor(tap.image_size)``): integers are specialised,
      so every new padded size would compile again;
    - this call, for the feature sizes.

    With these, the box losses that take ``gt_mask`` compile once (tested; DetKDS's transforms
    fail in inductor with dynamic sizes and compile with static ones). Two more limits of torch
    2.13's inductor remain, both about convolutions inside the compiled loss:

    - a convolution over the feature maps (an adapter the loss module holds, such as DeFeat's)
      compiles once per feature size: the lowering of its backward fixes its inputs' strides.
      Apply such adapters before the compiled loss and pass ``adapter_student=None`` (a keyword
      given to a module twin overrides its stored piece), as ``adapt_outside`` in
      ``examples/distill_torchvision.py`` does;
    - on the CPU, any convolution (DRKD's, over RoI features) turns on channels-last layout
      optimisation, whose guards bound the feature sizes; pass
      ``options={"layout_optimization": False}`` to ``torch.compile``.

    Count recompilations with ``python -m benchmarks.losses --step`` before relying on one
    compilation.
    """
    for feature in (*students, *teachers):
        torch._dynamo.maybe_mark_dynamic(feature, 2)
        torch._dynamo.maybe_mark_dynamic(feature, 3)
    if isinstance(gt_boxes, Tensor):
        torch._dynamo.maybe_mark_dynamic(gt_boxes, 1)
    else:
        for boxes in gt_boxes or ():
            torch._dynamo.maybe_mark_dynamic(boxes, 0)
