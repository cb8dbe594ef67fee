"""Benchmark of ``catalog links``: 1,000 URLs on local servers answering after 50 ms, concurrent vs one by one.

``python benchmarks/links_bench.py [--urls 1000] [--latency 0.05] [--hosts 16] [--workers 64] [--serial-sample N]``

The servers run in a child process (so their threads do not share the checker's GIL), on ``--hosts`` ports of
127.0.0.1: the checker treats each port as a host, as it would treat arxiv.org, github.com, ... in the
catalog. The serial run uses the same checker with one worker; ``--serial-sample N`` times only N URLs one
by one and scales up (the full serial run takes ``urls x latency`` seconds). Exits 1 if the speed-up is
below ``--min-speedup`` (15).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from catalog.http import Policy
from catalog.links import LinkChecker


def _serve(latency: float, hosts: int, conn) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    servers = [Server(("127.0.0.1", 0), Handler) for _ in range(hosts)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send([s.server_address[1] for s in servers])
    conn.recv()  # wait until told to stop


def timed(checker: LinkChecker, urls: list[str]) -> float:
    t0 = time.perf_counter()
    results = checker.check(urls)
    elapsed = time.perf_counter() - t0
    bad = [r for r in results if r.status != "ok"]
    if bad:
        raise SystemExit(f"bench: {len(bad)} URL(s) not ok, e.g. {bad[0]}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each answer takes (default 0.05)")
    parser.add_argument("--hosts", type=int, default=16, help="server ports = hosts (default 16)")
    parser.add_argument("--workers", type=int, default=64, help="checker pool size (default 64)")
    parser.add_argument("--host-concurrency", type=int, default=Policy().host_concurrency)
    parser.add_argument("--serial-sample", type=int, default=0,
                        help="time only this many URLs serially and scale up (default: all)")
    parser.add_argument("--min-speedup", type=float, default=15.0)
    args = parser.parse_args(argv)

    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_serve, args=(args.latency, args.hosts, child), daemon=True)
    proc.start()
    try:
        ports = parent.recv()
        urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/paper/{i}" for i in range(args.urls)]
        policy = Policy(timeout=10.0, retries=0, host_concurrency=args.host_concurrency)

        timed(LinkChecker(policy, workers=args.workers, deadline=None, blocking_hosts={}), urls[:50])  # warm up
        concurrent = timed(LinkChecker(policy, workers=args.workers, deadline=None, blocking_hosts={}), urls)

        sample = urls if not args.serial_sample else urls[: args.serial_sample]
        serial = timed(LinkChecker(policy, workers=1, deadline=None, blocking_hosts={}), sample)
        serial_full = serial * len(urls) / len(sample)
    finally:
        parent.send("stop")
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()

    speedup = serial_full / concurrent
    scaled = "" if len(sample) == len(urls) else f" (scaled from {len(sample)} URLs: {serial:.2f} s)"
    print(f"{args.urls} URLs, {args.latency * 1000:.0f} ms latency, {args.hosts} hosts, "
          f"{args.workers} workers, {args.host_concurrency} per host")
    print(f"one by one : {serial_full:8.2f} s{scaled}  ({len(urls) / serial_full:7.1f} URLs/s)")
    print(f"concurrent : {concurrent:8.2f} s  ({len(urls) / concurrent:7.1f} URLs/s)")
    print(f"speed-up   : {speedup:8.1f}x (required: {args.min_speedup:g}x)")
    return 0 if speedup >= args.min_speedup else 1


if __name__ == "__main__":
    sys.exit(main())
