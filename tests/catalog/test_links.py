"""Link checker against a scripted local server: every status class, retries, backoff, cache, deadline, CLI.

All durations are shrunk (timeouts of a few tenths of a second, backoffs of 10 ms) so the file runs in seconds.
``localhost`` plays a bot-blocking host (listed), ``127.0.0.1`` an ordinary one (not listed).
"""

from __future__ import annotations

import argparse
import email.utils
import importlib.util
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from catalog.commands import _common
from catalog.commands import links as links_command
from catalog.commands.links import add_arguments, run
from catalog.http import Deadline, JsonCache, Policy, Throttle, error_kind, parse_retry_after
from catalog.links import LinkChecker, collect, is_blocking, load_blocking_hosts, summary_table
from catalog.model import Catalog, CodeLink, Link, Paper
from catalog.validate import Result
from tests.catalog.httpserver import Reply, ScriptedServer

BLOCKING = {"localhost": frozenset({401, 403, 418, 429})}


def fast_policy(**kw) -> Policy:
    values = dict(timeout=0.3, retries=2, backoff=0.01, max_retry_after=0.3, host_backoff=0.05,
                  max_host_backoff=0.2, host_concurrency=4)
    values.update(kw)
    return Policy(**values)


def checker(**kw) -> LinkChecker:
    policy = kw.pop("policy", None) or fast_policy()
    kw.setdefault("workers", 8)
    kw.setdefault("deadline", 10.0)
    kw.setdefault("blocking_hosts", BLOCKING)
    return LinkChecker(policy, **kw)


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def check(server, path, host=None, **kw):
    (result,) = checker(**kw).check([server.url(path, host)])
    return result


# --- one status class each ----------------------------------------------------------------------


def test_200_is_ok(server):
    server.route("/ok", Reply(200))
    r = check(server, "/ok")
    assert (r.status, r.http_status, r.final_url, r.suggested_url) == ("ok", 200, server.url("/ok"), None)
    assert [e.method for e in server.requests_to("/ok")] == ["HEAD"]


def test_permanent_redirect_chain_suggests_the_final_url(server):
    server.route("/old", Reply(301, {"Location": "/older-moved"}))
    server.route("/older-moved", Reply(308, {"Location": server.url("/new")}))
    server.route("/new", Reply(200))
    r = check(server, "/old")
    assert r.status == "redirected"
    assert r.final_url == r.suggested_url == server.url("/new")
    assert r.http_status == 200


def test_permanent_then_temporary_redirect_suggests_the_permanent_target(server):
    server.route("/a", Reply(301, {"Location": "/b"}))
    server.route("/b", Reply(302, {"Location": "/c?session=1"}))
    server.route("/c", Reply(200))
    r = check(server, "/a")
    assert r.status == "redirected"
    assert r.suggested_url == server.url("/b")
    assert r.final_url == server.url("/c?session=1")


def test_temporary_redirect_is_ok(server):
    server.route("/t", Reply(302, {"Location": "/ok"}))
    server.route("/ok", Reply(200))
    r = check(server, "/t")
    assert (r.status, r.final_url, r.suggested_url) == ("ok", server.url("/ok"), None)


def test_redirect_to_404_is_broken(server):
    server.route("/moved", Reply(301, {"Location": "/gone"}))
    server.route("/gone", Reply(404))
    assert check(server, "/moved").status == "broken"


@pytest.mark.parametrize("code", [404, 410])
def test_404_and_410_are_broken(server, code):
    server.route("/x", Reply(code))
    r = check(server, "/x")
    assert (r.status, r.http_status) == ("broken", code)
    # HEAD answers are double-checked with GET before a link is called broken.
    assert [e.method for e in server.requests_to("/x")] == ["HEAD", "GET"]


def test_418_from_listed_host_is_blocked(server):
    server.route("/teapot", Reply(418))
    r = check(server, "/teapot", host="localhost")
    assert (r.status, r.http_status) == ("blocked", 418)


def test_403_from_unlisted_host_is_unknown(server):
    server.route("/forbidden", Reply(403))
    r = check(server, "/forbidden")
    assert (r.status, r.http_status) == ("unknown", 403)
    assert "not in bot-blocking-hosts.yaml" in r.message


