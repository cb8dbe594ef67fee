"""Gradients of every registered loss: one process on a union batch, or its halves under DDP.

``tests/kdimpl/test_distributed.py`` spawns :func:`worker` in ``WORLD_SIZE`` ``gloo`` processes
on 127.0.0.1 and compares what rank 0 saves with :func:`union_gradients` in the test process.
"""

from __future__ import annotations

import copy
import functools
import os

import torch
import torch.distributed as dist
from torch import nn

import kdimpl
from kdimpl.distributed import global_normalisers

from .cases import all_cases

WORLD_SIZE = 2
SHAPE = dict(batch=4, height=12, width=20, num_boxes=3)


class Distilled(nn.Module):
    """A learnable offset on the student tensor (so DDP averages the student's gradient, position by
    position) and the loss's learnable pieces, all seen by DDP."""

    def __init__(self, student: torch.Tensor, pieces: dict[str, nn.Module]):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros_like(student))
        self.pieces = nn.ModuleDict(pieces)

    def forward(self, name: str, args: list, kwargs: dict, options: dict, rank: int | None) -> torch.Tensor:
        """The loss on ``rank``'s share of the batch (``None``: all of it)."""
        size = args[0].shape[0]
        args = [args[0] + self.offset, *args[1:]]
        kwargs = {**kwargs, **self.pieces}
        part = _cases()[name].part
        if rank is not None and part is not None:
            args, kwargs = part(args, kwargs, rank, WORLD_SIZE)
        elif rank is not None:
            args = [_part(value, size, rank) for value in args]
            kwargs = {key: _part(value, size, rank) for key, value in kwargs.items()}
        return kdimpl.get_loss_function(name)(*args, **kwargs, **options)


@functools.cache
def _cases():
    """The contract cases, collected once per process (every loss is run several times)."""
    return all_cases()


def inputs(name: str):
    case = _cases()[name]
    generator = torch.Generator().manual_seed(0)
    args, kwargs = case.make_inputs(generator, "cpu", torch.float64, **SHAPE)
    pieces = {key: value for key, value in kwargs.items() if isinstance(value, nn.Module)}
    return list(args), kwargs, pieces, case.options


def _part(value, size: int, rank: int):
    """``rank``'s share of a value whose first dimension (or length) is ``size``; others unchanged."""
    step = size // WORLD_SIZE
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == size:
        return value[rank * step:(rank + 1) * step]
    if isinstance(value, (list, tuple)) and len(value) == size and all(isinstance(v, torch.Tensor) for v in value):
        return type(value)(value[rank * step:(rank + 1) * step])
    return value


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for key, p in
            model.named_parameters()}


def union_gradients(name: str) -> dict[str, torch.Tensor]:
    """One process, the whole batch."""
    args, kwargs, pieces, options = inputs(name)
    model = Distilled(args[0], copy.deepcopy(pieces)).double()
    model(name, args, kwargs, options, None).backward()
    return gradients(model)


def ddp_gradients(name: str, rank: int, synchronise: bool) -> dict[str, torch.Tensor]:
    args, kwargs, pieces, options = inputs(name)
    model = nn.parallel.DistributedDataParallel(
        Distilled(args[0], copy.deepcopy(pieces)).double(), find_unused_parameters=True
    )
    context = global_normalisers() if synchronise else torch.enable_grad()
    with context:
        model(name, args, kwargs, options, rank).backward()
    return gradients(model.module)


def worker(rank: int, port: int, names: list[str], out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        for name in names:
            results[name] = {
                "local": ddp_gradients(name, rank, synchronise=False),
                "global": ddp_gradients(name, rank, synchronise=True),
            }
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()
