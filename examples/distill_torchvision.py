"""Distil a torchvision detector with any kdimpl feature loss, on synthetic shapes, on CPU.

The teacher (ResNet-34 FPN) and the student (ResNet-18 FPN) are torchvision detectors built with
``weights=None``; the data are coloured rectangles and ellipses on noise, generated in code. The
teacher is trained first for ``--teacher-steps`` (or loaded from ``--teacher-checkpoint``, which
this script writes after training it), then the student is trained with its detection loss plus
the chosen distillation loss applied to every FPN level::

    python examples/distill_torchvision.py --loss fgd --steps 20
    python examples/distill_torchvision.py --loss none --steps 300 --eval      # the baseline
    python examples/distill_torchvision.py --detector fasterrcnn --loss pkd --roi-loss defeat_roi_kd

**The frame.** ``detector.transform`` resizes every image and its boxes, then pads the batch
at the bottom/right to a multiple of 32; the FPN features come from that padded tensor. The
boxes given to the loss are the transformed targets' boxes and ``image_size`` is the padded
tensor's (height, width), both read by :class:`kdimpl.integrations.torchvision.DetectorTap`;
the teacher's backbone runs on the student's transformed batch, so both feature sets share
that frame.

**Loss weights.** ``--loss-weight`` multiplies the loss's own (paper) weights; every
``--log-every`` steps the script logs the ratio of the distillation gradient norm to the
detection gradient norm on the student. ``--grad-ratio R`` sets the weight on the first step so
that this ratio is R (the papers' weights, tuned for COCO at 1333x800, give ratios far above 1
at this scale and swamp the detection loss).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from functools import partial

import torch
import torch._functorch.config
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kdimpl  # noqa: E402
from kdimpl.masks import pad_boxes  # noqa: E402
from kdimpl.integrations.torchvision import (  # noqa: E402
    DetectorTap,
    backbone_features,
    gradient_norm_ratio,
    mark_dynamic_sizes,
    roi_head_outputs,
)
from torchvision_fallback import import_torchvision  # noqa: E402

torchvision = import_torchvision()
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7  # noqa: E402

NUM_CLASSES = 5  # background + {red, blue} x {rectangle, ellipse}
COLOURS = torch.tensor([[0.9, 0.15, 0.1], [0.1, 0.3, 0.95]])

# ---------------------------------------------------------------------------------------------
# Synthetic data


def make_image(index: int, image_size: int, seed: int, max_objects: int = 4) -> tuple[Tensor, dict[str, Tensor]]:
    """Image ``index`` of the dataset: noise, then 1..max_objects shapes; boxes xyxy in its pixels."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    height = int(image_size * (0.6 + 0.4 * torch.rand((), generator=g)))
    width = int(image_size * (0.6 + 0.4 * torch.rand((), generator=g)))
    image = 0.35 + 0.25 * torch.rand(3, height, width, generator=g)
    ys = torch.arange(height).view(-1, 1) + 0.5
    xs = torch.arange(width).view(1, -1) + 0.5
    count = int(torch.randint(1, max_objects + 1, (), generator=g))
    boxes, labels = [], []
    for _ in range(count):
        side = min(height, width)
        w = float(side * (0.12 + 0.33 * torch.rand((), generator=g)))
        h = float(side * (0.12 + 0.33 * torch.rand((), generator=g)))
        x1 = float((width - w) * torch.rand((), generator=g))
        y1 = float((height - h) * torch.rand((), generator=g))
        colour = int(torch.randint(0, 2, (), generator=g))
        ellipse = bool(torch.randint(0, 2, (), generator=g))
        if ellipse:
            inside = ((xs - x1 - w / 2) / (w / 2)) ** 2 + ((ys - y1 - h / 2) / (h / 2)) ** 2 <= 1
        else:
            inside = (xs >= x1) & (xs <= x1 + w) & (ys >= y1) & (ys <= y1 + h)
        shade = COLOURS[colour] * (0.8 + 0.2 * torch.rand((), generator=g))
        image = torch.where(inside, shade.view(3, 1, 1), image)
        boxes.append([x1, y1, x1 + w, y1 + h])
        labels.append(1 + 2 * colour + int(ellipse))
    image = (image + 0.05 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    return image, {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels, dtype=torch.int64)}