def test_429_with_retry_after_seconds_is_honoured_and_capped(server):
    server.route("/limited", [Reply(429, {"Retry-After": "1"}), Reply(200)])
    t0 = time.monotonic()
    r = check(server, "/limited")
    elapsed = time.monotonic() - t0
    assert r.status == "ok" and r.attempts == 2
    first, second = server.requests_to("/limited")
    # Retry-After 1 s capped at max_retry_after = 0.3 s; far above the 10 ms exponential backoff.
    assert 0.28 <= second.time - first.time < 0.95
    assert elapsed < 1.5


def test_429_with_retry_after_http_date(server):
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    server.route("/dated", [Reply(429, {"Retry-After": when}), Reply(200)])
    r = check(server, "/dated")
    assert r.status == "ok"
    first, second = server.requests_to("/dated")
    assert second.time - first.time >= 0.28  # the date is ~5 s away: capped at 0.3 s


def test_429_without_retry_after_uses_host_backoff(server):
    server.route("/busy", [Reply(429), Reply(200)])
    r = check(server, "/busy", policy=fast_policy(host_backoff=0.25, max_host_backoff=1.0))
    assert r.status == "ok"
    first, second = server.requests_to("/busy")
    assert second.time - first.time >= 0.24  # the host backoff, not the 10 ms retry backoff


def test_persistent_429_is_blocked_on_listed_host_and_unknown_elsewhere(server):
    server.route("/always429", Reply(429))
    blocked = check(server, "/always429", host="localhost")
    assert (blocked.status, blocked.http_status, blocked.attempts) == ("blocked", 429, 3)
    other = check(server, "/always429")
    assert (other.status, other.http_status) == ("unknown", 429)


def test_429_slows_down_the_whole_host():
    policy = fast_policy(host_backoff=0.2)
    throttle = Throttle(policy)
    state = throttle.host("http://example.test/a")
    assert throttle.host("http://example.test/other") is state  # shared by the host's URLs
    throttle.penalize(state, retry_after=None)
    waited = []

    def worker():
        t0 = time.monotonic()
        assert throttle.acquire(state, Deadline(5))
        waited.append(time.monotonic() - t0)
        state.slots.release()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(waited) == 3 and min(waited) >= 0.18
    # Repeated 429s double the backoff up to its cap.
    throttle.penalize(state, None)
    throttle.penalize(state, None)
    assert state.backoff == pytest.approx(0.2)  # max_host_backoff of fast_policy
    other = throttle.host("http://other.test/")
    assert other is not state and other.not_before == 0.0


def test_500_then_200_is_retried(server):
    server.route("/flaky", [Reply(500), Reply(503), Reply(200)])
    r = check(server, "/flaky")
    assert (r.status, r.attempts) == ("ok", 3)


def test_persistent_500_is_unknown_after_retries(server):
    server.route("/down", Reply(500))
    r = check(server, "/down")
    assert (r.status, r.http_status, r.attempts) == ("unknown", 500, 3)
    assert len(server.requests_to("/down")) == 3


def test_response_slower_than_timeout_is_unknown(server):
    server.route("/slow", Reply(200, delay=1.0))
    t0 = time.monotonic()
    r = check(server, "/slow", policy=fast_policy(timeout=0.15, retries=1))
    assert r.status == "unknown" and r.http_status is None
    assert "timed out after 2 attempts" in r.message
    assert time.monotonic() - t0 < 0.95


def test_slow_then_fast_recovers(server):
    server.route("/sometimes-slow", [Reply(200, delay=0.6), Reply(200)])
    assert check(server, "/sometimes-slow", policy=fast_policy(timeout=0.15)).status == "ok"


def test_reset_connection_is_retried_then_unknown(server):
    server.route("/reset", Reply(reset=True))
    r = check(server, "/reset")
    assert r.status == "unknown" and "connection reset" in r.message
    assert len(server.requests_to("/reset")) == 3
    server.route("/reset-once", [Reply(reset=True), Reply(200)])
    assert check(server, "/reset-once").status == "ok"


