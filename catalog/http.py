"""HTTP plumbing shared by ``links``, ``new`` and ``verify``: retries, per-host limits, a result cache.

The retry policy follows lychee (``lychee-lib/src/retry.rs``, ``ratelimit/host``; see
/work/shared/research/catalog-anchors.md §4): timeouts, reset connections, 408, 429 and 5xx are retried
with exponential backoff; ``Retry-After`` (seconds or HTTP-date) is honoured up to a cap; a host that
answers 429 is slowed down for all of its later requests; DNS failures and refused connections are not
retried. Every wait is bounded by an overall :class:`Deadline`, so callers always finish.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

USER_AGENT = "awesome-kd-detection-catalog/0.1 (link and metadata checker; +https://github.com/)"

#: Statuses worth another try: the server may answer differently a moment later.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class Deadline:
    """An absolute point in (monotonic) time after which no new work starts."""

    def __init__(self, seconds: float | None):
        self.at = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return float("inf") if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0.0


def host_key(url: str) -> str:
    """The per-host bucket of a URL: host and port (two local test servers are two hosts)."""
    parts = urlsplit(url)
    return (parts.netloc or parts.path).lower()


def hostname(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


@dataclass
class HostState:
    """Per-host limits: a concurrency slot pool and a shared backoff after 429."""

    slots: threading.Semaphore
    backoff: float = 0.0
    not_before: float = 0.0  # monotonic time before which no request to this host starts
    head_refused: bool = False  # the host answered 405/501 to HEAD: use GET directly
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Policy:
    """Knobs of the retry/rate-limit policy (tests shrink every duration)."""

    timeout: float = 10.0  # per request (connect and each read)
    retries: int = 3  # extra attempts after the first
    backoff: float = 1.0  # first retry waits this long, doubled each retry (lychee: 1 s)
    max_retry_after: float = 60.0  # cap on a server's Retry-After
    host_backoff: float = 0.5  # per-host backoff after a 429 starts here and doubles ...
    max_host_backoff: float = 30.0  # ... up to this
    host_concurrency: int = 4  # requests in flight per host
    max_redirects: int = 10


class Throttle:
    """Per-host slots and 429 backoff shared by every thread that talks to the host."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._hosts: dict[str, HostState] = {}
        self._lock = threading.Lock()

    def host(self, url: str) -> HostState:
        key = host_key(url)
        with self._lock:
            state = self._hosts.get(key)
            if state is None:
                state = self._hosts[key] = HostState(threading.Semaphore(self.policy.host_concurrency))
            return state

    def acquire(self, state: HostState, deadline: Deadline) -> bool:
        """Wait for the host's backoff to pass and for a free slot; False if the deadline comes first."""
        while True:
            with state.lock:
                wait = state.not_before - time.monotonic()
            if wait > 0:
                if wait >= deadline.remaining():
                    return False
                time.sleep(wait)
                continue
            if not state.slots.acquire(timeout=max(0.0, min(deadline.remaining(), 3600.0))):
                return False
            with state.lock:  # another thread may have been told to back off meanwhile
                if state.not_before <= time.monotonic():
                    return True
            state.slots.release()

    def penalize(self, state: HostState, retry_after: float | None) -> None:
        """A 429: double the host's backoff (or start it) and hold every request to it back."""
        p = self.policy
        with state.lock:
            state.backoff = min(p.max_host_backoff, max(p.host_backoff, state.backoff * 2))
            wait = state.backoff if retry_after is None else max(state.backoff, min(retry_after, p.max_retry_after))
            state.not_before = max(state.not_before, time.monotonic() + wait)

    def relax(self, state: HostState) -> None:
        """A normal answer: let the backoff decay."""
        with state.lock:
            if state.backoff:
                state.backoff = state.backoff / 2 if state.backoff / 2 >= self.policy.host_backoff else 0.0


def error_kind(exc: BaseException) -> str:
    """Name a requests failure: ``dns``, ``refused``, ``reset``, ``timeout``, ``redirects`` or ``connection``."""
    if isinstance(exc, requests.TooManyRedirects):
        return "redirects"
    if isinstance(exc, requests.Timeout):
        return "timeout"
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError":
            return "dns"
        if isinstance(item, ConnectionRefusedError):
            return "refused"
        if isinstance(item, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                             http.client.RemoteDisconnected)):
            return "reset"
        if isinstance(item, (socket.timeout, TimeoutError)):
            return "timeout"
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
            stack.extend(a for a in item.args if isinstance(a, BaseException))
    text = str(exc)
    if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo failed" in text:
        return "dns"
    if "Connection refused" in text:
        return "refused"
    if "Connection reset" in text or "RemoteDisconnected" in text or "Connection aborted" in text:
        return "reset"
    return "connection"


