"""Benchmark every loss on a realistic detection workload: ``python -m benchmarks.losses``.

Workload (the issue's reference): batch 2, 256 channels, the five FPN levels of a 1333x800
input (strides 4 to 64), 20 boxes per image. For each loss it reports forward+backward time
in eager mode and under ``torch.compile``, peak memory of the tensors live during the step,
and the time as a multiple of copying the same feature tensors (the memory-bandwidth floor).
Gradients are reset to ``None`` before every step, as ``optimizer.zero_grad()`` does.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import statistics
import sys
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .cases import BenchCase, all_bench_cases

IMAGE_SIZE = (800, 1333)  # (height, width) after mmdet's 1333x800 resize
LEVELS = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]


def make_boxes(batch: int, num_boxes: int, device, seed: int = 0) -> list[torch.Tensor]:
    """Seeded xyxy boxes in pixels with a spread of sizes, as a detector's ground truth would have."""
    generator = torch.Generator().manual_seed(seed)
    img_h, img_w = IMAGE_SIZE
    boxes = []
    for _ in range(batch):
        u = torch.rand(num_boxes, 4, generator=generator)
        w = 16 + u[:, 2] ** 2 * (img_w / 2)
        h = 16 + u[:, 3] ** 2 * (img_h / 2)
        x1 = u[:, 0] * (img_w - w)
        y1 = u[:, 1] * (img_h - h)
        boxes.append(torch.stack([x1, y1, x1 + w, y1 + h], dim=1).to(device))
    return boxes


class PeakLiveMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created by operators and still alive, over a region of code.

    Works on every device (on CPU PyTorch has no allocator statistics): each operator output's
    storage is counted until the last tensor referring to it is freed. Views of storage that
    existed before the region (``teacher.detach()``, a reshape of an input) allocate nothing and
    are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors referring to it]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr == 0:
                    continue
                entry = self.live.get(ptr)
                if entry is None and ptr in inputs:
                    continue  # a view of (or in-place result on) storage that existed before the region
                if entry is None:
                    self.live[ptr] = entry = [storage.nbytes(), 0]
                    self.current += entry[0]
                    self.peak = max(self.peak, self.current)
                entry[1] += 1
                weakref.finalize(t, self._release, ptr)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    step: Callable[[], None], device: torch.device, min_time: float, warmup: int = 2, min_repeats: int = 3
) -> float:
    """Median seconds of ``step`` over at least ``min_repeats`` repeats filling at least ``min_time`` seconds."""
    for _ in range(warmup):
        step()
    _sync(device)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        step()
        _sync(device)
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 50:
            break
    return statistics.median(samples)


def grad_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The tensors whose ``.grad`` a ``loss.backward()`` fills (student features, adapter weights)."""
    leaves, seen, stack = [], set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _fwd_bwd(loss_fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        for leaf in leaves:  # as optimizer.zero_grad(set_to_none=True): no accumulation pass in the timing
            leaf.grad = None
        loss_fn().backward()

    return step


def _forward_only(build: Callable[[], object], leaves: None = None) -> Callable[[], None]:
    def step() -> None:
        build()

    return step


def copy_floor(device, dtype, channels: int, batch: int, min_time: float) -> float:
    """Time to copy the student and teacher tensors of all levels once into preallocated buffers."""
    tensors = [torch.randn(batch, channels, h, w, device=device, dtype=dtype) for h, w in LEVELS for _ in range(2)]
    buffers = [torch.empty_like(t) for t in tensors]

    def step() -> None:
        for src, dst in zip(tensors, buffers):
            dst.copy_(src)

    return time_step(step, device, min_time)


def peak_memory(step: Callable[[], None]) -> int:
    tracker = PeakLiveMemory()
    with tracker:
        step()
    return tracker.peak


def cuda_peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """The caching allocator's peak during one step, above what was allocated before it (CUDA only)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def run_case(
    case: BenchCase,
    device,
    dtype,
    modes: list[str],
    batch: int,
    boxes: list[torch.Tensor],
    min_time: float,
    min_repeats: int = 3,
    warmup: int = 2,
):
    row: dict[str, object] = {"name": case.name}
    loss_fn = case.make(device, dtype, LEVELS, boxes, IMAGE_SIZE)
    leaves = grad_leaves(loss_fn()) if case.backward else None
    step = _fwd_bwd if case.backward else _forward_only
    if "eager" in modes:
        row["eager_ms"] = 1e3 * time_step(step(loss_fn, leaves), device, min_time, warmup, min_repeats)
        row["peak_mib"] = peak_memory(step(loss_fn, leaves)) / 2**20
        if device.type == "cuda":
            row["cuda_peak_mib"] = cuda_peak_memory(step(loss_fn, leaves), device) / 2**20
    if "compile" in modes:
        torch._dynamo.reset()
        compiled = torch.compile(loss_fn)
        row["compile_ms"] = 1e3 * time_step(step(compiled, leaves), device, min_time, warmup + 1, min_repeats)
    return row


def environment(device: torch.device) -> dict[str, object]:
    env: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.losses", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--mode", default="both", choices=["eager", "compile", "both"])
    parser.add_argument("--losses", default="*", help="shell pattern over benchmark case names")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=20, help="boxes per image")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of repeats per measurement")
    parser.add_argument(
        "--quick", action="store_true", help="one warm-up and one timed step per measurement (minutes, not tens)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.min_time = 0.0
    warmup, min_repeats = (1, 1) if args.quick else (2, 3)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    modes = ["eager", "compile"] if args.mode == "both" else [args.mode]
    cases = [c for c in all_bench_cases() if fnmatch.fnmatchcase(c.name, args.losses)]
    if not cases:
        parser.error(f"no benchmark case matches {args.losses!r}")
    boxes = make_boxes(args.batch, args.boxes, device)
    env = environment(device)
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    print(f"workload: batch {args.batch}, levels {LEVELS}, {args.boxes} boxes/image, dtype {args.dtype}")
    floors = {}
    for channels in sorted({c.channels for c in cases}):
        floors[channels] = 1e3 * copy_floor(device, dtype, channels, args.batch, args.min_time)
        print(f"copy floor ({channels} channels, student+teacher, all levels): {floors[channels]:.1f} ms")

    rows = []
    header = f"{'loss':32} {'eager ms':>9} {'x floor':>8} {'compiled ms':>12} {'x floor':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for case in cases:
        try:
            row = run_case(case, device, dtype, modes, args.batch, boxes, args.min_time, min_repeats, warmup)
        except Exception as error:  # keep benchmarking the others; report the failure
            row = {"name": case.name, "error": f"{type(error).__name__}: {error}"}
            print(f"{case.name:32} failed: {row['error']}", file=sys.stderr)
            rows.append(row)
            continue
        floor = floors[case.channels]
        row["copy_floor_ms"] = floor

        def cell(key: str, width: int) -> str:
            return f"{row[key]:>{width}.1f}" if key in row else " " * (width - 1) + "-"

        def ratio(key: str) -> str:  # forward-only cases (box masks) do not touch the features: no floor
            return f"{row[key] / floor:>7.1f}x" if key in row and case.backward else " " * 7 + "-"

        cuda_peak = f"  (CUDA allocator peak {row['cuda_peak_mib']:.1f} MiB)" if "cuda_peak_mib" in row else ""
        print(
            f"{case.name:32} {cell('eager_ms', 9)} {ratio('eager_ms')} {cell('compile_ms', 12)} {ratio('compile_ms')}"
            f" {cell('peak_mib', 9)}{cuda_peak}"
        )
        rows.append(row)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"environment": env, "copy_floor_ms": floors, "results": rows}, handle, indent=2)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
