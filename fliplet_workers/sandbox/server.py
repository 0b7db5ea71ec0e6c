"""A local HTTP server that speaks the part of the Fliplet REST API the agent uses.

Why: users can try a config without a Fliplet account (``fliplet-agent sandbox``), and the test suite
and benchmarks get a real HTTP peer whose failures they control. It is a plain stdlib
``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, one thread per connection), bound to 127.0.0.1.

Layout: :class:`App` routes a parsed request through the ``ROUTES`` table to small handler
functions over the :class:`~fliplet_workers.sandbox.store.Store`; the socket class only reads bodies
and writes replies. :class:`Faults` queues injected failures per kind of call.

Users run it on their desktops with real data, where any web page they visit can send requests to
127.0.0.1. So, before any route is looked at, :class:`App` refuses (403) a ``Host`` header that is not
the address it listens on (DNS rebinding) and an ``Origin`` header that is not its own (a foreign web
page). Then every route needs a token: the ``v1`` API an ``Auth-token`` header, as Fliplet; the HTML
page, uploaded files and the ``/_sandbox/*`` endpoints (state, faults, reset, data sources, tokens,
recorded commits) the header or the session cookie that the page's login form sets (HttpOnly,
SameSite=Strict), and ``/_sandbox/*`` only with the sandbox's own token. See :class:`Access`.
"""

from __future__ import annotations

import contextlib
import gc
import html
import logging
import mimetypes
import re
import secrets
import signal
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson

from fliplet_workers.sandbox.store import DEMO_TOKEN, SandboxError, Store, bad_request

log = logging.getLogger("fliplet_workers.sandbox")

DEFAULT_PORT = 8765
#: Largest request body accepted (the real API refuses far less; this only guards the process).
MAX_BODY = 1 << 30
#: Rows shown per data source on the HTML page.
PAGE_ROWS = 200
#: Login sessions kept at once (the oldest is forgotten first): login spam cannot grow memory.
MAX_SESSIONS = 1000
#: Headers on every HTML answer: no framing (clickjacking), no script, no caching, no referrer.
HTML_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
)

FAULT_KINDS = ("commit", "data", "query", "upload")
FAULT_ACTIONS = ("ok", "error", "drop-after-apply", "drop-before-apply")


# ----------------------------------------------------------------------------------------- faults


class Faults:
    """Injected failures and latency, per kind of call (``commit``, ``data``, ``query``, ``upload``).

    A configuration looks like ``{"commit": ["error", "drop-after-apply", "ok"], "commit_delay_ms":
    50, "data_delay_ms": 0}``: each list is a queue consumed one action per request of that kind;
    an empty queue means "ok". Setting a configuration replaces the previous one entirely.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[str]] = {k: deque() for k in FAULT_KINDS}
        self._delays_ms: dict[str, float] = dict.fromkeys(FAULT_KINDS, 0.0)

    def configure(self, config: Mapping[str, Any]) -> None:
        """Replace the whole configuration; raises ``SandboxError(400)`` on an unknown key/action."""
        if not isinstance(config, Mapping):
            raise bad_request("The fault configuration must be a JSON object")
        queues: dict[str, deque[str]] = {k: deque() for k in FAULT_KINDS}
        delays = dict.fromkeys(FAULT_KINDS, 0.0)
        for key, value in config.items():
            if key in FAULT_KINDS:
                if not isinstance(value, list) or any(a not in FAULT_ACTIONS for a in value):
                    raise bad_request(f"{key} must be a list of {', '.join(FAULT_ACTIONS)}")
                queues[key].extend(value)
            elif key.endswith("_delay_ms") and key[: -len("_delay_ms")] in FAULT_KINDS:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise bad_request(f"{key} must be a non-negative number")
                delays[key[: -len("_delay_ms")]] = float(value)
            else:
                raise bad_request(f"Unknown fault setting: {key}")
        with self._lock:
            self._queues, self._delays_ms = queues, delays

    def set(self, **config: Any) -> None:
        """Python spelling of :meth:`configure`: ``faults.set(commit=["error"], commit_delay_ms=50)``."""
        self.configure(config)

    def clear(self) -> None:
        self.configure({})

    def next_action(self, kind: str) -> str:
        with self._lock:
            queue = self._queues[kind]
            return queue.popleft() if queue else "ok"

    def delay_seconds(self, kind: str) -> float:
        with self._lock:
            return self._delays_ms[kind] / 1000.0

    def describe(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {k: list(q) for k, q in self._queues.items()}
            out.update({f"{k}_delay_ms": v for k, v in self._delays_ms.items()})
            return out


# ------------------------------------------------------------------------- requests and replies


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    base_url: str
    token: str = ""  # the Auth-token header; for cookie routes, the token of the session if none
    params: dict[str, str] = field(default_factory=dict)

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (a JSON object is accepted too)."""
        if self.headers.get("content-type", "").lower().startswith("application/json"):
            body = self.json()
            return {str(k): str(v) for k, v in body.items()} if isinstance(body, dict) else {}
        text = self.body.decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"Invalid JSON body: {exc}") from None

    def int_param(self, name: str) -> int:
        return int(self.params[name])


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    drop: bool = False  # close the connection without answering
    headers: tuple[tuple[str, str], ...] = ()


