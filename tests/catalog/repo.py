"""A throwaway repository for command tests: the core fixture's papers, the real templates, a toy kdimpl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "core" / "repo"
REPO = HERE.parents[1]
TOY = (
    '__all__ = ["toy_loss", "ToyLoss"]\n\n\ndef toy_loss(student, teacher):\n    return 0\n\n\n'
    "class ToyLoss:\n    pass\n"
)


def make_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "kdimpl" / "losses").mkdir(parents=True)
    (root / "kdimpl" / "losses" / "toy.py").write_text(TOY, encoding="utf-8")
    return root


def run_module(*args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m catalog ARGS`` in a child process, this checkout first on the path."""
    environment = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "catalog", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout)
