"""``python -m catalog site --out DIR``: validate, render the browsable site in memory, write it atomically."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catalog import atomic, site
from catalog.commands._common import reason, validated

HELP = "write the browsable site (search and filters, one static page) from papers/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write index.html and its scripts to")
    parser.add_argument("--api-base", default="api/", metavar="URL",
                        help="where the kdimpl API reference lives, relative to the site (default: api/)")
    parser.add_argument("--repository", default=site.REPOSITORY, metavar="URL",
                        help="the repository's web address, for links to kdimpl sources")


def run(args: argparse.Namespace) -> int:
    """Nothing is written unless every file loaded and passed every rule."""
    root = Path(args.root)
    result = validated("site", root, "no site was written")
    if result is None:
        return 1
    api_base = args.api_base if not args.api_base or args.api_base.endswith("/") else args.api_base + "/"
    try:
        files = site.render_site(result.catalog, root, result.kdimpl_files, api_base, args.repository.rstrip("/"))
    except site.SiteError as error:
        print(f"catalog site: {error}; no site was written", file=sys.stderr)
        return 1
    out = Path(args.out)
    try:
        atomic.write_files({out / name: text for name, text in files.items()})
    except OSError as error:
        print(f"catalog site: cannot write {error.filename or 'the output'}: {reason(error)}; no site was written",
              file=sys.stderr)
        return 1
    print(f"catalog site: wrote {out / 'index.html'} ({len(result.catalog.papers)} papers)", file=sys.stderr)
    return 0