def test_redirect_loop_is_unknown(server):
    server.route("/loop1", Reply(302, {"Location": "/loop2"}))
    server.route("/loop2", Reply(301, {"Location": "/loop1"}))
    r = check(server, "/loop1")
    assert r.status == "unknown" and r.message.startswith("redirect loop")


def test_too_many_redirects_is_unknown(server):
    for i in range(5):
        server.route(f"/hop{i}", Reply(302, {"Location": f"/hop{i + 1}"}))
    server.route("/hop5", Reply(200))
    r = check(server, "/hop0", policy=fast_policy(max_redirects=3))
    assert r.status == "unknown" and "more than 3 redirects" in r.message


def test_head_refused_then_get_ok(server):
    server.route("/nohead", Reply(200, head=Reply(405)))
    server.route("/nohead2", Reply(200, head=Reply(405)))
    c = checker(workers=1)
    first, second = c.check([server.url("/nohead"), server.url("/nohead2")])
    assert first.status == second.status == "ok"
    assert first.attempts == 1  # the fallback is not a retry
    assert [e.method for e in server.requests_to("/nohead")] == ["HEAD", "GET"]
    # The host refused HEAD once: its next URL is asked with GET directly.
    assert [e.method for e in server.requests_to("/nohead2")] == ["GET"]


def test_head_403_then_get_ok(server):
    server.route("/publisher", Reply(200, head=Reply(403)))
    assert check(server, "/publisher").status == "ok"
    assert [e.method for e in server.requests_to("/publisher")] == ["HEAD", "GET"]


def test_connection_refused_is_broken():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    (r,) = checker().check([f"http://127.0.0.1:{port}/"])
    assert r.status == "broken" and "connection refused" in r.message
    assert r.attempts == 1  # not retried


def test_dns_failure_is_broken(monkeypatch):
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, *args, **kwargs):
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    (r,) = checker().check(["https://no-such-host.invalid/paper"])
    assert r.status == "broken" and r.message.startswith("DNS lookup failed")


def test_error_kind_names():
    import requests

    assert error_kind(requests.ReadTimeout("x")) == "timeout"
    assert error_kind(requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))) == "refused"
    assert error_kind(requests.ConnectionError(ConnectionResetError(104, "reset"))) == "reset"


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- cache ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_cache_hit_expiry_and_errors_not_cached(server, tmp_path):
    server.route("/ok", Reply(200))
    server.route("/missing", Reply(404))
    path = tmp_path / "cache.json"
    clock = Clock()
    urls = [server.url("/ok"), server.url("/missing")]

    first = checker(cache=JsonCache(path, ttl=100, clock=clock)).check(urls)
    assert [r.status for r in first] == ["ok", "broken"]
    stored = json.loads(path.read_text())["entries"]
    assert list(stored) == [server.url("/ok")]  # the error is not cached
    assert stored[server.url("/ok")]["status"] == "ok"

    # Hit: a new checker reading the file makes no request for /ok, but /missing is checked again.
    clock.now += 50
    second = checker(cache=JsonCache(path, ttl=100, clock=clock)).check(urls)
    assert second[0].cached and second[0].status == "ok" and second[0].http_status == 200
    assert not second[1].cached and second[1].status == "broken"
    assert len(server.requests_to("/ok")) == 1
    assert len(server.requests_to("/missing")) == 4  # HEAD+GET twice

    # Expiry: past the TTL the URL is requested again.
    clock.now += 60
    third = checker(cache=JsonCache(path, ttl=100, clock=clock)).check(urls)
    assert not third[0].cached and len(server.requests_to("/ok")) == 2


def test_redirected_results_are_cached_with_their_suggestion(server, tmp_path):
    server.route("/old", Reply(301, {"Location": "/new"}))
    server.route("/new", Reply(200))
    cache = JsonCache(tmp_path / "c.json", ttl=100)
    checker(cache=cache).check([server.url("/old")])
    (again,) = checker(cache=JsonCache(tmp_path / "c.json", ttl=100)).check([server.url("/old")])
    assert again.cached and again.status == "redirected" and again.suggested_url == server.url("/new")


