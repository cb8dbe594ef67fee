"""Hostile servers and caches: trickled answers, endless and gzip-bomb bodies, redirects into private
networks, malformed caches. Every case ends in seconds with a one-line verdict, never a traceback.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from catalog import atomic
from catalog.arxiv import ENV_API
from catalog.http import Deadline, JsonCache, Policy, Throttle, request_with_retries
from catalog.links import LinkChecker, is_internal_host
from tests.catalog.httpserver import Reply, ScriptedServer, gzip_bomb
from tests.catalog.repo import FIXTURE, run_module


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- time limits ---------------------------------------------------------------------------------------


def test_trickled_headers_end_at_the_request_timeout(server):
    server.route("/slow", Reply(200, trickle=0.2, trickle_headers=True))  # about 12 s in all
    checker = LinkChecker(Policy(timeout=1.0, retries=0), workers=2, deadline=5, blocking_hosts={})
    start = time.monotonic()
    (result,) = checker.check([server.url("/slow")])
    assert time.monotonic() - start < 3
    assert result.status == "unknown" and "timed out" in result.message


def test_trickled_body_ends_at_the_request_timeout(server):
    server.route("/slow", Reply(200, body=b"x" * 200, trickle=0.1))  # 20 s in all
    policy = Policy(timeout=1.0, retries=0)
    start = time.monotonic()
    out = request_with_retries("GET", server.url("/slow"), policy, Throttle(policy), Deadline(10), stream=False)
    assert time.monotonic() - start < 3
    assert out.response is None and out.error == "timeout" and "within 1 s" in out.detail


def test_links_command_honours_its_deadline_against_a_trickling_server(server, tmp_path):
    server.route("/slow", Reply(200, trickle=0.3, trickle_headers=True))
    start = time.monotonic()
    result = run_module("links", "--root", str(tmp_path), "--no-cache", "--deadline", "2", "--timeout", "10",
                        "--retries", "0", "--url", server.url("/slow"), "--url", server.url("/slow?2"))
    assert time.monotonic() - start < 10  # interpreter start-up included
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "unknown" in result.stdout


# --- body caps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [Reply(200, endless=True),
                                   Reply(200, {"Content-Encoding": "gzip"}, body=gzip_bomb(64 << 20))],
                         ids=["endless", "gzip-bomb"])
def test_new_and_verify_cap_the_answer(server, tmp_path, reply):
    server.route("/api/query", reply)
    env = {ENV_API: server.url("/api/query")}
    new = run_module("new", "2205.01529", "--root", str(tmp_path), "--timeout", "20", env=env)
    assert new.returncode == 2 and "Traceback" not in new.stderr
    assert "answer too large" in new.stderr and len(new.stderr.strip().splitlines()) == 1
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "_sections.yaml").write_text((FIXTURE / "papers" / "_sections.yaml").read_text())
    (papers / "a.yaml").write_text((FIXTURE / "papers" / "alpha.yaml").read_text())
    verify = run_module("verify", "--root", str(tmp_path), "--no-cache", "--pause", "0", "--timeout", "20", env=env)
    assert verify.returncode == 2 and "Traceback" not in verify.stderr
    assert "answer too large" in verify.stderr


def test_new_offline_says_so_in_one_line(tmp_path):
    result = run_module("new", "arxiv:2111.11837", "--root", str(tmp_path), "--timeout", "2",
                        env={ENV_API: f"http://127.0.0.1:{closed_port()}/api/query"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "could not reach arXiv (127.0.0.1: connection refused)" in lines[0]
    assert "python -m catalog new --offline 2111.11837" in lines[0]


# --- redirects into private networks ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["http://127.0.0.1:1/admin", "http://localhost/x", "http://10.1.2.3/",
                                    "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://0.0.0.0/"])
def test_redirect_from_a_public_host_to_a_private_address_is_reported_not_followed(server, monkeypatch, target):
    # The server plays a proxy, so that http://example.com/ (a public name) reaches it without a network.
    monkeypatch.setenv("HTTP_PROXY", server.url(""))
    monkeypatch.setenv("NO_PROXY", "")
    server.route("/moved", Reply(301, {"Location": target}))
    checker = LinkChecker(Policy(timeout=2, retries=0), workers=1, deadline=10, blocking_hosts={})
    (result,) = checker.check(["http://example.com/moved"])
    assert result.status == "unknown" and result.suggested_url is None
    assert "loopback, private or reserved address; not followed" in result.message
    assert len(server.log) == 1  # the private address was never asked


def test_redirect_between_public_hosts_is_still_suggested(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", server.url(""))
    monkeypatch.setenv("NO_PROXY", "")
    server.route("/old", Reply(301, {"Location": "http://example.org/new"}))
    server.route("/new", Reply(200))
    checker = LinkChecker(Policy(timeout=2, retries=0), workers=1, deadline=10, blocking_hosts={})
    (result,) = checker.check(["http://example.com/old"])
    assert (result.status, result.suggested_url) == ("redirected", "http://example.org/new")


def test_internal_hosts():
    for host in ("localhost", "a.localhost", "127.0.0.1", "10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.1.1",
                 "::1", "[::1]", "fc00::1", "0.0.0.0", "240.0.0.1"):
        assert is_internal_host(host), host
    for host in ("example.com", "8.8.8.8", "arxiv.org", "2001:4860:4860::8888"):
        assert not is_internal_host(host), host


# --- per-host limits -----------------------------------------------------------------------------------


def test_one_host_however_its_name_is_spelled():
    throttle = Throttle(Policy())
    same = ["https://Example.COM/a", "https://example.com./b", "https://example.com:443/c",
            "https://EXAMPLE.com:443./d"]
    assert len({id(throttle.host(url)) for url in same}) == 1
    assert throttle.host("https://bücher.example/") is throttle.host("https://xn--bcher-kva.example/x")
    assert throttle.host("http://example.com:8080/") is not throttle.host("http://example.com/")


# --- caches --------------------------------------------------------------------------------------------


def test_malformed_cache_records_are_dropped_with_a_warning(server, tmp_path):
    server.route("/ok", Reply(200))
    path = tmp_path / "cache.json"
    now = time.time()
    path.write_text(json.dumps({"version": 1, "entries": {
        "x": {"checked_at": "yesterday"}, "y": 5,
        server.url("/ok"): {"checked_at": now, "status": "ok", "http_status": "two hundred"},
    }}))
    warnings: list[str] = []
    cache = JsonCache(path, ttl=3600, warn=warnings.append)
    checker = LinkChecker(Policy(timeout=2, retries=0), workers=1, deadline=10, cache=cache, blocking_hosts={})
    (result,) = checker.check([server.url("/ok")])
    assert result.status == "ok" and not result.cached and len(server.log) == 1  # asked again
    assert any("dropped 2 malformed cache record(s)" in w for w in warnings), warnings
    assert any("malformed cache record; checking it again" in w for w in warnings), warnings
    assert json.loads(path.read_text())["entries"][server.url("/ok")]["http_status"] == 200


@pytest.mark.parametrize("content", ["[" * 100_000, "{\"version\": 1, \"entries\": " + "[" * 50_000, "\xff", "[]"])
def test_unusable_cache_file_is_discarded_with_a_warning(tmp_path, content):
    path = tmp_path / "cache.json"
    path.write_text(content, encoding="latin-1")
    warnings: list[str] = []
    cache = JsonCache(path, ttl=3600, warn=warnings.append)
    assert cache.entries == {} and len(warnings) == 1 and str(path) in warnings[0]


def test_cache_path_that_is_a_folder(server, tmp_path):
    server.route("/ok", Reply(200))
    folder = tmp_path / "cache"
    folder.mkdir()
    result = run_module("links", "--root", str(tmp_path), "--cache", str(folder), "--url", server.url("/ok"),
                        "--deadline", "10", "--retries", "0")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "warning:" in result.stderr and "cannot save the cache" in result.stderr


def test_interrupted_writes_leave_no_temp_files(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_files({tmp_path / "a.txt": "a", tmp_path / "b.txt": "b"})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    warnings: list[str] = []
    cache = JsonCache(tmp_path / "c.json", ttl=10, warn=warnings.append)
    cache.put("k", {"v": 1})
    cache.save()
    assert list(tmp_path.iterdir()) == [] and "cannot save the cache" in warnings[0]


def test_a_cut_short_body_without_length_is_not_an_answer(server):
    """A body that ends with the connection (no Content-Length) and trickles: cut short, it is a timeout."""
    server.route("/slow", Reply(200, body=b"y", endless=True, trickle=0.05))
    policy = Policy(timeout=0.5, retries=0)
    start = time.monotonic()
    out = request_with_retries("GET", server.url("/slow"), policy, Throttle(policy), Deadline(10), stream=False)
    assert time.monotonic() - start < 2
    assert out.response is None and out.error == "timeout"
