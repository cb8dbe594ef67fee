"""``python -m catalog <command> [--root DIR]``: the catalog's command line.

Each command is a module of :mod:`catalog.commands` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; this module only builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
import sys

from catalog.commands import bibtex, build, check, import_markdown, links, new, site, verify

COMMANDS = {
    "check": check,
    "build": build,
    "new": new,
    "verify": verify,
    "links": links,
    "bibtex": bibtex,
    "import-markdown": import_markdown,
    "site": site,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalog", description="Curate the detection-KD paper catalog.")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("--root", default=".", metavar="DIR", help="repository root (default: the current directory)")
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (2 for a usage error, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("catalog: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