def batches(num_images: int, batch_size: int, image_size: int, seed: int, epoch_seed: int = 0):
    """Endless shuffled mini-batches over a fixed set of ``num_images`` images."""
    cache: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}
    g = torch.Generator().manual_seed(epoch_seed)
    while True:
        order = torch.randperm(num_images, generator=g).tolist()
        for start in range(0, num_images - batch_size + 1, batch_size):
            items = []
            for i in order[start : start + batch_size]:
                if i not in cache:
                    cache[i] = make_image(i, image_size, seed)
                items.append(cache[i])
            yield [im for im, _ in items], [t for _, t in items]


# ---------------------------------------------------------------------------------------------
# Detectors


def build_detector(kind: str, backbone_name: str, image_size: int, fpn_channels: int) -> nn.Module:
    """A torchvision detector with a ResNet FPN backbone, ``weights=None``, sized for small images."""
    resnet = getattr(torchvision.models, backbone_name)(weights=None)
    two_stage = kind == "fasterrcnn"
    layers = ["layer1", "layer2", "layer3", "layer4"] if two_stage else ["layer2", "layer3", "layer4"]
    in_channels = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    extra = LastLevelMaxPool() if two_stage else LastLevelP6P7(fpn_channels, fpn_channels)
    backbone = BackboneWithFPN(
        resnet,
        return_layers={name: str(i) for i, name in enumerate(layers)},
        in_channels_list=[in_channels[name] for name in layers],
        out_channels=fpn_channels,
        extra_blocks=extra,
    )
    sizes = {"min_size": image_size, "max_size": image_size}
    base = (8, 16, 32, 64, 128)  # strides 4..64 (two-stage) or 8..128: anchors for 10-60 px objects
    if kind == "retinanet":
        anchors = AnchorGenerator(tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in base),
                                  ((0.5, 1.0, 2.0),) * 5)
        return RetinaNet(backbone, NUM_CLASSES, anchor_generator=anchors, **sizes)
    if kind == "fcos":
        anchors = AnchorGenerator(tuple((s,) for s in base), ((1.0,),) * 5)
        return FCOS(backbone, NUM_CLASSES, anchor_generator=anchors, **sizes)
    if kind == "fasterrcnn":
        anchors = AnchorGenerator(tuple((s,) for s in base), ((0.5, 1.0, 2.0),) * 5)
        return FasterRCNN(
            backbone, NUM_CLASSES, rpn_anchor_generator=anchors, rpn_pre_nms_top_n_train=300,
            rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=64, **sizes,
        )
    raise ValueError(f"unknown detector {kind!r}")


# ---------------------------------------------------------------------------------------------
# Distillation losses

#: Inputs this script can give a feature loss besides student and teacher features.
PROVIDED = {"gt_boxes", "gt_mask", "image_size", "instance_boxes", "level", "num_levels", "proposals"}
#: Rows the boxes are padded to for a compiled loss (more than any synthetic image holds).
BOX_CAPACITY = 32


def _required(fn) -> list[str]:
    return [n for n, p in inspect.signature(fn).parameters.items() if p.default is p.empty]


def build_feature_loss(name: str, channels: int, two_stage: bool) -> nn.Module:
    """One loss module (or one per level when it owns learnable pieces), built for ``channels``."""
    cls = kdimpl.get_loss(name)
    options = inspect.signature(cls.__init__).parameters
    kwargs = {k: channels for k in ("channels", "student_channels", "teacher_channels") if k in options}
    loss = cls(**kwargs)
    fn = kdimpl.get_loss_function(name)
    params = list(inspect.signature(fn).parameters)
    provided = PROVIDED if two_stage else PROVIDED - {"proposals"}
    missing = [n for n in _required(fn)[2:] if n not in provided and getattr(loss, n, None) is None]
    if params[:2] != ["student", "teacher"] or missing:
        raise ValueError(f"--loss {name}: not a feature loss this script can feed (needs {missing or params[:2]})")
    return loss


