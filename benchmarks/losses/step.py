"""A full distillation training step, and the losses' share of it: ``python -m benchmarks.losses --step``.

The step is the one of ``examples/distill_torchvision.py``: a RetinaNet student (ResNet-18 FPN)
forward and backward with its detection loss, a RetinaNet teacher (ResNet-34 FPN) backbone
forward on the same transformed batch, and the distillation loss over the five FPN levels,
on synthetic shapes whose box count (1 to ``--max-boxes`` per image) and aspect ratio (so the
padded batch size) change from batch to batch.

For each loss it reports:

- the full step (eager) and the loss's own forward+backward on the captured features, eager
  and compiled (``torch.compile`` of the loss module only; the detectors stay eager), as
  medians over the batches, and the loss's share of the step: loss / (step without the loss +
  loss);
- compile time: the first compiled call minus the eager median;
- recompilations over ``--batches`` batches with varying box counts and feature sizes, given
  the compile recipe of :func:`kdimpl.integrations.torchvision.mark_dynamic_sizes` (boxes padded
  to ``--box-capacity`` rows with their ``gt_mask``, ``image_size`` as a tensor, feature sizes
  marked dynamic, adapter convolutions applied before the compiled loss, inside the timing) unless
  ``--no-mark-dynamic``:
  ``torch._dynamo`` compiles counted per call (``counters["stats"]["unique_graphs"]``) after
  the first call, and the reasons dynamo logged for each recompile.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch._functorch.config
import torch._inductor.config

from kdimpl.integrations.torchvision import mark_dynamic_sizes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distill_torchvision.py"


def load_example():
    spec = importlib.util.spec_from_file_location("distill_torchvision", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RecompileReasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.reasons.append(record.getMessage().strip().splitlines()[-1])


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def capture(example, student, teacher, images, targets):
    """One batch through both detectors: the loss's inputs (student features as fresh leaves)."""
    tap = example.DetectorTap(student)
    try:
        with torch.no_grad():
            student(images, targets)
            teacher_feats = list(example.backbone_features(teacher, tap.images.tensors).values())
        students = [f.detach().requires_grad_(True) for f in tap.fpn_features]
        return students, teacher_feats, tap.gt_boxes, tap.image_size
    finally:
        tap.remove()


def full_step(example, student, teacher, distiller, images, targets) -> float:
    """Seconds of one training step (student fwd+bwd, teacher fwd, loss fwd+bwd; no optimiser update)."""
    tap = example.DetectorTap(student)
    try:
        def step() -> None:
            student.zero_grad(set_to_none=True)
            total = sum(student(images, targets).values())
            if distiller is not None:
                total = total + sum(distiller(tap, teacher).values())
            total.backward()

        return _timed(step)
    finally:
        tap.remove()


