"""HTTP plumbing shared by ``links``, ``new`` and ``verify``: retries, per-host limits, a result cache.

The retry policy follows lychee's (``lychee-lib/src/retry.rs``, ``ratelimit/host``): timeouts, reset
connections, 408, 429 and 5xx are retried with exponential backoff; ``Retry-After`` (seconds or
HTTP-date) is honoured up to a cap; a host that answers 429 is slowed down for all of its later requests;
DNS failures and refused connections are not retried. Every wait is bounded by an overall
:class:`Deadline`, and every request by a total time limit (a watchdog shuts its connection down, so a
server that trickles its headers or body one byte at a time cannot hold a request open); bodies are
read in chunks up to a byte cap, after decompression.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from catalog.atomic import write_file
from catalog.text import host_key, url_host

USER_AGENT = "awesome-kd-detection-catalog/0.1 (link and metadata checker; +https://github.com/)"

#: Statuses worth another try: the server may answer differently a moment later.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
#: The most bytes of a (decompressed) response body that is read.
MAX_BODY_BYTES = 5_000_000


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


def hostname(url: str) -> str:
    """The URL's host, one spelling per host (:func:`catalog.text.url_host`)."""
    return url_host(url)


class BodyTooLarge(Exception):
    """A response body larger than the cap (after decompression)."""


_current = threading.local()  # the watchdog of the request this thread is making


class _Watchdog:
    """Shuts down the socket of this thread's request when the request's total time is up."""

    def __init__(self, seconds: float):
        self.fired = False
        self.sock = None
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> "_Watchdog":
        _current.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _current.watchdog = None

    def watch(self, sock) -> None:
        self.sock = sock
        if self.fired:
            self._shutdown()

    def _fire(self) -> None:
        self.fired = True
        self._shutdown()

    def _shutdown(self) -> None:
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _watch(sock) -> None:
    watchdog = getattr(_current, "watchdog", None)
    if watchdog is not None and sock is not None:
        watchdog.watch(sock)


class _Watched:
    """A connection whose sockets this thread's :class:`_Watchdog` can shut down: the new TCP socket
    (so a slow TLS handshake is cut short too) and the socket of each request on a reused connection."""

    def _new_conn(self):
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args, **kwargs):
        _watch(self.sock)
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose connections report to this thread's :class:`_Watchdog`."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def read_body(response: requests.Response, limit: int = MAX_BODY_BYTES) -> bytes:
    """The decompressed body of a streamed response, at most ``limit`` bytes; raises :class:`BodyTooLarge`."""
    chunks = []
    size = 0
    while True:
        chunk = response.raw.read(65536, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            response.close()
            raise BodyTooLarge(f"the answer is larger than {limit:,} bytes")
        chunks.append(chunk)


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
        adapter = _WatchedAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        _local.session = session
    return session


@dataclass
class Outcome:
    """The last answer of :func:`request_with_retries`: a response or an error kind."""

    response: requests.Response | None = None
    error: str | None = None  # error_kind(), "deadline" or "too-large"
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
    closed before it is returned unless ``stream`` is False (then at most :data:`MAX_BODY_BYTES` of its
    body are read into ``response._content``). Each attempt, body included, ends within ``policy.timeout``.
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
        watchdog = _Watchdog(timeout)
        try:
            sess = session or thread_session(max(policy.host_concurrency, 10))
            with watchdog:
                resp = sess.request(method, url, timeout=timeout, allow_redirects=False, stream=True, **kwargs)
                if stream:
                    resp.close()
                else:
                    resp._content, resp._content_consumed = read_body(resp), True
            if watchdog.fired:  # a body without a length that the watchdog cut short reads as complete
                raise requests.Timeout("the watchdog ended the request")
        except BodyTooLarge as exc:
            out.response, out.error, out.detail = None, "too-large", str(exc)
            retryable = False
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            out.response, out.error, out.detail = None, error_kind(exc), f"{type(exc).__name__}: {exc}"
            if watchdog.fired:
                out.error, out.detail = "timeout", f"no complete answer within {timeout:g} s"
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

    Records carry ``checked_at`` (epoch seconds). Expired or malformed records are dropped on load; a
    file that cannot be read or parsed is discarded with a warning (``warn``, stderr by default), and
    so is a failed save: the cache only ever saves time. ``save`` writes atomically and is a no-op for
    a disabled cache (``path=None``).
    """

    VERSION = 1

    def __init__(self, path: str | Path | None, ttl: float, clock=time.time, warn=None):
        self.path = Path(path) if path else None
        self.ttl = ttl
        self.clock = clock
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path is not None:
            self.entries = self._load(self.path)

    def _load(self, path: Path) -> dict[str, dict]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as error:
            self.warn(f"{path}: cannot read the cache ({error.strerror or error}); starting without it")
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as error:
            self.warn(f"{path}: not a valid cache ({type(error).__name__}); starting without it")
            return {}
        usable = isinstance(data, dict) and data.get("version") == self.VERSION and isinstance(data.get("entries"), dict)
        if not usable:
            self.warn(f"{path}: not a version-{self.VERSION} cache; starting without it")
            return {}
        now = self.clock()
        entries = {}
        malformed = 0
        for key, record in data["entries"].items():
            checked = record.get("checked_at") if isinstance(record, dict) else None
            if not isinstance(checked, (int, float)) or isinstance(checked, bool):
                malformed += 1
            elif now - checked < self.ttl:
                entries[key] = record
        if malformed:
            self.warn(f"{path}: dropped {malformed} malformed cache record(s)")
        return entries

    def get(self, key: str) -> dict | None:
        if self.path is None:
            return None
        with self._lock:
            record = self.entries.get(key)
            if record is None:
                return None
            if self.clock() - record["checked_at"] >= self.ttl:
                del self.entries[key]
                return None
            return dict(record)

    def put(self, key: str, record: dict) -> None:
        if self.path is None:
            return
        with self._lock:
            self.entries[key] = dict(record, checked_at=self.clock())

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            text = json.dumps({"version": self.VERSION, "entries": dict(sorted(self.entries.items()))},
                              indent=1, ensure_ascii=False) + "\n"
        try:
            write_file(self.path, text)
        except OSError as error:
            self.warn(f"{self.path}: cannot save the cache ({error.strerror or error})")
