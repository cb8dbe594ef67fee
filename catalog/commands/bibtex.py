"""``python -m catalog bibtex [--out FILE]``: print or write the BibTeX of every paper."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catalog.atomic import write_file
from catalog.bibtex import render_bibtex
from catalog.commands._common import reason
from catalog.validate import validate_root

HELP = "print or write the BibTeX of every paper"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE",
                        help="where to write the BibTeX (default: papers.bib under --root; '-' prints it)")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    result = validate_root(root)
    if result.problems:
        for problem in result.problems:
            print(problem, file=sys.stderr)
        print(f"bibtex: {len(result.problems)} problem(s) in papers/; nothing written", file=sys.stderr)
        return 1
    text = render_bibtex(result.catalog)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out) if args.out else root / "papers.bib"
    try:
        write_file(out, text)
    except OSError as error:
        print(f"bibtex: cannot write {out}: {reason(error)}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(result.catalog.papers)} entries)")
    return 0
