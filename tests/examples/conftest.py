"""Fixtures for the examples' tests: the example scripts, loaded as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def torchvision():
    """torchvision, imported through the examples' fallback.

    The torchvision wheel that matches torch 2.13 in the package registry used here is a CUDA build:
    beside the CPU-only torch its compiled operators do not load and ``import torchvision`` fails
    ("operator torchvision::nms does not exist"). ``import_torchvision`` then registers a
    plain-PyTorch ``nms`` and runs ``roi_align``'s pure-PyTorch version eagerly; with a matching
    wheel it is a plain import.
    """
    if importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("torchmetrics") is None:
        pytest.skip("needs the examples extra: pip install -e '.[examples]'")
    sys.path.insert(0, str(EXAMPLES))
    from torchvision_fallback import import_torchvision

    return import_torchvision()


@pytest.fixture(scope="session")
def distill_example(torchvision):
    """examples/distill_torchvision.py as a module."""
    spec = importlib.util.spec_from_file_location("distill_torchvision", EXAMPLES / "distill_torchvision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
