"""``python -m catalog check [--strict]``: validate papers/, then compare README.md and papers.bib with a build."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catalog import render
from catalog.commands._common import reason, validated
from catalog.loader import UnreadableFile

HELP = "validate papers/ and say whether README.md and papers.bib are up to date"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="also fail when README.md or papers.bib is out of date (CI on main)")
    parser.add_argument("--no-generated", action="store_true",
                        help="skip comparing README.md and papers.bib with what `build` would write")


def run(args: argparse.Namespace) -> int:
    """0 when the data is valid (and, with ``--strict``, the generated files are up to date), else 1."""
    root = Path(args.root)
    result = validated("check", root, "README.md and papers.bib were not compared")
    if result is None:
        return 1
    count = len(result.catalog.papers)
    if args.no_generated:
        print(f"catalog check: {count} papers OK", file=sys.stderr)
        return 0
    try:
        outputs = render.render_outputs(result.catalog, root, result.kdimpl_files)
    except render.RenderError as error:
        print(f"catalog check: {error}", file=sys.stderr)
        return 1
    stale: dict[str, str] = {}
    for path, text in outputs.items():
        rel = path.relative_to(root).as_posix()
        try:
            if path.exists() and not path.is_file():
                raise UnreadableFile("is not a regular file")
            diff = render.diff_against_file(path, text, rel)
        except OSError as error:
            print(f"catalog check: cannot read {rel}: {reason(error)}", file=sys.stderr)
            return 1
        if diff is not None:
            stale[rel] = diff
    if not stale:
        print(f"catalog check: {count} papers OK; README.md and papers.bib are up to date", file=sys.stderr)
        return 0
    names = " and ".join(stale)
    verb = "is" if len(stale) == 1 else "are"
    line = f"{names} {verb} out of date: run `python -m catalog build` (CI on main regenerates them)"
    if not args.strict:
        print(f"catalog check: {count} papers OK; {line}", file=sys.stderr)
        return 0
    for rel, diff in stale.items():
        sys.stdout.write(diff)
    print(f"catalog check --strict: {line}", file=sys.stderr)
    return 1
