"""Shared pytest configuration: device and dtype fixtures, the ``gpu`` marker."""

from __future__ import annotations

import pytest


def _torch():
    try:
        import torch
    except ImportError:  # the catalog's tests run without torch
        return None
    return torch


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped cleanly without one")
    config.addinivalue_line("markers", "parity: compares against fixtures produced by official implementations")


def pytest_collection_modifyitems(config, items):
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _devices():
    torch = _torch()
    devices = ["cpu"]
    if torch is not None and torch.cuda.is_available():
        devices.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return devices


@pytest.fixture(params=_devices())
def device(request):
    """``cpu`` always, ``cuda`` as well when a GPU is present: the same tests run on both."""
    return _torch().device(request.param)


@pytest.fixture(params=["float32"])
def dtype(request):
    """Full precision; half precision has its own fixture because not every check applies to it."""
    return getattr(_torch(), request.param)


@pytest.fixture(params=["float16", "bfloat16"])
def half_dtype(request):
    return getattr(_torch(), request.param)
