"""``python -m catalog links [PAPER_FILE ...] [--url URL ...]``: check that every link still answers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from catalog import links
from catalog.commands._common import load_for, reason
from catalog.http import JsonCache, Policy
from catalog.validate import validate_root

HELP = "check that every link still answers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="PAPER_FILE", help="check only these paper files (default: all)")
    parser.add_argument("--url", action="append", default=[], metavar="URL", help="check this URL (repeatable)")
    parser.add_argument("--json", metavar="REPORT", help="write a JSON report (one record per URL)")
    parser.add_argument("--cache", metavar="FILE", help=f"result cache (default: {links.DEFAULT_CACHE} under --root)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--ttl", type=float, default=86400.0, metavar="SECONDS",
                        help="how long a successful result stays cached (default: 1 day)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="per request, body included (default: 10)")
    parser.add_argument("--deadline", type=float, default=600.0, metavar="SECONDS",
                        help="overall time limit; unfinished URLs are reported unknown (default: 600)")
    parser.add_argument("--retries", type=int, default=3, help="retries per request (default: 3)")
    parser.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                        help="first retry delay, doubled each retry (default: 1)")
    parser.add_argument("--max-retry-after", type=float, default=60.0, metavar="SECONDS",
                        help="cap on a server's Retry-After (default: 60)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent requests in all (default: 16)")
    parser.add_argument("--host-concurrency", type=int, default=4, help="concurrent requests per host (default: 4)")


class _Progress:
    """A one-line counter on stderr, only when stderr is a terminal."""

    def __init__(self, stream):
        self.stream = stream
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last > 0.1:
            self.last = now
            end = "\n" if done == total else ""
            self.stream.write(f"\rchecked {done}/{total} URLs{end}")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """1 when a link is broken, else 0 (blocked, redirected and unknown links are reported only)."""
    root = Path(args.root)
    urls: dict[str, list[str]] = {}
    if args.files or not args.url:
        catalog = load_for("links", root)
        if catalog is None:
            return 1
        papers = list(catalog.papers)
        if args.files:
            papers, missing = links.select_papers(catalog, args.files, root)
            for name in missing:
                print(f"links: {name}: not a loaded paper file; skipped", file=sys.stderr)
        urls.update(links.collect(papers))
    if args.url:
        cited = links.collect(validate_root(root).catalog.papers)  # --url works without (valid) data
        for url in args.url:
            urls.setdefault(url, cited.get(url, []))
    cache = None
    if not args.no_cache:
        cache = JsonCache(Path(args.cache) if args.cache else root / links.DEFAULT_CACHE, ttl=args.ttl)
    policy = Policy(timeout=args.timeout, retries=args.retries, backoff=args.backoff,
                    max_retry_after=args.max_retry_after, host_concurrency=args.host_concurrency)
    checker = links.LinkChecker(policy, workers=args.workers, deadline=args.deadline, cache=cache,
                                progress=_Progress(sys.stderr) if sys.stderr.isatty() else None)
    results = checker.check(urls)
    for result in results:
        result.papers = urls.get(result.url, [])
    sys.stdout.write(links.summary_table(results))
    if args.json:
        try:
            links.write_report(args.json, results)
        except OSError as error:
            print(f"links: cannot write {args.json}: {reason(error)}", file=sys.stderr)
            return 1
    return 1 if any(result.status == "broken" for result in results) else 0