def loss_step(criterion, inputs, kwargs, prepare=None) -> float:
    """Seconds of the loss's forward and backward; ``prepare(students) -> (students, kwargs)`` runs inside."""
    students, teachers = inputs[:2]

    def step() -> None:
        for s in students:
            s.grad = None
        feeds, extra = prepare(students) if prepare is not None else (students, {})
        if prepare is not None:
            mark_dynamic_sizes(feeds, [], None)
        criterion(feeds, teachers, **kwargs, **extra).backward()

    return _timed(step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.losses --step", description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default="fgd,pkd,cwd,defeat", help="comma-separated feature loss names")
    parser.add_argument("--image-size", type=int, default=800, help="the detectors' resize target (min = max size)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--fpn-channels", type=int, default=256)
    parser.add_argument("--max-boxes", type=int, default=20, help="boxes per image vary from 1 to this")
    parser.add_argument("--batches", type=int, default=20, help="batches for the loss timings and recompile count")
    parser.add_argument("--full-steps", type=int, default=3, help="full training steps timed per loss")
    parser.add_argument("--mode", default="both", choices=["eager", "compile", "both"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-mark-dynamic", dest="mark_dynamic", action="store_false",
                        help="compile on the plain inputs (box lists, integer image size, sizes not marked dynamic): "
                             "recompiles as they change")
    parser.add_argument("--box-capacity", type=int, default=32,
                        help="rows the boxes are padded to for the compiled loss (at least --max-boxes)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Cold compiles: a graph cached on disk by an earlier (static-shape) compile would be reused, and
    # its guards specialise the sizes marked dynamic; it would also hide the compile time.
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    example = load_example()
    torch.manual_seed(0)
    teacher = example.build_detector("retinanet", "resnet34", args.image_size, args.fpn_channels).eval()
    teacher.requires_grad_(False)
    student = example.build_detector("retinanet", "resnet18", args.image_size, args.fpn_channels).train()
    batches = []
    for b in range(args.batches):
        items = [example.make_image(b * args.batch + i, args.image_size, seed=7, max_objects=args.max_boxes)
                 for i in range(args.batch)]
        batches.append(([im for im, _ in items], [t for _, t in items]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; RetinaNet R18 student / R34 teacher, "
          f"FPN {args.fpn_channels} ch, batch {args.batch}, image size {args.image_size}, "
          f"1-{args.max_boxes} boxes/image, {args.batches} batches", flush=True)
    inputs = [capture(example, student, teacher, *batch) for batch in batches]
    padded = sorted({tuple(x[0][0].shape[-2:]) for x in inputs})
    counts = sorted({len(b) for x in inputs for b in x[2]})
    print(f"finest-level feature sizes over the batches: {padded}; box counts per image: {counts}", flush=True)

    base = [full_step(example, student, teacher, None, *batches[i]) for i in range(args.full_steps)]
    base_ms = 1e3 * statistics.median(base)
    print(f"step without distillation (student fwd+bwd, eager): {base_ms:.0f} ms", flush=True)
    header = (f"{'loss':16} {'step ms':>8} {'loss eager ms':>14} {'share':>6} {'loss compiled ms':>17} {'share':>6}"
              f" {'compile s':>10} {'recompiles':>11}")
    print(header)
    print("-" * len(header), flush=True)
    reasons_log = _RecompileReasons()
    logging.getLogger("torch._dynamo").addHandler(reasons_log)
    torch._logging.set_logs(recompiles=True)
    for name in [n.strip() for n in args.losses.split(",") if n.strip()]:
        distiller = example.Distiller(name, None, args.fpn_channels, len(inputs[0][0]), two_stage=False,
                                      record_levels=False)
        criterion = distiller.features
        row = {"loss": name}
        step = [full_step(example, student, teacher, distiller, *batches[i]) for i in range(args.full_steps)]
        row["step_ms"] = 1e3 * statistics.median(step)
        if args.mode in ("eager", "both"):
            eager = [loss_step(criterion, x, example.loss_inputs(criterion.losses[0], x[2], x[3])) for x in inputs]
            row["eager_ms"] = 1e3 * statistics.median(eager[1:])
            row["eager_share"] = row["eager_ms"] / (base_ms + row["eager_ms"])
        if args.mode in ("compile", "both"):
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            reasons_log.reasons.clear()
            compiled = torch.compile(criterion)
            times, graphs = [], []
            for x in inputs:
                kwargs = example.loss_inputs(criterion.losses[0], x[2], x[3],
                                             box_capacity=args.box_capacity if args.mark_dynamic else None)
                if args.mark_dynamic:
                    mark_dynamic_sizes(x[0], x[1], kwargs.get("gt_boxes"))
                prepare = partial(example.adapt_outside, criterion) if args.mark_dynamic else None
                times.append(loss_step(compiled, x, kwargs, prepare))
                graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
            row["compiled_ms"] = 1e3 * statistics.median(times[len(times) // 2:])
            row["compiled_share"] = row["compiled_ms"] / (base_ms + row["compiled_ms"])
            row["compile_s"] = times[0] - row.get("eager_ms", row["compiled_ms"]) / 1e3
            row["graphs_first_call"] = graphs[0]
            row["recompiles"] = graphs[-1] - graphs[0]
            row["recompile_at"] = [i for i in range(1, len(graphs)) if graphs[i] > graphs[i - 1]]
            row["recompile_reasons"] = list(reasons_log.reasons)
            row["recompile_s"] = sum(times[i] for i in row["recompile_at"])

        def cell(key, fmt, width):
            return format(row[key], fmt).rjust(width) if key in row else "-".rjust(width)

        print(f"{name:16} {cell('step_ms', '.0f', 8)} {cell('eager_ms', '.0f', 14)} {cell('eager_share', '.0%', 6)}"
              f" {cell('compiled_ms', '.0f', 17)} {cell('compiled_share', '.0%', 6)} {cell('compile_s', '.1f', 10)}"
              f" {cell('recompiles', 'd', 11)}", flush=True)
        if row.get("recompiles"):
            print(f"    recompiled at batches {row['recompile_at']} ({row['recompile_s']:.1f} s in those calls); "
                  f"graphs on the first call: {row['graphs_first_call']}", flush=True)
            for reason in dict.fromkeys(row["recompile_reasons"]):
                print(f"    reason: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
