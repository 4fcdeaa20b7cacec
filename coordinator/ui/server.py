"""The UI's HTTP server: GET only, the JSON API under ``/api/`` and the static page, on loopback by default.

A :class:`http.server.ThreadingHTTPServer` (the standard library): one thread per request, each
request reading with its own read-only connection; HTTP/1.0, so a connection ends with its
response. A connection a browser opens ahead and leaves idle is closed after a minute without a
request, and at once when the server closes: :meth:`UiServer.stop` (and Ctrl-C on
``coordinator ui``) ends the serving thread, shuts the reading side of every open connection and
joins every request thread, so an open tab never holds the server up. The page has no login:
binding anything but a loopback address logs a warning, and on loopback a request whose
``Host`` header names another host is refused (a web page elsewhere cannot read the runs through
DNS rebinding).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from coordinator.errors import CoordinatorError
from coordinator.ui.api import Api, BadRequest, RunRowLike
from coordinator.ui.source import UnknownRun

__all__ = ["STATIC", "UiServer", "is_loopback"]

_log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The page, its script and style, and the vendored uPlot (with its license)."""

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
_FILES = {"index.html", "app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'"
_JOIN_S = 10.0
_IDLE_S = 60.0


def is_loopback(host: str) -> bool:
    """``host`` is ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # request threads are joined by server_close (block_on_close)
    block_on_close = True
    api: Api
    allowed_hosts: set[str] | None

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Shut the reading side of every open connection, then close and join as the base does.

        A request thread waits for its request line without end otherwise (a browser's idle
        connection), and the base joins it; a response being written still completes.
        """
        with self._open_lock:
            still = list(self._open)
        for s in still:
            try:
                s.shutdown(socket.SHUT_RD)
            except OSError as e:  # the peer is already gone: its thread ends on its own
                _log.debug("coordinator ui: shutting an open connection: %s", e)
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "coordinator-ui"
    timeout = _IDLE_S  # a connection without a request for this long is closed

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def do_GET(self) -> None:
        allowed = self.server.allowed_hosts
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if allowed is not None and host not in allowed:
            self._json(HTTPStatus.FORBIDDEN, {"error": f"host {host!r} refused: open the page through loopback"})
            return
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if parts and parts[0] == "api":
            self._api(parts[1:], q)
        else:
            self._static(parts)

    def _api(self, parts: list[str], q: dict[str, list[str]]) -> None:
        api = self.server.api
        routes: dict[tuple[str, int], Callable[[], Any]] = {
            ("runs", 1): lambda: api.runs(q),
            ("runs", 2): lambda: api.run(parts[1]),
            ("compare", 1): lambda: api.compare(q),
        }
        per_run: dict[str, Callable[[str, dict[str, list[str]]], Any]] = {
            "series": api.series,
            "changes": api.changes,
            "summaries": api.summaries,
            "texts": api.texts,
        }
        fn: Callable[[], Any] | None = None
        if len(parts) == 3 and parts[0] == "runs" and parts[2] in per_run:
            fn = functools.partial(per_run[parts[2]], parts[1], q)
        elif parts:
            fn = routes.get((parts[0], len(parts)))
        if fn is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path!r}"})
            return
        try:
            body = fn()
        except UnknownRun as e:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
        except (BadRequest, TypeError) as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except CoordinatorError as e:  # an unreadable store: said to the page and logged, never hidden
            _log.warning("ui: %s failed: %s", self.path, e)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(e)})
        else:
            self._json(HTTPStatus.OK, body)

    def _json(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        self._send(status, "application/json", data)

    def _static(self, parts: list[str]) -> None:
        name = "index.html" if not parts else parts[0] if len(parts) == 1 else ""
        if name not in _FILES:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path!r}"})
            return
        data = (STATIC / name).read_bytes()
        self._send(HTTPStatus.OK, _TYPES.get(Path(name).suffix, "text/plain; charset=utf-8"), data)

    def _send(self, status: HTTPStatus, ctype: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(data)


class UiServer:
    """The UI's server: :meth:`start` serves on a thread, :meth:`stop` ends it and joins every thread.

    Args:
        root: the store root.
        scan: lists the runs under a root (``coordinator.cli.runs.scan_runs``).
        host: the address to bind (default loopback; anything else is warned about: no login).
        port: the port (0: an ephemeral one; :attr:`port` says which).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self, root: Path, scan: Callable[[Path], Sequence[RunRowLike]], *, host: str = "127.0.0.1", port: int = 8765
    ) -> None:
        if type(host) is not str or type(port) is not int:
            raise TypeError("UiServer(root, scan, host: str, port: int)")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if not is_loopback(host):
            _log.warning(
                "coordinator ui: binding %s: the page has no login, anyone who can reach this address reads every run",
                host,
            )
        self._httpd = _Server((host, port), _Handler)
        self._httpd.api = Api(root, scan)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        loop = is_loopback(host)
        self._httpd.allowed_hosts = {"localhost", "127.0.0.1", "[::1]", host} if loop else None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Serve on a thread (``coordinator-ui-server``)."""
        if self._thread is not None:
            raise RuntimeError("the UI server is already started")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="coordinator-ui-server"
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Serve on the calling thread until :meth:`stop` is called from another (or KeyboardInterrupt)."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        """Stop serving, close the socket and join the serving and request threads (idempotent).

        Raises:
            RuntimeError: the serving thread did not end within 10 s.
        """
        t, self._thread = self._thread, None
        if t is not None:
            self._httpd.shutdown()
            t.join(_JOIN_S)
            if t.is_alive():
                raise RuntimeError("the UI server thread did not stop within 10 s")
        self._httpd.server_close()

    def __enter__(self) -> UiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
