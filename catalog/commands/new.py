"""``python -m catalog new arxiv:ID`` (from arXiv) or ``new --offline REF`` (a template): a new paper file."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from catalog import arxiv
from catalog.commands._common import reason
from catalog.http import Policy
from catalog.loader import PAPERS_DIR
from catalog.writer import paper_to_yaml, write_paper

HELP = "write papers/<id>.yaml from an arXiv id (or, with --offline, from a template)"
_PAPER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF",
                        help="arxiv:ID, ID, or an arxiv.org abs/pdf URL (version optional); "
                        "with --offline, an arXiv reference or the new paper's id")
    parser.add_argument("--offline", "--template", action="store_true",
                        help="do not ask arXiv: write a template with every required field marked TODO")
    parser.add_argument("--id", dest="paper_id", metavar="ID", help="file name papers/ID.yaml (default: surname+year)")
    parser.add_argument("--stdout", action="store_true", help="print the stub instead of writing it")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.offline:
        return _offline(args, root)
    try:
        arxiv_id, _version = arxiv.parse_ref(args.ref)
    except ValueError as exc:
        print(f"new: {exc}", file=sys.stderr)
        return 2
    for path, known, _title in arxiv.existing_papers(root):  # refuse a known id before asking arXiv
        if known == arxiv_id:
            print(f"new: {path} already has arXiv {arxiv_id}; not writing a duplicate", file=sys.stderr)
            return 1
    policy = Policy(timeout=args.timeout, retries=2, backoff=1.0, host_concurrency=1)
    try:
        records = arxiv.fetch_records([arxiv_id], policy=policy, pause=0, deadline=args.timeout * 3)
    except arxiv.ArxivUnreachable as exc:
        print(f"new: {exc}; without network, run `python -m catalog new --offline {arxiv_id}` "
              "and fill in the file", file=sys.stderr)
        return 2
    except arxiv.ArxivError as exc:
        print(f"new: {exc}", file=sys.stderr)
        return 2
    record = records.get(arxiv_id)
    if record is None:
        print(f"new: arXiv has no paper {arxiv_id}", file=sys.stderr)
        return 1
    duplicate = arxiv.find_duplicate(record, root)
    if duplicate:
        print(f"new: {duplicate}; not writing a duplicate", file=sys.stderr)
        return 1
    data = arxiv.stub(record)
    if args.stdout:
        sys.stdout.write(paper_to_yaml(data))
        return 0
    paper_id = args.paper_id or arxiv.default_id(record, root)
    code = _write(root, paper_id, data)
    if code == 0:
        print(f"  {record.title}")
        print(f"  fill in `sections` and `description` (TODO), check `venue`/`year` ({data['venue']} {data['year']}),"
              " add publisher links, then run `python -m catalog check`")
    return code


def _offline(args: argparse.Namespace, root: Path) -> int:
    """A template: the arXiv fields filled in when REF is an arXiv reference, everything else TODO."""
    try:
        arxiv_id, _version = arxiv.parse_ref(args.ref)
    except ValueError:
        arxiv_id = None
    if arxiv_id is None and not _PAPER_ID_RE.match(args.ref):
        print(f"new: {args.ref!r} is neither an arXiv reference nor a paper id "
              "(lowercase letters, digits and '-')", file=sys.stderr)
        return 2
    data = arxiv.template(arxiv_id)
    if args.stdout:
        sys.stdout.write(paper_to_yaml(data))
        return 0
    paper_id = args.paper_id or (re.sub(r"[^a-z0-9]+", "-", arxiv_id.lower()) if arxiv_id else args.ref)
    code = _write(root, paper_id, data)
    if code == 0:
        print("  every TODO is for you to fill in; `python -m catalog check` lists what is left")
    return code


def _write(root: Path, paper_id: str, data: dict) -> int:
    if not _PAPER_ID_RE.match(paper_id):
        print(f"new: --id {paper_id!r}: expected lowercase letters, digits and '-'", file=sys.stderr)
        return 2
    path = root / PAPERS_DIR / f"{paper_id}.yaml"
    rel = path.relative_to(root).as_posix()
    if path.exists() or path.is_symlink():
        print(f"new: {rel} exists; choose another --id", file=sys.stderr)
        return 1
    try:
        write_paper(path, data)
    except OSError as error:
        print(f"new: cannot write {rel}: {reason(error)}", file=sys.stderr)
        return 1
    print(f"wrote {rel}")
    return 0