def feature_loss_names(two_stage: bool = False) -> list[str]:
    """Registered losses that take this script's inputs and accept a pair of (N, C, H, W) FPN maps."""
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[10.0, 8.0, 60.0, 60.0]])]
    inputs = {"gt_boxes": boxes, "instance_boxes": boxes, "image_size": (64, 64), "proposals": boxes}
    names = []
    for name in kdimpl.list_losses():
        try:
            loss = build_feature_loss(name, 8, two_stage)
            params = inspect.signature(loss.forward).parameters
            loss(torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16), **{k: v for k, v in inputs.items() if k in params})
        except Exception:  # noqa: BLE001 - a loss over other shapes (logits, queries, RoI features)
            continue
        names.append(name)
    return names


def loss_inputs(loss: nn.Module, gt_boxes: list[Tensor], image_size: tuple[int, int], *,
                rois: list[Tensor] | None = None, box_capacity: int | None = None) -> dict[str, object]:
    """The keyword inputs ``loss`` takes, from boxes and the image size in the padded-batch frame.

    With ``box_capacity`` (for a compiled loss), a loss that takes ``gt_mask`` gets its boxes padded
    to that many rows with their mask, and ``image_size`` comes as a tensor: the same shapes every
    batch, so one graph serves them all (see :func:`kdimpl.integrations.torchvision.mark_dynamic_sizes`).
    """
    params = inspect.signature(loss.forward).parameters
    available = {"gt_boxes": gt_boxes, "instance_boxes": gt_boxes, "image_size": image_size}
    if box_capacity is not None:
        available["image_size"] = torch.tensor(image_size)
        if "gt_mask" in params:
            available["gt_boxes"], available["gt_mask"] = pad_boxes(gt_boxes, min_boxes=box_capacity)
    if rois is not None:
        available["proposals"] = [r.detach() for r in rois]
    return {k: v for k, v in available.items() if k in params}


def feature_loss_inputs(loss: nn.Module, tap: DetectorTap, box_capacity: int | None = None) -> dict[str, object]:
    """:func:`loss_inputs` from what the tap recorded (all in the padded-batch frame)."""
    return loss_inputs(loss, tap.gt_boxes, tap.image_size, rois=tap.rois, box_capacity=box_capacity)


def adapt_outside(criterion: kdimpl.MultiLevelLoss, students: list[Tensor]) -> tuple[list[Tensor], dict[str, object]]:
    """Apply the loss modules' ``adapter_student`` eagerly, for a compiled ``criterion``.

    A convolution inside the compiled graph compiles once per feature size (torch 2.13's inductor
    fixes the strides of a convolution's backward), so the adapters run before it and the loss is
    told that ``student`` is already adapted (``adapter_student=None`` overrides the stored one).
    """
    losses = list(criterion.losses)
    losses = losses if len(losses) == len(students) else losses[:1] * len(students)
    adapters = [getattr(loss, "adapter_student", None) for loss in losses]
    if all(adapter is None for adapter in adapters):
        return students, {}
    return [s if a is None else a(s) for a, s in zip(adapters, students)], {"adapter_student": None}