_local = threading.local()


def thread_session(pool_size: int = 10) -> requests.Session:
    """One :class:`requests.Session` per thread (sessions are not documented as thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        _local.session = session
    return session


@dataclass
class Outcome:
    """The last answer of :func:`request_with_retries`: a response or an error kind."""

    response: requests.Response | None = None
    error: str | None = None  # error_kind(), or "deadline"
    detail: str = ""
    attempts: int = 0
    method: str = "GET"


def request_with_retries(
    method: str,
    url: str,
    policy: Policy,
    throttle: Throttle,
    deadline: Deadline,
    *,
    fallback_get=None,
    session: requests.Session | None = None,
    **kwargs,
) -> Outcome:
    """One logical request: per-host limits, retries with backoff, optional HEAD -> GET fallback.

    ``fallback_get(status) -> bool`` says whether a HEAD answer means "try GET instead". The response is
    closed before it is returned unless ``stream`` is False (then its body is read).
    """
    state = throttle.host(url)
    stream = kwargs.pop("stream", True)
    if method == "HEAD" and state.head_refused:
        method = "GET"
    out = Outcome(method=method)
    attempt = 0
    while True:
        if not throttle.acquire(state, deadline):
            return _deadline(out)
        remaining = deadline.remaining()
        timeout = min(policy.timeout, remaining)
        if timeout <= 0:
            state.slots.release()
            return _deadline(out)
        out.attempts += 1
        retry_after = None
        try:
            sess = session or thread_session(max(policy.host_concurrency, 10))
            resp = sess.request(method, url, timeout=timeout, allow_redirects=False, stream=stream, **kwargs)
            if stream:
                resp.close()
        except requests.RequestException as exc:
            out.response, out.error, out.detail = None, error_kind(exc), f"{type(exc).__name__}: {exc}"
            retryable = out.error in ("timeout", "reset", "connection")
            if out.error == "timeout" and deadline.expired():
                out.detail += " (overall deadline)"
        else:
            out.response, out.error, out.detail, out.method = resp, None, "", method
            status = resp.status_code
            if method == "HEAD" and fallback_get is not None and fallback_get(status):
                if status in (405, 501):
                    state.head_refused = True
                state.slots.release()
                method = out.method = "GET"
                out.attempts -= 1  # not a retry: a different question to the server
                continue
            if status == 429:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                throttle.penalize(state, retry_after)
            elif status in RETRY_STATUSES:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            else:
                throttle.relax(state)
            retryable = status in RETRY_STATUSES
        state.slots.release()
        if not retryable or attempt >= policy.retries:
            return out
        delay = policy.backoff * (2**attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, policy.max_retry_after))
        if delay >= deadline.remaining():
            out.detail = (out.detail + "; " if out.detail else "") + "retry would pass the overall deadline"
            return out
        time.sleep(delay)
        attempt += 1


def _deadline(out: Outcome) -> Outcome:
    if out.response is None and out.error is None:
        out.error = "deadline"
        out.detail = "overall deadline reached before the request could start"
    else:
        out.detail = (out.detail + "; " if out.detail else "") + "overall deadline reached"
    return out


class JsonCache:
    """A JSON file of ``key -> record`` with a time to live; only what the caller puts in is cached.

    Records carry ``checked_at`` (epoch seconds). Expired records are dropped on load. ``save`` writes
    atomically (temp file + ``os.replace``) and is a no-op for a disabled cache (``path=None``).
    """

    VERSION = 1

    def __init__(self, path: str | Path | None, ttl: float, clock=time.time):
        self.path = Path(path) if path else None
        self.ttl = ttl
        self.clock = clock
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if isinstance(data, dict) and data.get("version") == self.VERSION and isinstance(data.get("entries"), dict):
                now = self.clock()
                self.entries = {
                    k: v for k, v in data["entries"].items()
                    if isinstance(v, dict) and now - float(v.get("checked_at", 0)) < self.ttl
                }

    def get(self, key: str) -> dict | None:
        if self.path is None:
            return None
        with self._lock:
            record = self.entries.get(key)
            if record is None:
                return None
            if self.clock() - float(record.get("checked_at", 0)) >= self.ttl:
                del self.entries[key]
                self._dirty = True
                return None
            return dict(record)

    def put(self, key: str, record: dict) -> None:
        if self.path is None:
            return
        with self._lock:
            self.entries[key] = dict(record, checked_at=self.clock())
            self._dirty = True

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            text = json.dumps({"version": self.VERSION, "entries": dict(sorted(self.entries.items()))},
                              indent=1, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
