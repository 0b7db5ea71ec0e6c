"""A local HTTP server that speaks the part of the Fliplet REST API the agent uses, and its console.

Why: users can try a config without a Fliplet account (``fliplet-agent sandbox``) and see what each
run did in the console page; the test suite and benchmarks get a real HTTP peer whose failures they
control. It is a plain stdlib ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, one thread per
connection), bound to 127.0.0.1.

This module is only the sockets and the public :class:`SandboxServer`. The rest is named for its
idea: :mod:`.app` routes a parsed request (:mod:`.wire`) through the table in :mod:`.routes` to the
Fliplet API (:mod:`.routes_api`), the console (:mod:`.console`) or the ``/_sandbox/*`` endpoints
(:mod:`.routes_sandbox`), after :mod:`.access` refused foreign ``Host`` and ``Origin`` headers and
checked the token or session; :mod:`.faults` injects failures; :mod:`.store` holds the data.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fliplet_workers.sandbox.access import MAX_SESSIONS, Access
from fliplet_workers.sandbox.basics import SandboxError
from fliplet_workers.sandbox.console import render_login
from fliplet_workers.sandbox.faults import FAULT_ACTIONS, FAULT_KINDS, Faults
from fliplet_workers.sandbox.router import AUTH_KINDS, App, Handler, Route
from fliplet_workers.sandbox.routes import ROUTES
from fliplet_workers.sandbox.store import DEMO_TOKEN, Store
from fliplet_workers.sandbox.wire import (
    HTML_HEADERS,
    Reply,
    Request,
    error_reply,
    json_reply,
    parse_multipart,
)

log = logging.getLogger("fliplet_workers.sandbox")

DEFAULT_PORT = 8765
#: Largest request body accepted (the real API refuses far less; this only guards the process).
MAX_BODY = 1 << 30

#: Names other code imported from this module before it was split.
__all__ = [
    "AUTH_KINDS", "DEFAULT_PORT", "FAULT_ACTIONS", "FAULT_KINDS", "HTML_HEADERS", "MAX_BODY", "MAX_SESSIONS",
    "ROUTES", "Access", "App", "Faults", "Handler", "Reply", "Request", "Route", "SandboxServer",
    "error_reply", "json_reply", "parse_multipart", "render_login", "serve_forever",
]


def _loggable(raw_path: str) -> str:
    """The request path with any token-looking query value hidden."""
    split = urlsplit(raw_path)
    if "token" not in split.query.lower():
        return raw_path
    parts = [p if "token" not in p.split("=")[0].lower() else p.split("=")[0] + "=***"
             for p in split.query.split("&")]
    return f"{split.path}?{'&'.join(parts)}"


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FlipletSandbox/1.0"
    timeout = 600  # idle keep-alive connections end after 10 minutes
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stalls
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise SandboxError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise SandboxError(413, "Request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        started = time.perf_counter()
        try:
            body = self._read_body()
        except (SandboxError, ValueError) as exc:
            self.close_connection = True
            status, message = (exc.status, exc.message) if isinstance(exc, SandboxError) else (400, "Bad body")
            self._send(error_reply(status, message))
            return
        split = urlsplit(self.path)
        host = self.headers.get("Host") or f"{self.server.server_name}:{self.server.server_port}"
        request = Request(
            method=self.command,
            path=unquote(split.path).strip("/"),
            query={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            base_url=f"http://{host}/",
            token=self.headers.get("Auth-token", ""),
        )
        reply = self.server.app.handle(request)
        elapsed = (time.perf_counter() - started) * 1000
        if reply.drop:
            self.close_connection = True
            log.debug("%s %s -> dropped connection (%.1f ms)", self.command, _loggable(self.path), elapsed)
            return
        self._send(reply)
        log.debug("%s %s -> %d, %d bytes (%.1f ms)", self.command, _loggable(self.path), reply.status,
                  len(reply.body), elapsed)

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in reply.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _dispatch logs one line per request, without headers (the token stays out)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("sandbox: " + format, *args)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its open connections, so that stop() can end them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------- public API


class SandboxServer:
    """The sandbox on a background thread: ``with SandboxServer() as sb: requests.get(sb.url + ...)``.

    ``port=0`` picks a free port. ``data_file`` (optional) is loaded now and saved while running and
    on :meth:`stop`. ``store`` and ``faults`` are the live objects, for tests. ``token`` is the
    sandbox's own token, the only one the ``/_sandbox/*`` endpoints accept: send :attr:`headers`
    (``requests.get(sb.url + "_sandbox/state", headers=sb.headers)``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, data_file: str | None = None) -> None:
        self.host = host
        self.port = port
        self.token = DEMO_TOKEN
        self.store = Store(data_file)
        self.faults = Faults()
        self.app = App(self.store, self.faults, ROUTES, Access(self.token))
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The ``Auth-token`` header of the sandbox's own token (every endpoint accepts it)."""
        return {"Auth-token": self.token}

    def start(self) -> SandboxServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer((self.host, self.port), self.app)
        self.app.access.bind(str(self._httpd.server_address[0]), int(self._httpd.server_address[1]))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sandbox-http", daemon=True)
        self._thread.start()
        self.store.start_autosave()
        log.debug("Sandbox listening on %s", self.url)
        return self

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, e.g. ``http://127.0.0.1:8765/``."""
        if self._httpd is None:
            raise RuntimeError("The sandbox is not started")
        host, port = self._httpd.server_address[:2]
        host = str(host)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        """Stop serving, end open connections and save the data file."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.close_connections()
            httpd.server_close()
            if self._thread is not None:
                self._thread.join()
        self.store.stop_autosave()
        self.store.save()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(host: str = "127.0.0.1", port: int = DEFAULT_PORT, data_file: str | None = None) -> None:
    """Run the sandbox in the foreground until Ctrl+C or SIGTERM (for ``fliplet-agent sandbox``)."""
    server = SandboxServer(host, port, data_file).start()
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"Fliplet sandbox listening on {server.url}", flush=True)
    print(f"Demo token: {DEMO_TOKEN} (data sources 1 and 2). Use base URL {server.url}", flush=True)
    print(f"Open {server.url} in a browser and log in with that token: the console shows the data sources, "
          "their entries and every commit received, before → after.", flush=True)
    if data_file:
        print(f"Data is saved to {data_file}", flush=True)
    try:
        while not done.wait(0.5):
            # The store holds (up to millions of) acyclic entries: move what was allocated since the
            # last tick out of the cyclic collector's reach, or its full passes cost ~1 ms per commit
            # at 100k entries and grow with the store. Refcounting still frees them when deleted.
            gc.freeze()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print("Sandbox stopped.", flush=True)