class Distiller(nn.Module):
    """The distillation criterion: a feature loss over every FPN level (and a RoI loss, two-stage only)."""

    def __init__(self, loss_name: str, roi_loss_name: str | None, channels: int, num_levels: int, two_stage: bool,
                 record_levels: bool = True, compile_loss: bool = False):
        super().__init__()
        self.loss_name, self.roi_loss_name = loss_name, roi_loss_name
        build = partial(build_feature_loss, loss_name, channels, two_stage)
        first = build()
        owns_parameters = any(True for _ in first.parameters())
        # One module per level when the loss owns learnable pieces (FGD's context blocks, adapters).
        per_level = [first, *(build() for _ in range(num_levels - 1))] if owns_parameters else first
        self.features = kdimpl.MultiLevelLoss(per_level)
        self.roi = kdimpl.get_loss(roi_loss_name)() if roi_loss_name else None
        self.level_values: list[Tensor] = []
        self.compiled = None
        self.box_capacity = BOX_CAPACITY
        if compile_loss:
            # The gradient-ratio log differentiates the loss with retain_graph=True, which compiled
            # backward passes that reuse (donate) their buffers refuse.
            torch._functorch.config.donated_buffer = False
            self.compiled = torch.compile(self.features)
        if record_levels and not compile_loss:  # for the log; off under torch.compile (dynamo guards on the list)
            for module in self.features.losses:
                module.register_forward_hook(lambda _m, _i, out: self.level_values.append(out.detach()))

    def forward(self, tap: DetectorTap, teacher: nn.Module) -> dict[str, Tensor]:
        self.level_values.clear()
        with torch.no_grad():
            teacher_feats = backbone_features(teacher, tap.images.tensors)
        student_feats, teacher_feats_list = tap.fpn_features, list(teacher_feats.values())
        criterion = self.features
        inputs = feature_loss_inputs(self.features.losses[0], tap, self.box_capacity if self.compiled is not None else None)
        if self.compiled is not None:
            student_feats, adapted = adapt_outside(self.features, student_feats)
            inputs.update(adapted)
            # Feature sizes change every batch: marked dynamic, with the boxes padded to a fixed capacity.
            mark_dynamic_sizes(student_feats, teacher_feats_list, inputs.get("gt_boxes"))
            criterion = self.compiled
        terms = {"feature": criterion(student_feats, teacher_feats_list, **inputs)}
        if self.roi is not None:
            with torch.no_grad():
                teacher_logits, _ = roi_head_outputs(teacher, teacher_feats, tap.rois, tap.images.image_sizes)
            kwargs = {"labels": torch.cat(tap.roi_labels())} if "labels" in inspect.signature(self.roi.forward).parameters else {}
            terms["roi"] = self.roi(tap.class_logits, teacher_logits, **kwargs)
        return terms


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def train_detector(model: nn.Module, steps: int, data, lr: float, log_every: int, tag: str) -> None:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(steps):
        images, targets = next(data)
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"[{tag}] step {step:4d} detection {total.item():.4f}", flush=True)


