"""What several commands share: loading and validating the catalog, one-line error reasons."""

from __future__ import annotations

import sys
from pathlib import Path

from catalog.model import Catalog
from catalog.validate import Result, validate_root


def load_for(command: str, root: Path) -> Catalog | None:
    """The papers that load; a one-line note on stderr when some do not (``check`` lists them).

    None, after saying so, when problems left no paper to work on.
    """
    result = validate_root(root)
    if result.problems and not result.catalog.papers:
        print(f"{command}: {len(result.problems)} problem(s) and no paper could be loaded from papers/ "
              "(run `python -m catalog check`)", file=sys.stderr)
        return None
    if result.problems:
        print(f"{command}: {len(result.problems)} problem(s) in papers/ (run `python -m catalog check`); "
              "using the papers that loaded", file=sys.stderr)
    return result.catalog


def reason(error: OSError) -> str:
    """An :class:`OSError` in a few words (``Permission denied``), without its errno or path."""
    return error.strerror or str(error)  # an UnreadableFile has no strerror: its text is the reason


def validated(command: str, root: Path, consequence: str) -> Result | None:
    """The validation result, or None after printing every problem and ``consequence`` (what was not done)."""
    result = validate_root(root)
    if not result.problems:
        return result
    for problem in result.problems:
        print(problem)
    print(f"catalog {command}: {len(result.problems)} problem(s) in the data; {consequence}", file=sys.stderr)
    return None