DROP = Reply(drop=True)


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=orjson.dumps(value))


def error_reply(status: int, message: str) -> Reply:
    return json_reply({"message": message}, status)


def html_reply(text: str, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status=status, body=text.encode("utf-8"), content_type="text/html; charset=utf-8",
                 headers=HTML_HEADERS + headers)


# ------------------------------------------------------------------------------------ access


class Access:
    """Who may ask what: the sandbox's addresses, its own token, and the page's login sessions.

    * ``Host`` must name the address the sandbox listens on (``127.0.0.1:port``, ``localhost:port``,
      ``[::1]:port``, or the address given with ``--host``): a page on a rebound DNS name is refused.
    * ``Origin``, when a browser sends one, must be one of those addresses: no other web page may
      make the sandbox do anything, even with a valid token (a plain-text POST needs no preflight).
    * Sessions map a random id (the cookie) to a token; the token is re-checked on every request,
      so a token removed by a reset ends its sessions. They live in memory only.
    """

    def __init__(self, admin_token: str = DEMO_TOKEN) -> None:
        self.admin_token = admin_token
        self.hosts: frozenset[str] = frozenset()
        self.origins: frozenset[str] = frozenset()
        self.cookie_name = "fliplet_sandbox"
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def bind(self, host: str, port: int) -> None:
        """Learn the listening address (known only once the socket is bound, for ``port=0``)."""
        names = {"127.0.0.1", "localhost", "[::1]"}
        if host not in ("", "0.0.0.0", "::"):
            names.add(f"[{host}]" if ":" in host else host.lower())
        hosts = {f"{name}:{port}" for name in names}
        if port == 80:
            hosts |= names
        self.hosts = frozenset(hosts)
        self.origins = frozenset(f"http://{h}" for h in hosts)
        self.cookie_name = f"fliplet_sandbox_{port}"  # cookies ignore ports: one name per sandbox

    def refusal(self, request: Request) -> Reply | None:
        """403 for a foreign ``Host`` or ``Origin``, before anything else is looked at."""
        host = request.headers.get("host", "").strip().lower()
        if host not in self.hosts:
            return error_reply(403, f"Refused: the Host header {host!r} is not this sandbox's address "
                                    f"(use one of {', '.join(sorted(self.hosts))})")
        origin = request.headers.get("origin")
        if origin is not None and origin.strip().lower() not in self.origins:
            return error_reply(403, f"Refused: requests from another web page (Origin {origin!r}) are not "
                                    "accepted by the sandbox")
        return None

    def open_session(self, token: str) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = token
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def session_token(self, request: Request) -> str:
        session = request.cookie(self.cookie_name)
        if not session:
            return ""
        with self._lock:
            return self._sessions.get(session, "")

    def close_session(self, request: Request) -> None:
        session = request.cookie(self.cookie_name)
        if session:
            with self._lock:
                self._sessions.pop(session, None)

    def set_cookie(self, session: str) -> tuple[str, str]:
        return ("Set-Cookie", f"{self.cookie_name}={session}; Path=/; HttpOnly; SameSite=Strict")

    def clear_cookie(self) -> tuple[str, str]:
        return ("Set-Cookie", f"{self.cookie_name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")


