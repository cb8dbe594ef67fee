"""A scripted HTTP server on 127.0.0.1 for offline tests of the link checker and the arXiv client.

Routes map a path to one :class:`Reply` or a list of them (served in order, the last one repeated), so a
test can script "500, then 200". A reply sets the status, headers, body, a delay before answering, or a
connection reset (RST, no answer). ``head=`` gives a different reply to HEAD. Hostile answers: ``trickle``
sends the headers or the body one byte at a time, ``endless`` sends a body that never ends, and
:func:`gzip_bomb` makes a small gzip body that inflates to many megabytes. The server also answers
requests sent to it as a proxy (absolute URLs), so a test can make ``http://example.com/x`` reach it.
Every request is logged (method, path, query, monotonic time) for assertions::

    with ScriptedServer({"/ok": Reply(200), "/flaky": [Reply(500), Reply(200)]}) as server:
        requests.get(server.url("/flaky"))
"""

from __future__ import annotations

import gzip
import io
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b""
    delay: float = 0.0  # seconds to wait before answering
    reset: bool = False  # close the connection with a TCP RST instead of answering
    head: "Reply | None" = None  # the answer to HEAD, if different
    trickle: float = 0.0  # seconds between two bytes of the answer (see trickle_headers), or chunks of endless
    trickle_headers: bool = False  # trickle the status line and headers too, not only the body
    endless: bool = False  # a body without Content-Length that never ends


def gzip_bomb(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes (about a thousandth of that on the wire)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as stream:
        chunk = bytes(1 << 20)
        for _ in range(size // len(chunk)):
            stream.write(chunk)
    return buffer.getvalue()


@dataclass
class Logged:
    method: str
    path: str
    query: str
    time: float
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _serve(self):
        parts = urlsplit(self.path)
        owner = self.server.owner
        owner._log(Logged(self.command, parts.path, parts.query, time.monotonic(), dict(self.headers)))
        reply = owner._next(parts.path)
        if reply is None:
            reply = Reply(404, body=b"no such route")
        if self.command == "HEAD" and reply.head is not None:
            reply = reply.head
        if reply.delay:
            time.sleep(reply.delay)
        if reply.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        body = reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
        try:
            if reply.trickle_headers:
                self._trickle_headers(reply, body)
            else:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if not reply.endless:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
            if self.command == "HEAD":
                return
            if reply.endless:
                self.close_connection = True
                chunk = body or b"x" * 65536
                while not self.server.owner.stopping:
                    self.wfile.write(chunk)
                    if reply.trickle:
                        self.wfile.flush()
                        time.sleep(reply.trickle)
            elif reply.trickle:
                for index in range(len(body)):
                    if self.server.owner.stopping:
                        break
                    self.wfile.write(body[index:index + 1])
                    self.wfile.flush()
                    time.sleep(reply.trickle)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):  # the client gave up
            self.close_connection = True

    def _trickle_headers(self, reply: Reply, body: bytes) -> None:
        lines = [f"HTTP/1.1 {reply.status} Scripted"] + [f"{k}: {v}" for k, v in reply.headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for index in range(len(head)):
            self.wfile.write(head[index:index + 1])
            self.wfile.flush()
            time.sleep(reply.trickle)

    do_GET = do_HEAD = do_POST = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    owner: "ScriptedServer"


class ScriptedServer:
    """Serve scripted routes from a background thread; use as a context manager."""

    def __init__(self, routes: dict[str, Reply | list[Reply]] | None = None, host: str = "127.0.0.1"):
        self.routes: dict[str, list[Reply]] = {}
        self._served: dict[str, int] = {}
        self.log: list[Logged] = []
        self.stopping = False
        self._lock = threading.Lock()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.owner = self
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        for path, reply in (routes or {}).items():
            self.route(path, reply)

    def route(self, path: str, reply: Reply | list[Reply]) -> None:
        with self._lock:
            self.routes[path] = list(reply) if isinstance(reply, (list, tuple)) else [reply]
            self._served[path] = 0

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def requests_to(self, path: str) -> list[Logged]:
        with self._lock:
            return [entry for entry in self.log if entry.path == path]

    def _log(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def _next(self, path: str) -> Reply | None:
        with self._lock:
            replies = self.routes.get(path)
            if not replies:
                return None
            index = min(self._served[path], len(replies) - 1)
            self._served[path] += 1
            return replies[index]

    def start(self) -> "ScriptedServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"scripted-http-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
