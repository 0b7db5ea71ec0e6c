"""Test peers for file syncing: a local HTTP file server and a SharePoint stand-in, plus a world helper.

:class:`FileServer` serves files from a dict on 127.0.0.1 (HTTP/1.1, keep-alive, one thread per
connection): each path has a content type; ``/missing*`` answers 404; ``/slow*`` waits before
answering (for timeouts); a path can require request headers (for ``headers``). It counts requests
per path and records the largest number of requests in flight at once (to check ``concurrency``).

With ``auth="basic"`` or ``auth="ntlm"`` it is a SharePoint stand-in: every request must
authenticate with the configured user the way on-premises SharePoint (IIS) asks for it, with a
``WWW-Authenticate`` challenge. NTLM is checked by pyspnego's acceptor, which reads the accounts from
the file named by ``NTLM_USER_FILE`` (``DOMAIN:user:password`` lines); the server writes that file.
"""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from fliplet_workers.config import load_config
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.logs import OperationLog
from fliplet_workers.pipeline.agent import run_config
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer


@dataclass
class Served:
    body: bytes
    content_type: str = "application/octet-stream"
    headers: Mapping[str, str] = field(default_factory=dict)  # required request headers
    delay: float = 0.0


class FileServer:
    def __init__(self, auth: str | None = None, username: str = "", password: str = "", domain: str = "CORP") -> None:
        self.files: dict[str, Served] = {}
        self.auth = auth
        self.username = username
        self.password = password
        self.domain = domain
        self.requests: Counter[str] = Counter()
        self.authorized: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen_headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._user_file: str | None = None

    # -- content ----------------------------------------------------------------------------------

    def add(self, path: str, body: bytes, content_type: str = "application/octet-stream", *,
            headers: Mapping[str, str] | None = None, delay: float = 0.0) -> str:
        self.files[unquote(path)] = Served(body, content_type, dict(headers or {}), delay)
        return self.url + path.lstrip("/")

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FileServer:
        if self.auth == "ntlm":
            handle, self._user_file = tempfile.mkstemp(prefix="ntlm-users-")
            with os.fdopen(handle, "w") as out:
                out.write(f"{self.domain}:{self.username}:{self.password}\n")
            os.environ["NTLM_USER_FILE"] = self._user_file
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._user_file:
            os.unlink(self._user_file)
            self._user_file = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FileServer
    ntlm_context: Any = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain",
               extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        owner = self.owner
        path = unquote(self.path.split("?", 1)[0])
        with owner._lock:
            owner.requests[path] += 1
            owner.seen_headers.append(dict(self.headers.items()))
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            if owner.auth and not self._authenticated():
                return
            served = owner.files.get(path)
            if served is None or path.startswith("/missing"):
                self._reply(404, b"Not found")
                return
            for name, value in served.headers.items():
                if self.headers.get(name) != value:
                    self._reply(403, b"Forbidden")
                    return
            if served.delay:
                time.sleep(served.delay)
            self._reply(200, served.body, served.content_type)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with owner._lock:
                owner.in_flight -= 1

    # -- authentication, as IIS asks for it ------------------------------------------------------

    def _authenticated(self) -> bool:
        owner = self.owner
        header = self.headers.get("Authorization", "")
        if owner.auth == "basic":
            expected = base64.b64encode(f"{owner.username}:{owner.password}".encode()).decode()
            if header == f"Basic {expected}":
                owner.authorized[self.path] += 1
                return True
            self._reply(401, b"Unauthorized", extra={"WWW-Authenticate": 'Basic realm="SharePoint"'})
            return False
        # NTLM: negotiate → challenge → authenticate, on one connection
        import spnego  # the acceptor reads NTLM_USER_FILE

        if not header.startswith("NTLM "):
            self._reply(401, b"Unauthorized", extra={"WWW-Authenticate": "NTLM"})
            return False
        token = base64.b64decode(header[5:])
        if self.ntlm_context is None or token[8:12] == b"\x01\x00\x00\x00":  # a NEGOTIATE message
            self.ntlm_context = spnego.server(protocol="ntlm")
        try:
            answer = self.ntlm_context.step(token)
        except Exception:
            self.ntlm_context = None
            self._reply(401, b"Unauthorized", extra={"WWW-Authenticate": "NTLM"})
            return False
        if not self.ntlm_context.complete:
            self._reply(401, b"", extra={"WWW-Authenticate": "NTLM " + base64.b64encode(answer or b"").decode()})
            return False
        self.ntlm_context = None
        owner.authorized[self.path] += 1
        return True


# ---------------------------------------------------------------------------------------------
# A test world: a sqlite source, a data source in the sandbox, a YAML config, a captured log
# ---------------------------------------------------------------------------------------------


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@dataclass
class FilesWorld:
    server: SandboxServer
    tmp: Path
    ds: int
    columns: tuple[str, ...]
    handler: ListHandler
    log: OperationLog
    options: dict[str, Any]

    @property
    def db_path(self) -> Path:
        return self.tmp / "source.sqlite"

    def insert(self, *rows: Mapping[str, Any]) -> None:
        self.upsert(rows)

    def upsert(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with sqlite3.connect(self.db_path) as conn:
            for row in rows:
                names = list(row)
                conn.execute(f"INSERT OR REPLACE INTO items ({', '.join(names)}) "
                             f"VALUES ({', '.join('?' for _ in names)})", [row[n] for n in names])

    def write_config(self, **overrides: Any) -> Path:
        options = {k: v for k, v in {**self.options, **overrides}.items() if v is not None}
        path = self.tmp / "files.yml"
        path.write_text(yaml.safe_dump(options, sort_keys=False))
        return path

    def run(self, *, dry_run: bool = False, **overrides: Any) -> RunSummary:
        config = load_config(self.write_config(**overrides))
        return run_config(config, dry_run=dry_run, log=self.log)[0]

    def entries(self) -> dict[Any, dict[str, Any]]:
        return {e["data"].get("id"): e["data"] for e in self.server.store.entries(self.ds)}

    def commits(self) -> int:
        return self.server.store.commit_count(self.ds)

    def media_files(self) -> int:
        return int(self.server.store.state()["media"]["files"])

    def errors(self) -> list[str]:
        """Error lines without the ``[config name]`` prefix."""
        return [m.split("] ", 1)[-1] for m in self.handler.messages(logging.ERROR)]

    def all_log(self) -> str:
        return "\n".join(self.handler.messages())


def make_files_world(server: SandboxServer, tmp: Path, columns: Iterable[str], name: str = "files") -> FilesWorld:
    cols = tuple(columns)
    with sqlite3.connect(tmp / "source.sqlite") as conn:
        conn.execute(f"CREATE TABLE items (id INTEGER PRIMARY KEY, {', '.join(f'{c} ' for c in cols)})")
    ds = server.store.create_data_source(f"Files test {tmp.name}")
    handler = ListHandler()
    logger = logging.getLogger(f"tests.{name}.{tmp.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    log = OperationLog(logger, {"name": name})
    options: dict[str, Any] = {
        "auth_token": DEMO_TOKEN,
        "api_url": server.url,
        "database_driver": "sqlite",
        "database_name": str(tmp / "source.sqlite"),
        "datasource_id": ds,
        "query": "SELECT * FROM items ORDER BY id",
        "primary_column": "id",
        "retry_delay": 0.05,
        "timeout": 5,
    }
    return FilesWorld(server, tmp, ds, cols, handler, log, options)
