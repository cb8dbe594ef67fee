"""``python -m catalog.bench``: time ``check`` and ``build`` on a large synthetic catalog.

Writes N synthetic papers (default 10,000) into a temporary repository (the real section tree,
the real templates, a small fake ``kdimpl``), then runs ``build`` and ``check`` there in this
process, exactly as the command line does, and prints the wall-clock and CPU time of each.

``check`` right after ``build`` in one process reuses the results of files that did not change
(see ``catalog.validate._reuse``), so the benchmark also runs ``python -m catalog build`` and
``python -m catalog check`` as two separate processes (a contributor, then CI) and reports their
CPU time (user + system, from the children's resource usage) and wall-clock time too.
The machine's load average is printed: wall-clock times on a busy machine mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from catalog import cli
from catalog.validate import forget_earlier_results, section_ids

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


def _timed_process(argv: list[str]) -> tuple[float, float, int, str]:
    """The same for ``python -m catalog ARGV`` in a child process (start-up and exit included)."""
    import resource

    env = dict(os.environ)
    package_parent = str(Path(cli.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "catalog", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode, (done.stdout + done.stderr)[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catalog.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=10_000, help="number of synthetic papers (default 10000)")
    parser.add_argument("--root", default=".", help="repository whose templates and section tree to use")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository and print its path")
    parser.add_argument(
        "--in-process-only", action="store_true", help="skip the runs of `python -m catalog` in child processes"
    )
    args = parser.parse_args(argv)
    temp = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    try:
        start = time.perf_counter()
        write_synthetic(temp, args.papers, Path(args.root))
        print(f"generated {args.papers} papers in {time.perf_counter() - start:.2f} s ({temp})")
        forget_earlier_results()
        runs = {
            "build": _timed(["build", "--root", str(temp)]),
            "check": _timed(["check", "--root", str(temp)]),  # reuses what build read and rendered
        }
        forget_earlier_results()
        if not args.in_process_only:
            runs["python -m catalog build"] = _timed_process(["build", "--root", str(temp)])
            runs["python -m catalog check"] = _timed_process(["check", "--root", str(temp)])
        for name, (_wall, _cpu, code, out) in runs.items():
            if code != 0:
                print(f"{name} failed (exit {code}):\n{out}")
                return 1
        for name, (wall, cpu, _code, _out) in runs.items():
            print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU")
        totals = [("check + build, one process", ("build", "check"))]
        if not args.in_process_only:
            totals.append(("check + build, two processes", ("python -m catalog build", "python -m catalog check")))
        for label, names in totals:
            wall = sum(runs[name][0] for name in names)
            cpu = sum(runs[name][1] for name in names)
            print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU for {args.papers} papers")
        if hasattr(os, "getloadavg"):
            load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
            print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
        return 0
    finally:
        if args.keep:
            print(f"kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
