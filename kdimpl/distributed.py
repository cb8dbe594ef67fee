"""The losses under :class:`torch.nn.parallel.DistributedDataParallel`.

DDP averages gradients over processes, so each process's loss counts ``1 / world_size``. Whether
that equals one process training on the union of the processes' batches depends on how a loss
normalises; every registered loss declares it (``register_loss(..., distributed=...)``, read back
with :func:`distributed_behaviour`), and ``tests/kdimpl/test_distributed.py`` checks the
declaration with two ``gloo`` processes against one process on the union batch:

``"exact"``
    The loss is a mean over images, positions or boxes of equal-sized local batches: the gradients
    equal those of one process on the union batch.
``"sum"``
    The paper's normalisation is a sum over the batch (over positives, boxes or images), so DDP's
    average gives ``1 / world_size`` of the union batch's gradients. Multiply ``loss_weight`` by the
    world size to train as one process would.
``"count"``
    The loss divides by a count of the local batch (foreground pixels, selected RoIs, a mask's
    sum). Each process divides by its own count; inside :func:`global_normalisers` the count is
    replaced by its mean over the processes (mmdet reduces ``avg_factor`` with ``all_reduce`` the
    same way) and the gradients equal the union batch's.
``"batch"``
    The loss couples the images of a batch (statistics or relations over all of them), so a
    process sees only its part; no normaliser can make the gradients equal. The loss's docstring
    says what is computed per process.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["BEHAVIOURS", "distributed_behaviour", "global_normalisers", "reduce_normaliser"]

#: The declared behaviours, described in this module's docstring.
BEHAVIOURS = ("exact", "sum", "count", "batch")

_state = threading.local()


@contextlib.contextmanager
def global_normalisers(group: dist.ProcessGroup | None = None) -> Iterator[None]:
    """Inside this block, losses that divide by a count of the batch divide by its mean over processes.

    Every process must call the same losses in the same order inside the block: each count is
    ``all_reduce``-d. Outside a process group (one process) the block changes nothing.

    Example:
        >>> import torch
        >>> from kdimpl.distributed import global_normalisers, reduce_normaliser
        >>> with global_normalisers():
        ...     reduce_normaliser(torch.tensor(4.0))  # one process: unchanged
        tensor(4.)
    """
    previous = getattr(_state, "group", None), getattr(_state, "enabled", False)
    _state.group, _state.enabled = group, True
    try:
        yield
    finally:
        _state.group, _state.enabled = previous


def reduce_normaliser(count: Tensor | float) -> Tensor | float:
    """``count`` averaged over the processes inside :func:`global_normalisers`, else ``count``.

    The count carries no gradient: it is detached before the ``all_reduce``.
    """
    if not getattr(_state, "enabled", False) or not dist.is_available() or not dist.is_initialized():
        return count
    group = _state.group
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return count
    count = torch.as_tensor(count)
    total = count.detach().to(count.dtype if count.is_floating_point() else torch.float32).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total / world_size


def distributed_behaviour(name: str) -> str:
    """The declared DDP behaviour of the registered loss ``name``: one of :data:`BEHAVIOURS`."""
    from ._registry import _entry

    return _entry(name).distributed
