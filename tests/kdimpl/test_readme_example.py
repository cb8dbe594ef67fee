"""The Python examples shown in README.md run as written."""

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLES = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def test_readme_has_an_example():
    assert EXAMPLES


@pytest.mark.parametrize("source", EXAMPLES)
def test_readme_example_runs(source):
    namespace: dict = {}
    exec(compile(source, str(README), "exec"), namespace)
    loss = namespace["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
