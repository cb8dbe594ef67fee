"""``python -m catalog <command> [--root DIR]``: the catalog's command line.

Each command is a module of :mod:`catalog.commands` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; this module only builds the parser and dispatches. Only the module of the
command being run is imported (``--help`` imports them all), so ``check`` and ``build`` do not
pay for the HTTP and Markdown libraries that other commands need.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "check": "catalog.commands.check",
    "build": "catalog.commands.build",
    "new": "catalog.commands.new",
    "verify": "catalog.commands.verify",
    "links": "catalog.commands.links",
    "bibtex": "catalog.commands.bibtex",
    "import-markdown": "catalog.commands.import_markdown",
    "site": "catalog.commands.site",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``selected``, only that command's module is imported and its arguments added."""
    parser = argparse.ArgumentParser(prog="catalog", description="Curate the detection-KD paper catalog.")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, module_name in COMMANDS.items():
        if selected is not None and name != selected:
            commands.add_parser(name)  # not named on this command line: never parsed
            continue
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("--root", default=".", metavar="DIR", help="repository root (default: the current directory)")
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (2 for a usage error, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args = build_parser(selected).parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("catalog: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