# ---------------------------------------------------------------------------------------- app

Handler = Callable[["App", Request], Reply]

#: What a route needs: ``api`` a valid Auth-token header (Fliplet's rule); ``user`` a valid token from
#: the header or the session cookie (the page, uploaded files); ``admin`` the sandbox's own token from
#: either (``/_sandbox/*``); ``none`` nothing (the login form's POST).
AUTH_KINDS = ("api", "user", "admin", "none")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: str = "api"


class App:
    """Routes requests to handlers; turns :class:`SandboxError` into JSON error replies."""

    def __init__(self, store: Store, faults: Faults, access: Access | None = None) -> None:
        self.store = store
        self.faults = faults
        self.access = access or Access()

    def handle(self, request: Request) -> Reply:
        refused = self.access.refusal(request)
        if refused is not None:
            return refused
        allowed = False
        for route in ROUTES:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            allowed = True
            if route.method != request.method:
                continue
            request.params = match.groupdict()
            try:
                denied = self._authorize(route, request)
                return denied if denied is not None else route.handler(self, request)
            except SandboxError as exc:
                return error_reply(exc.status, exc.message)
            except Exception:
                log.exception("Sandbox handler failed: %s %s", request.method, request.path)
                return error_reply(500, "Sandbox internal error")
        if allowed:
            return error_reply(405, f"Method {request.method} not allowed on /{request.path}")
        return error_reply(404, f"No such endpoint: /{request.path}")

    def _authorize(self, route: Route, request: Request) -> Reply | None:
        """None when the request may go on (``request.token`` then holds the token to act as)."""
        if route.auth == "none":
            return None
        if route.auth != "api" and not request.token:
            request.token = self.access.session_token(request)
        if self.store.user_for_token(request.token or None) is None:
            if route.handler is page:
                return html_reply(render_login(), 401)
            return error_reply(401, "Invalid or expired token")
        if route.auth == "admin" and not secrets.compare_digest(request.token, self.access.admin_token):
            return error_reply(403, "Only the sandbox's own token may use the /_sandbox endpoints")
        return None

    def with_faults(self, kind: str, apply: Callable[[], Reply]) -> Reply:
        """Run ``apply`` under the injected latency and the next queued fault of ``kind``."""
        delay = self.faults.delay_seconds(kind)
        if delay:
            time.sleep(delay)
        action = self.faults.next_action(kind)
        if action == "error":
            return error_reply(500, "Sandbox injected failure")
        if action == "drop-before-apply":
            return DROP
        reply = apply()
        return DROP if action == "drop-after-apply" else reply


# ------------------------------------------------------------------------ Fliplet API handlers


def get_user(app: App, req: Request) -> Reply:
    return json_reply({"user": app.store.user_for_token(req.token)})


def get_organizations(app: App, req: Request) -> Reply:
    return json_reply({"organizations": app.store.organizations(req.token)})


def list_data_sources(app: App, req: Request) -> Reply:
    sources = app.store.list_data_sources(req.token, req.query.get("type"), req.query.get("organizationId"))
    return json_reply({"dataSources": sources})


def create_data_source(app: App, req: Request) -> Reply:
    return json_reply({"dataSource": app.store.create_data_source_for(req.token, req.json())})