def test_disabled_cache_writes_nothing(server, tmp_path):
    server.route("/ok", Reply(200))
    cache = JsonCache(None, ttl=100)
    checker(cache=cache).check([server.url("/ok")])
    checker(cache=cache).check([server.url("/ok")])
    assert len(server.requests_to("/ok")) == 2 and not list(tmp_path.iterdir())


# --- deadline -----------------------------------------------------------------------------------


def test_deadline_ends_the_run_and_reports_unknown(server):
    server.route("/hang", Reply(200, delay=3.0))
    server.route("/ok", Reply(200))
    urls = [server.url("/ok")] + [server.url(f"/hang?{i}") for i in range(6)]
    t0 = time.monotonic()
    results = checker(policy=fast_policy(timeout=5.0, retries=0), workers=2, deadline=0.5).check(urls)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5, elapsed
    assert results[0].status == "ok"
    assert [r.status for r in results[1:]] == ["unknown"] * 6
    assert all("deadline" in r.message for r in results[1:]), [r.message for r in results[1:]]


def test_deadline_stops_retry_sleeps(server):
    server.route("/busy", Reply(503, {"Retry-After": "30"}))
    t0 = time.monotonic()
    (r,) = checker(policy=fast_policy(max_retry_after=30, retries=5), deadline=0.4).check([server.url("/busy")])
    assert time.monotonic() - t0 < 1.5
    assert r.status == "unknown" and r.http_status == 503 and "deadline" in r.message


# --- concurrency ---------------------------------------------------------------------------------


def test_checks_run_concurrently_within_per_host_limit(server):
    server.route("/slowish", Reply(200, delay=0.2))
    urls = [server.url(f"/slowish?{i}") for i in range(8)]
    t0 = time.monotonic()
    results = checker(policy=fast_policy(host_concurrency=4, timeout=2), workers=8).check(urls)
    elapsed = time.monotonic() - t0
    assert all(r.status == "ok" for r in results)
    assert 0.38 <= elapsed < 1.2, elapsed  # two waves of 4 (per-host limit), not 8 x 0.2 s, not one wave


# --- data file, collection, CLI -----------------------------------------------------------------


def test_blocking_hosts_file_is_documented():
    table = load_blocking_hosts()
    assert 418 in table["ieeexplore.ieee.org"] and 403 in table["www.sciencedirect.com"]
    assert is_blocking("ieeexplore.ieee.org", 418, table)
    assert is_blocking("sub.dl.acm.org", 403, table)
    assert not is_blocking("ieeexplore.ieee.org", 404, table)
    assert not is_blocking("example.org", 403, table)


def test_blocking_file_rejects_entries_without_evidence(tmp_path):
    bad = tmp_path / "hosts.yaml"
    bad.write_text("hosts:\n  - host: example.org\n    reason: because\n")
    with pytest.raises(ValueError, match="example.org.*evidence"):
        load_blocking_hosts(bad)


def _paper(pid, *urls, code=()):
    return Paper(id=pid, title=pid, authors=("A B",), year=2020, sections=("general",), description="D.",
                 links=tuple(Link("cvf", u, "CVF") for u in urls), code=tuple(CodeLink(u, "GitHub") for u in code),
                 path=f"papers/{pid}.yaml")


def test_collect_maps_urls_to_citing_files():
    cited = collect([_paper("b", "https://x.org/1", code=["https://github.com/o/r"]), _paper("a", "https://x.org/1")])
    assert cited == {"https://x.org/1": ["papers/a.yaml", "papers/b.yaml"], "https://github.com/o/r": ["papers/b.yaml"]}


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".")
    add_arguments(parser)
    return parser


FAST_ARGS = ["--timeout", "0.3", "--retries", "1", "--backoff", "0.01", "--deadline", "10"]


