"""Every registered loss under DistributedDataParallel: two ``gloo`` processes on 127.0.0.1 against
one process on the union of their batches, checked against the loss's declared behaviour
(:mod:`kdimpl.distributed`)."""

from __future__ import annotations

import socket

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import kdimpl  # noqa: E402
from kdimpl.distributed import BEHAVIOURS, distributed_behaviour, global_normalisers, reduce_normaliser  # noqa: E402

from . import ddp_worker  # noqa: E402

NAMES = kdimpl.list_losses()

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Rank 0's gradients for every loss, local and global normalisers; one spawn for all losses."""
    out = tmp_path_factory.mktemp("ddp") / "grads.pt"
    try:
        torch.multiprocessing.spawn(
            ddp_worker.worker, args=(_free_port(), NAMES, str(out)), nprocs=ddp_worker.WORLD_SIZE, join=True
        )
    except torch.multiprocessing.ProcessExitedException:
        # A worker that died without a Python exception (seen a few times in many runs; the cause was not
        # pinned down) is started again once; an exception raised by a loss is not retried.
        torch.multiprocessing.spawn(
            ddp_worker.worker, args=(_free_port(), NAMES, str(out)), nprocs=ddp_worker.WORLD_SIZE, join=True
        )
    return torch.load(out)


def _close(a: dict, b: dict, scale: float = 1.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k] * scale, b[k], rtol=1e-7, atol=1e-12) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_under_ddp_are_what_the_loss_declares(ddp, name):
    behaviour = distributed_behaviour(name)
    assert behaviour in BEHAVIOURS
    union = ddp_worker.union_gradients(name)
    local, synchronised = ddp[name]["local"], ddp[name]["global"]
    for grads in (local, synchronised):
        assert all(torch.isfinite(g).all() for g in grads.values()), f"{name}: non-finite gradients under DDP"
    if behaviour == "exact":
        assert _close(local, union), f"{name}: DDP gradients differ from one process on the union batch"
    elif behaviour == "sum":
        assert _close(local, union, scale=ddp_worker.WORLD_SIZE), f"{name}: DDP gradients x world size != union"
        assert not _close(local, union)
    elif behaviour == "count":
        assert _close(synchronised, union), f"{name}: global normalisers do not give the union batch's gradients"
        assert not _close(local, union), f"{name}: declared 'count' but the local normaliser already matches"
    else:  # "batch": couples the images of a batch; neither relation holds
        assert not _close(local, union) and not _close(local, union, scale=ddp_worker.WORLD_SIZE)


def test_reduce_normaliser_is_the_identity_outside_a_process_group():
    count = torch.tensor(3.0)
    assert reduce_normaliser(count) is count
    with global_normalisers():
        assert torch.equal(reduce_normaliser(count), count)


def test_unknown_behaviour_is_refused():
    with pytest.raises(ValueError, match="distributed must be one of exact, sum, count, batch; got 'mean'"):
        kdimpl.register_loss("never", function=lambda x: x, distributed="mean")
