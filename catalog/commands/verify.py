"""``python -m catalog verify``: compare every paper that has an arXiv id with its arXiv record."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catalog import arxiv
from catalog.commands._common import load_for
from catalog.http import JsonCache, Policy

HELP = "compare papers with their arXiv metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", metavar="FILE", help=f"record cache (default: {arxiv.DEFAULT_CACHE} under --root)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--ttl", type=float, default=7 * 86400.0, metavar="SECONDS",
                        help="how long an arXiv record stays cached (default: 7 days)")
    parser.add_argument("--batch", type=int, default=50, help="ids per API call (default: 50)")
    parser.add_argument("--pause", type=float, default=3.0, metavar="SECONDS",
                        help="wait between API calls, as arXiv asks (default: 3)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")


def run(args: argparse.Namespace) -> int:
    """1 when a title or author list differs from arXiv's, 2 when arXiv cannot be asked, else 0."""
    root = Path(args.root)
    catalog = load_for("verify", root)
    if catalog is None:
        return 1
    cache = None if args.no_cache else JsonCache(Path(args.cache) if args.cache else root / arxiv.DEFAULT_CACHE,
                                                 args.ttl)
    ids = sorted({p.arxiv for p in catalog.papers if p.arxiv})
    policy = Policy(timeout=args.timeout, retries=3, backoff=args.pause or 1.0, host_concurrency=1)
    try:
        records = arxiv.fetch_records(ids, policy=policy, batch=args.batch, pause=args.pause, cache=cache)
    except arxiv.ArxivError as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return 2
    mismatches = arxiv.verify(catalog, root, records)
    for mismatch in mismatches:
        print(mismatch)
    checked = sum(1 for paper in catalog.papers if paper.arxiv)
    print(f"verify: {checked} paper(s) with an arXiv id, {len(mismatches)} mismatch(es)", file=sys.stderr)
    return 1 if mismatches else 0
