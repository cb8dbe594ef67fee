"""``python -m catalog.bench``: time ``check`` and ``build`` on a large synthetic catalog.

Writes N synthetic papers (default 10,000) into a temporary repository (the real section tree,
the real templates, a small fake ``kdimpl``), then runs ``build`` and ``check`` there in this
process, exactly as the command line does, and prints the wall-clock time of each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path

from catalog import cli
from catalog.validate import section_ids

_FAKE_KDIMPL = '''"""A stand-in for kdimpl (benchmark only)."""

__all__ = ["bench_loss", "BenchLoss"]


def bench_loss(student, teacher):
    return 0


class BenchLoss:
    pass
'''


def write_synthetic(root: Path, count: int, source: Path) -> None:
    """A repository under ``root`` with ``count`` valid, distinct papers."""
    import yaml

    (root / "papers").mkdir(parents=True)
    shutil.copy(source / "papers" / "_sections.yaml", root / "papers" / "_sections.yaml")
    shutil.copytree(source / "templates", root / "templates")
    (root / "kdimpl" / "losses").mkdir(parents=True)
    (root / "kdimpl" / "losses" / "bench.py").write_text(_FAKE_KDIMPL, encoding="utf-8")
    with open(root / "papers" / "_sections.yaml", encoding="utf-8") as handle:
        ids = section_ids(yaml.safe_load(handle))
    venues = ["CVPR", "ICCV", "ECCV", "NeurIPS", "ICLR", "AAAI"]
    for index in range(count):
        first, second = ids[index % len(ids)], ids[(index * 7 + 3) % len(ids)]
        sections = [first] if index % 5 or first == second else [first, second]
        lines = [
            "# yaml-language-server: $schema=../catalog/schema/paper.schema.json",
            f"method: M{index}",
            f"title: Synthetic Paper Number {index} on Distilling Object Detectors",
            "authors:",
            f"  - Author {index} One",
            "  - Second Author",
            f"venue: {venues[index % len(venues)]}",
            f"year: {2015 + index % 11}",
            f'arxiv: "{2000 + index // 90000}.{index % 90000 + 10000:05d}"',
            "sections:",
            *[f"  - {section}" for section in sections],
            f"description: Synthetic description number {index}, long enough to look like a real one.",
            "links:",
            "  - kind: cvf",
            f"    url: https://openaccess.thecvf.com/content/bench/{index}.html",
            "  - kind: arxiv",
            f"    url: https://arxiv.org/abs/{2000 + index // 90000}.{index % 90000 + 10000:05d}",
            "code:",
            f"  - url: https://github.com/bench/paper-{index}",
            "    official: true",
        ]
        if index % 1000 == 0:
            lines += [
                "implementations:",
                f"  - name: {'BenchLoss' if index % 2000 else 'bench_loss'}",
                "    verification: unverified",
            ]
        if len(sections) > 1:
            lines += ["notes:", f"  {sections[1]}: A note for the second section of paper {index}."]
        (root / "papers" / f"bench-{index:05d}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _timed(argv: list[str]) -> tuple[float, float, int, str]:
    """Wall-clock and CPU seconds of one command (CPU time is the fairer figure on a busy machine)."""
    out, err = io.StringIO(), io.StringIO()
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return time.perf_counter() - start, time.process_time() - cpu, code, (out.getvalue() + err.getvalue())[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catalog.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=10_000, help="number of synthetic papers (default 10000)")
    parser.add_argument("--root", default=".", help="repository whose templates and section tree to use")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository and print its path")
    args = parser.parse_args(argv)
    temp = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    try:
        start = time.perf_counter()
        write_synthetic(temp, args.papers, Path(args.root))
        print(f"generated {args.papers} papers in {time.perf_counter() - start:.2f} s ({temp})")
        build_s, build_cpu, build_rc, build_out = _timed(["build", "--root", str(temp)])
        check_s, check_cpu, check_rc, check_out = _timed(["check", "--root", str(temp)])
        for name, code, out in (("build", build_rc, build_out), ("check", check_rc, check_out)):
            if code != 0:
                print(f"{name} failed (exit {code}):\n{out}")
                return 1
        print(f"build: {build_s:.2f} s wall, {build_cpu:.2f} s CPU")
        print(f"check: {check_s:.2f} s wall, {check_cpu:.2f} s CPU")
        print(
            f"check + build: {build_s + check_s:.2f} s wall, {build_cpu + check_cpu:.2f} s CPU for {args.papers} papers"
        )
        return 0
    finally:
        if args.keep:
            print(f"kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