def test_cli_paper_files_json_report_and_exit_status(server, tmp_path, monkeypatch, capsys):
    server.route("/ok", Reply(200))
    server.route("/gone", Reply(410))
    server.route("/elsewhere", Reply(200))
    catalog = Catalog(papers=(_paper("good", server.url("/ok")), _paper("bad", server.url("/gone"), server.url("/ok")),
                              _paper("other", server.url("/elsewhere"))), sections=())
    monkeypatch.setattr(_common, "validate_root", lambda root: Result(catalog, []))
    (tmp_path / "papers").mkdir()
    for p in catalog.papers:
        (tmp_path / p.path).write_text("x")
    report = tmp_path / "report.json"

    code = run(_parser().parse_args(["--root", str(tmp_path), "papers/good.yaml", "papers/bad.yaml",
                                     "--json", str(report), *FAST_ARGS]))
    assert code == 1  # a broken link
    data = json.loads(report.read_text())
    by_url = {r["url"]: r for r in data["results"]}
    assert set(by_url) == {server.url("/ok"), server.url("/gone")}  # only the given files' URLs
    assert by_url[server.url("/gone")]["status"] == "broken"
    assert by_url[server.url("/gone")]["http_status"] == 410
    assert by_url[server.url("/ok")]["papers"] == ["papers/bad.yaml", "papers/good.yaml"]
    for record in data["results"]:
        assert {"url", "status", "http_status", "final_url", "papers"} <= set(record)
    assert data["summary"]["broken"] == 1
    out, err = capsys.readouterr()
    assert "broken" in out and server.url("/gone") in out
    assert "checked" not in err  # no progress display when stderr is not a terminal
    assert (tmp_path / ".cache" / "catalog-links.json").is_file()  # default cache under --root

    # --url only: exit 0 without broken links; --no-cache writes no cache file.
    (tmp_path / ".cache" / "catalog-links.json").unlink()
    assert run(_parser().parse_args(["--root", str(tmp_path), "--url", server.url("/elsewhere"), "--no-cache",
                                     *FAST_ARGS])) == 0
    assert not (tmp_path / ".cache" / "catalog-links.json").exists()


def test_cli_all_papers_blocked_and_unknown_do_not_fail(server, tmp_path, monkeypatch):
    server.route("/teapot", Reply(418))
    server.route("/err", Reply(500))
    catalog = Catalog(papers=(_paper("a", server.url("/err")),), sections=())
    monkeypatch.setattr(_common, "validate_root", lambda root: Result(catalog, []))
    report = tmp_path / "r.json"
    assert run(_parser().parse_args(["--root", str(tmp_path), "--json", str(report), *FAST_ARGS])) == 0
    assert json.loads(report.read_text())["results"][0]["status"] == "unknown"


def test_summary_table_lists_problems_first():
    from catalog.links import LinkResult

    text = summary_table([LinkResult("https://a", "ok", 200), LinkResult("https://b", "broken", 404, papers=["p.yaml"]),
                          LinkResult("https://c", "redirected", 200, suggested_url="https://d", message="use https://d")])
    assert "broken" in text and "https://b [p.yaml]" in text
    assert text.index("https://b") < text.index("https://c")
    assert "total           3" in text


def test_progress_display_only_on_a_terminal(server, tmp_path, monkeypatch, capsys):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    server.route("/ok", Reply(200))
    tty = Tty()
    monkeypatch.setattr(links_command.sys, "stderr", tty)
    args = ["--root", str(tmp_path), "--url", server.url("/ok"), "--no-cache", *FAST_ARGS]
    assert run(_parser().parse_args(args)) == 0
    assert "\rchecked 1/1 URLs\n" in tty.getvalue()


def load_script(path: Path):
    """A script outside the package (``benchmarks/``) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_and_reports_speedup(capsys):
    """A smoke test of the script: it runs and reports; the speed-up itself is not asserted (nothing is timed)."""
    main = load_script(Path(__file__).resolve().parents[2] / "benchmarks" / "links_bench.py").main
    code = main(["--urls", "64", "--latency", "0.02", "--hosts", "4", "--workers", "16",
                 "--serial-sample", "16", "--min-speedup", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "speed-up" in out and "64 URLs" in out


def test_python_m_catalog_links_dispatches_here(server, tmp_path):
    import subprocess

    server.route("/ok", Reply(200))
    server.route("/gone", Reply(404))
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "catalog", "links", "--root", str(tmp_path), "--url", server.url("/ok"),
         "--url", server.url("/gone"), "--json", str(tmp_path / "r.json"), *FAST_ARGS],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    statuses = {r["url"]: r["status"] for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert statuses == {server.url("/ok"): "ok", server.url("/gone"): "broken"}
