"""``python -m catalog build``: validate, render README.md and papers.bib in memory, write both atomically."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catalog import atomic, render
from catalog.commands._common import reason, validated

HELP = "render README.md and papers.bib from papers/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stdout", action="store_true", help="print README.md instead of writing the files")


def run(args: argparse.Namespace) -> int:
    """Nothing is written unless every file loaded and passed every rule."""
    root = Path(args.root)
    result = validated("build", root, "nothing was written")
    if result is None:
        return 1
    try:
        outputs = render.render_outputs(result.catalog, root, result.kdimpl_files)
    except render.RenderError as error:
        print(f"catalog build: {error}; nothing was written", file=sys.stderr)
        return 1
    if args.stdout:
        sys.stdout.write(outputs[root / render.README])
        return 0
    try:
        atomic.write_files(outputs)
    except OSError as error:
        print(f"catalog build: cannot write {error.filename or 'the output'}: {reason(error)}; nothing was written",
              file=sys.stderr)
        return 1
    names = ", ".join(path.relative_to(root).as_posix() for path in outputs)
    print(f"catalog build: wrote {names} ({len(result.catalog.papers)} papers)", file=sys.stderr)
    return 0