def get_data(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    # The snapshot is taken under the store lock; serialising and sending happen without it.
    return app.with_faults("data", lambda: json_reply({"entries": app.store.snapshot(req.token, ds_id)}))


def put_data(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    return json_reply(app.store.put_entry(req.token, ds_id, req.json()), 201)


def import_data(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    append = req.query.get("append", "").lower() in ("true", "1")
    return json_reply({"entries": app.store.import_entries(req.token, ds_id, req.json(), append)})


def get_entry(app: App, req: Request) -> Reply:
    return json_reply(app.store.get_entry(req.token, req.int_param("ds"), req.int_param("entry")))


def update_entry(app: App, req: Request) -> Reply:
    ds_id, entry_id = req.int_param("ds"), req.int_param("entry")
    app.store.get_entry(req.token, ds_id, entry_id)  # 401/403/404 before the body is judged
    return json_reply(app.store.update_entry(req.token, ds_id, entry_id, req.json()))


def delete_entry(app: App, req: Request) -> Reply:
    return json_reply(app.store.delete_entry(req.token, req.int_param("ds"), req.int_param("entry")))


def commit(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    body = req.json()
    app.store.record_commit(ds_id, body)
    return app.with_faults("commit", lambda: json_reply({"entries": app.store.commit(req.token, ds_id, body)}))


def query(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    body = req.json() if req.body.strip() else {}
    return app.with_faults("query", lambda: json_reply({"entries": app.store.query(req.token, ds_id, body)}))


def list_media(app: App, req: Request) -> Reply:
    org = req.query.get("organizationId")
    if not org:
        raise bad_request("organizationId is required")
    return json_reply(app.store.media(req.token, org, req.query.get("folderId"), req.base_url))


def create_folder(app: App, req: Request) -> Reply:
    return json_reply(app.store.create_folder(req.token, req.json()))


def upload_file(app: App, req: Request) -> Reply:
    def apply() -> Reply:
        fields = parse_multipart(req.headers.get("content-type", ""), req.body)
        if "files" not in fields:
            raise bad_request("The multipart body needs a files field")
        filename, content_type, content = fields["files"]
        name = req.query.get("name") or filename or ""
        checksum = fields["checksum"][2].decode("utf-8", "replace") if "checksum" in fields else None
        if not content_type or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        record = app.store.add_file(req.token, req.query.get("organizationId"), req.query.get("folderId"),
                                    name, content, content_type, checksum, req.base_url)
        return json_reply({"files": [record]})

    return app.with_faults("upload", apply)


def download_file(app: App, req: Request) -> Reply:
    """An uploaded file, always as a download: a user's ``.html`` or ``.svg`` never runs as a page of
    the sandbox's origin (which holds the session cookie)."""
    name = req.params["name"]
    content_type, content = app.store.file_content(req.token, req.int_param("id"), name)
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "file"
    return Reply(body=content, content_type=content_type, headers=(
        ("Content-Disposition", f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"),
        ("Content-Security-Policy", "sandbox; default-src 'none'"),
        ("Cache-Control", "private, no-store"),
    ))


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, str | None, bytes]]:
    """multipart/form-data → {field name: (file name, declared content type, bytes)}, via ``email``."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise bad_request("Expected a multipart/form-data body")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise bad_request("Malformed multipart body")
    fields: dict[str, tuple[str | None, str | None, bytes]] = {}
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition")
        name = getattr(disposition, "params", {}).get("name")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        declared = part.get_content_type() if part.get("Content-Type") else None
        fields[name] = (part.get_filename(), declared, payload if isinstance(payload, bytes) else b"")
    return fields


# ---------------------------------------------------------------------- sandbox-only handlers


def sandbox_state(app: App, req: Request) -> Reply:
    return json_reply({**app.store.state(), "faults": app.faults.describe()})


def sandbox_get_faults(app: App, req: Request) -> Reply:
    return json_reply(app.faults.describe())


def sandbox_set_faults(app: App, req: Request) -> Reply:
    app.faults.configure(req.json())
    return json_reply(app.faults.describe())


def sandbox_reset(app: App, req: Request) -> Reply:
    app.store.reset()
    app.faults.clear()
    return json_reply({"ok": True})


def sandbox_create_data_source(app: App, req: Request) -> Reply:
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise bad_request('Expected {"name": ..., "tokens"?: [...], "type"?: ..., "organizationId"?: N}')
    tokens = body.get("tokens", [app.access.admin_token])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise bad_request("tokens must be a list of strings")
    org = body.get("organizationId", 1)
    if not isinstance(org, int):
        raise bad_request("organizationId must be an integer")
    try:
        ds_id = app.store.create_data_source(body["name"], org, tokens, body.get("type"))
    except KeyError as exc:
        raise SandboxError(404, str(exc.args[0])) from None
    return json_reply({"id": ds_id})


def sandbox_add_token(app: App, req: Request) -> Reply:
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("token"), str) or not body["token"]:
        raise bad_request('Expected {"token": ..., "email"?: ..., "dataSourceIds"?: [...]}')
    ds_ids = body.get("dataSourceIds", [])
    if not isinstance(ds_ids, list) or not all(isinstance(i, int) for i in ds_ids):
        raise bad_request("dataSourceIds must be a list of integers")
    try:
        app.store.add_token(body["token"], str(body.get("email", "tester@example.com")), ds_ids)
    except KeyError as exc:
        raise SandboxError(404, str(exc.args[0])) from None
    return json_reply({"ok": True})


def sandbox_commits(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    return json_reply({"count": app.store.commit_count(ds_id), "commits": app.store.commits(ds_id)})


# --------------------------------------------------------------------------------- HTML page


@lru_cache(maxsize=1)
def _page_template() -> Template:
    return Template(resources.files("fliplet_workers.sandbox").joinpath("page.html").read_text("utf-8"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return html.escape(text)


def _source_section(source: Mapping[str, Any], count: int, entries: list[dict[str, Any]]) -> str:
    e = html.escape
    columns: dict[str, None] = {}
    for entry in entries:
        columns.update(dict.fromkeys(entry["data"]))
    kind = f", type {e(str(source['type']))}" if source["type"] else ""
    head = (f"<h2>#{source['id']} {e(source['name'])}</h2>\n"
            f'<p class="meta">{count} entries{kind}, organization {source["organizationId"]}'
            f"{f' (showing the first {len(entries)})' if count > len(entries) else ''}</p>")
    if not entries:
        return f'{head}\n<p class="empty">No entries.</p>'
    header = "".join(f"<th>{e(c)}</th>" for c in columns)
    rows = "\n".join(
        f'<tr><td class="id">{entry["id"]}</td>'
        + "".join(f"<td>{_cell(entry['data'].get(c))}</td>" for c in columns) + "</tr>"
        for entry in entries)
    return f"{head}\n<table>\n<tr><th>id</th>{header}</tr>\n{rows}\n</table>"


def render_page(store: Store, token: str, *, session: bool = False) -> str:
    """The data sources ``token`` may read and their first entries, as an HTML page (every value
    escaped). ``session``: the page was reached with the login cookie, so it offers a logout."""
    e = html.escape
    user = store.user_for_token(token) or {}
    previews = store.preview(token, PAGE_ROWS)
    total = sum(count for _, count, _ in previews)
    logout = ('<form method="post" action="/_sandbox/logout" class="inline"><button type="submit">Log out</button>'
              "</form>") if session else ""
    meta = (f'<p class="meta">Logged in as {e(str(user.get("email", "")))}: '
            f"{len(previews)} data source(s) this token may read, {total} entries in total. {logout}</p>")
    sections = [_source_section(*preview) for preview in previews]
    return _page_template().substitute(title="Fliplet sandbox", body="\n".join([meta, *sections]))


def render_login(error: str = "") -> str:
    """The login form shown instead of any data when there is no valid token or session."""
    problem = f'<p class="error">{html.escape(error)}</p>' if error else ""
    body = f"""{problem}<p class="meta">Enter a token of this sandbox (the one printed when it started) to see the data
sources it may read. Your browser keeps a session cookie for this sandbox until you log out or it stops.</p>
<form method="post" action="/_sandbox/login">
<label>Token <input type="password" name="token" autocomplete="off" required autofocus></label>
<button type="submit">Log in</button>
</form>"""
    return _page_template().substitute(title="Fliplet sandbox: log in", body=body)


def page(app: App, req: Request) -> Reply:
    session = not req.headers.get("auth-token")
    return html_reply(render_page(app.store, req.token, session=session))


def login(app: App, req: Request) -> Reply:
    """The login form's POST: a valid token opens a session (HttpOnly, SameSite=Strict cookie)."""
    try:
        token = req.form().get("token", "").strip()
    except SandboxError:
        token = ""
    if not token or app.store.user_for_token(token) is None:
        return html_reply(render_login("That token is not valid for this sandbox."), 401)
    session = app.access.open_session(token)
    return Reply(status=303, headers=(("Location", "/"), app.access.set_cookie(session), ("Cache-Control", "no-store")))


def logout(app: App, req: Request) -> Reply:
    app.access.close_session(req)
    return Reply(status=303, headers=(("Location", "/"), app.access.clear_cookie(), ("Cache-Control", "no-store")))


# ------------------------------------------------------------------------------- the routes


def _route(method: str, pattern: str, handler: Handler, auth: str = "api") -> Route:
    assert auth in AUTH_KINDS
    return Route(method, re.compile(pattern), handler, auth)


_DS = r"v1/data-sources/(?P<ds>\d+)"
_ENTRY = _DS + r"/data/(?P<entry>\d+)"

#: Paths are matched without their leading/trailing slashes and query string.
ROUTES: list[Route] = [
    _route("GET", r"v1/user", get_user),
    _route("GET", r"v1/organizations", get_organizations),
    _route("GET", r"v1/data-sources", list_data_sources),
    _route("POST", r"v1/data-sources", create_data_source),
    _route("GET", _DS + r"/data", get_data),
    _route("PUT", _DS + r"/data", put_data),
    _route("POST", _DS + r"/data", import_data),
    _route("GET", _ENTRY, get_entry),
    _route("PUT", _ENTRY, update_entry),
    _route("DELETE", _ENTRY, delete_entry),
    _route("POST", _DS + r"/commit", commit),
    _route("POST", _DS + r"/data/query", query),
    _route("GET", r"v1/media", list_media),
    _route("POST", r"v1/media/folders", create_folder),
    _route("POST", r"v1/media/files", upload_file),
    _route("GET", r"media/files/(?P<id>\d+)/(?P<name>[^/]+)", download_file, auth="user"),
    _route("GET", r"", page, auth="user"),
    _route("POST", r"_sandbox/login", login, auth="none"),
    _route("POST", r"_sandbox/logout", logout, auth="none"),
    _route("GET", r"_sandbox/state", sandbox_state, auth="admin"),
    _route("GET", r"_sandbox/faults", sandbox_get_faults, auth="admin"),
    _route("POST", r"_sandbox/faults", sandbox_set_faults, auth="admin"),
    _route("POST", r"_sandbox/reset", sandbox_reset, auth="admin"),
    _route("POST", r"_sandbox/data-sources", sandbox_create_data_source, auth="admin"),
    _route("POST", r"_sandbox/tokens", sandbox_add_token, auth="admin"),
    _route("GET", r"_sandbox/data-sources/(?P<ds>\d+)/commits", sandbox_commits, auth="admin"),
]


# ------------------------------------------------------------------------------------ sockets


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
        self.app = App(self.store, self.faults, Access(self.token))
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
    print(f"Open {server.url} in a browser and log in with that token to see the data.", flush=True)
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
