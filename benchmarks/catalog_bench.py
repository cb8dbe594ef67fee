"""Time ``python -m catalog check`` and ``build`` on the real catalog and on a large synthetic one.

``python benchmarks/catalog_bench.py [--papers 10000] [--root .]``

Runs ``build`` then ``check --strict`` as two processes (a contributor, then CI) on a copy of the
repository's data, then on N/10 and N synthetic papers (default 10,000) in temporary repositories
(the real section tree and templates, a small fake ``kdimpl``), and prints the wall-clock and CPU
time of each (CPU time is user + system, from the children's resource usage) and how the time grows
from N/10 to N papers. The machine's load average is printed:
wall-clock times on a busy machine mean little. With ``--in-process`` the commands run in this
process instead (no interpreter start-up, for profiling).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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


def copy_real(root: Path, source: Path) -> None:
    """The repository's data, templates and kdimpl under ``root`` (so the benchmark never writes ``source``)."""
    for name in ("papers", "templates", "kdimpl"):
        shutil.copytree(source / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("README.md", "papers.bib"):
        if (source / name).is_file():
            shutil.copy(source / name, root / name)


def time_commands(root: Path, in_process: bool) -> dict[str, tuple[float, float, int, str]]:
    """``build`` then ``check --strict`` on ``root``."""
    run = _timed if in_process else _timed_process
    return {
        "build": run(["build", "--root", str(root)]),
        "check --strict": run(["check", "--strict", "--root", str(root)]),
    }


def report(label: str, runs: dict[str, tuple[float, float, int, str]]) -> bool:
    """Print the times of ``runs``; False (after printing the output) when a command failed."""
    for name, (_wall, _cpu, code, out) in runs.items():
        if code != 0:
            print(f"{label}: {name} failed (exit {code}):\n{out}")
            return False
    for name, (wall, cpu, _code, _out) in runs.items():
        print(f"{label}: {name}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    wall = sum(run[0] for run in runs.values())
    cpu = sum(run[1] for run in runs.values())
    print(f"{label}: check + build: {wall:.2f} s wall, {cpu:.2f} s CPU")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=10_000, help="number of synthetic papers (default 10000)")
    parser.add_argument("--root", default=".", help="repository whose data, templates and section tree to use")
    parser.add_argument("--in-process", action="store_true", help="run the commands in this process")
    parser.add_argument("--skip-real", action="store_true", help="time only the synthetic catalog")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repositories and print their path")
    args = parser.parse_args(argv)
    source = Path(args.root)
    temp = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    try:
        if not args.skip_real:
            copy_real(temp / "real", source)
            if not report("real catalog", time_commands(temp / "real", args.in_process)):
                return 1
        cpu = {}
        for count in dict.fromkeys((max(1, args.papers // 10), args.papers)):
            folder = temp / f"synthetic-{count}"
            start = time.perf_counter()
            write_synthetic(folder, count, source)
            print(f"generated {count} synthetic papers in {time.perf_counter() - start:.2f} s")
            runs = time_commands(folder, args.in_process)
            if not report(f"{count} synthetic papers", runs):
                return 1
            cpu[count] = sum(run[1] for run in runs.values())
        if len(cpu) == 2:
            (small, small_cpu), (large, large_cpu) = cpu.items()
            print(f"scaling: {large / small:.0f}x the papers took {large_cpu / small_cpu:.1f}x the CPU time "
                  "(start-up included; about the same factor means linear)")
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