def distill(student, teacher, distiller, steps, data, args) -> list[dict[str, object]]:
    """Train ``student`` on detection + distillation; returns one log record per logged step."""
    student.train()
    teacher.eval()
    params = list(student.parameters()) + (list(distiller.parameters()) if distiller is not None else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    fpn_params = list(student.backbone.fpn.parameters())
    weight = args.loss_weight
    history = []
    tap = DetectorTap(student)
    try:
        for step in range(steps):
            images, targets = next(data)
            detection = student(images, targets)
            det_total = sum(detection.values())
            terms = distiller(tap, teacher) if distiller is not None else {}
            distill_raw = sum(terms.values()) if terms else None
            log = args.log_every and (step % args.log_every == 0 or step == steps - 1)
            record: dict[str, object] = {}
            if distill_raw is not None and (log or (step == 0 and args.grad_ratio)):
                ratio = gradient_norm_ratio(distill_raw, det_total, student.parameters())
                if step == 0 and args.grad_ratio:
                    weight = args.grad_ratio / max(ratio, 1e-12)
                    print(f"--grad-ratio {args.grad_ratio}: loss weight set to {weight:.3g}", flush=True)
                fpn_grads = torch.autograd.grad(distill_raw, fpn_params, retain_graph=True, allow_unused=True)
                record["grad_ratio"] = ratio * weight
                record["fpn_grad_norm"] = math.sqrt(sum(float(g.pow(2).sum()) for g in fpn_grads if g is not None))
            total = det_total if distill_raw is None else det_total + weight * distill_raw
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            if log:
                record.update(step=step, detection={k: v.item() for k, v in detection.items()},
                              detection_total=det_total.item(), loss_weight=weight)
                if terms:
                    record["distill"] = {k: v.item() for k, v in terms.items()}
                    record["distill_levels"] = [float(v) for v in distiller.level_values]
                history.append(record)
                msg = f"[student] step {step:4d} detection {det_total.item():.4f}"
                msg += "".join(f" | {k} {v:.3g}" for k, v in record["detection"].items())
                if terms:
                    msg += "".join(f" | distill_{k} {v:.4g}" for k, v in record["distill"].items())
                    if record["distill_levels"]:
                        msg += " | levels " + " ".join(f"{v:.3g}" for v in record["distill_levels"])
                    msg += f" | weight {weight:.3g} | grad ratio distill/detection {record['grad_ratio']:.3g}"
                print(msg, flush=True)
    finally:
        tap.remove()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, num_images: int, image_size: int, seed: int, batch_size: int = 8) -> dict[str, float]:
    """COCO-style AP on a held-out synthetic set (torchmetrics, pycocotools backend)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    model.eval()
    for start in range(0, num_images, batch_size):
        items = [make_image(i, image_size, seed) for i in range(start, min(start + batch_size, num_images))]
        predictions = model([im for im, _ in items])
        metric.update([{k: p[k] for k in ("boxes", "scores", "labels")} for p in predictions], [t for _, t in items])
    result = metric.compute()
    return {k: float(result[k]) for k in ("map", "map_50", "map_75", "mar_100")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loss", default="fgd", help="a kdimpl feature loss name (see --list) or 'none' for the baseline")
    p.add_argument("--roi-loss", default=None, help="two-stage only: a RoI logits loss, e.g. defeat_roi_kd")
    p.add_argument("--list", action="store_true", help="list the feature losses this script can use and exit")
    p.add_argument("--detector", default="retinanet", choices=["retinanet", "fcos", "fasterrcnn"])
    p.add_argument("--teacher-backbone", default="resnet34")
    p.add_argument("--student-backbone", default="resnet18")
    p.add_argument("--fpn-channels", type=int, default=64, help="FPN channels of both detectors")
    p.add_argument("--image-size", type=int, default=128, help="resize target (min_size = max_size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-train", type=int, default=512, help="training images (fixed set, shuffled)")
    p.add_argument("--num-val", type=int, default=200, help="held-out images for --eval")
    p.add_argument("--steps", type=int, default=200, help="student training steps")
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--teacher-checkpoint", default=None, help="load the teacher from here, or train it and save here")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss-weight", type=float, default=1.0, help="multiplies the distillation loss")
    p.add_argument("--grad-ratio", type=float, default=None,
                   help="set the loss weight on step 0 so that |grad distill| / |grad detection| equals this")
    p.add_argument("--compile", action="store_true", help="torch.compile the distillation loss (sizes marked dynamic)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval", action="store_true", help="report COCO AP of the student (and teacher) on held-out data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the log and results here")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, object]:
    args = parse_args(argv)
    two_stage = args.detector == "fasterrcnn"
    if args.list:
        print("\n".join(feature_loss_names(two_stage)))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.roi_loss and not two_stage:
        raise SystemExit("--roi-loss needs --detector fasterrcnn")
    started = time.perf_counter()

    torch.manual_seed(args.seed)
    teacher = build_detector(args.detector, args.teacher_backbone, args.image_size, args.fpn_channels)
    if args.teacher_checkpoint and os.path.exists(args.teacher_checkpoint):
        teacher.load_state_dict(torch.load(args.teacher_checkpoint, map_location="cpu"))
        print(f"teacher loaded from {args.teacher_checkpoint}", flush=True)
    else:
        teacher_data = batches(args.num_train, args.batch_size, args.image_size, args.seed, epoch_seed=args.seed + 1)
        train_detector(teacher, args.teacher_steps, teacher_data, args.lr, args.log_every, "teacher")
        if args.teacher_checkpoint:
            torch.save(teacher.state_dict(), args.teacher_checkpoint)
            print(f"teacher saved to {args.teacher_checkpoint}", flush=True)
    teacher.eval().requires_grad_(False)

    torch.manual_seed(args.seed + 1)  # the same student initialisation with and without distillation
    student = build_detector(args.detector, args.student_backbone, args.image_size, args.fpn_channels)
    distiller = None
    if args.loss != "none":
        num_levels = len(teacher.backbone(torch.zeros(1, 3, 64, 64)))
        distiller = Distiller(args.loss, args.roi_loss, args.fpn_channels, num_levels, two_stage,
                              compile_loss=args.compile)
    data = batches(args.num_train, args.batch_size, args.image_size, args.seed, epoch_seed=args.seed + 2)
    history = distill(student, teacher, distiller, args.steps, data, args)
    result: dict[str, object] = {"args": vars(args), "history": history}
    if args.eval:
        val_seed = args.seed + 10_000  # images never seen in training
        result["student_ap"] = evaluate(student, args.num_val, args.image_size, val_seed)
        print(f"student ({args.loss}) held-out AP: " + json.dumps(result["student_ap"]), flush=True)
        result["teacher_ap"] = evaluate(teacher, args.num_val, args.image_size, val_seed)
        print("teacher held-out AP: " + json.dumps(result["teacher_ap"]), flush=True)
    result["seconds"] = time.perf_counter() - started
    print(f"done in {result['seconds']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
