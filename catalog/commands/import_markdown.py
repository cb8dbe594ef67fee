"""``python -m catalog import-markdown FILE``: turn an awesome README into ``papers/<id>.yaml`` files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catalog import writer
from catalog.atomic import write_files
from catalog.commands._common import reason
from catalog.importer import ImportFailed, import_markdown
from catalog.loader import parse_text, read_regular_file

HELP = "import papers from a hand-written awesome README"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the awesome README to import")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write <id>.yaml files, relative to --root (default: papers)")
    parser.add_argument("--sections", metavar="FILE",
                        help="an existing section tree relative to --root (e.g. papers/_sections.yaml): "
                        "map headings to its ids by title; "
                        "without it, ids are derived from the headings and DIR/_sections.yaml is written")
    parser.add_argument("--dry-run", action="store_true", help="parse and report, write nothing")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist in DIR")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    out = root / (args.out or "papers")  # an absolute --out stays as it is
    try:
        src = read_regular_file(args.file).decode("utf-8")
    except OSError as exc:
        print(f"{args.file}: cannot read: {reason(exc)}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"{args.file}: cannot read: not valid UTF-8", file=sys.stderr)
        return 1
    sections = None
    if args.sections:
        try:
            doc = parse_text(args.sections, read_regular_file(root / args.sections))
        except OSError as exc:
            print(f"{args.sections}: cannot read the section tree: {reason(exc)}", file=sys.stderr)
            return 1
        if doc.problems:
            print(f"{args.sections}: cannot read the section tree: {doc.problems[0]}", file=sys.stderr)
            return 1
        sections = doc.data
        valid = isinstance(sections, list) and all(isinstance(n, dict) and {"id", "title"} <= set(n) for n in sections)
        if not valid:
            print(f"{args.sections}: expected a list of sections with 'id' and 'title'", file=sys.stderr)
            return 1
    try:
        result = import_markdown(src, args.file, sections)
    except ImportFailed as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing written", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    files = {out / f"{paper_id}.yaml": writer.paper_to_yaml(data) for paper_id, data in result.papers.items()}
    if result.sections is not None:
        files[out / "_sections.yaml"] = writer.sections_to_yaml(result.sections)
    existing = sorted(str(path) for path in files if path.exists())
    if existing and not args.force and not args.dry_run:
        for path in existing:
            print(f"{path}: already exists (use --force to overwrite)", file=sys.stderr)
        return 1
    summary = f"{sum(result.per_section.values())} entries, {len(result.papers)} papers"
    if args.dry_run:
        for path in files:
            print(f"would write {path}")
        print(f"{summary}; dry run, nothing written")
        return 0
    try:
        write_files(files)
    except OSError as exc:
        print(f"{out}: cannot write: {reason(exc)}; nothing written", file=sys.stderr)
        return 1
    print(f"{summary}; wrote {len(files)} file(s) to {out}")
    return 0
