"""The sandbox's request router: one table of routes, each with the credential it needs.

Why one table: who may call what is the sandbox's safety, so it is declared next to each path
(:class:`Route` ``auth``) and enforced in one place (:meth:`App._authorize`), after :class:`Access`
has refused foreign ``Host`` and ``Origin`` headers. Handlers are small functions over the store.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fliplet_workers.sandbox.access import Access
from fliplet_workers.sandbox.basics import SandboxError
from fliplet_workers.sandbox.faults import Faults
from fliplet_workers.sandbox.store import Store
from fliplet_workers.sandbox.wire import DROP, Reply, Request, error_reply

log = logging.getLogger("fliplet_workers.sandbox")

Handler = Callable[["App", Request], Reply]

#: What a route needs: ``api`` a valid Auth-token header (Fliplet's rule); ``user`` a valid token from
#: the header or the session cookie (the console, its JSON, uploaded files); ``admin`` the sandbox's own
#: token from either (``/_sandbox/*``); ``none`` nothing (the login form's POST, the console's static files).
AUTH_KINDS = ("api", "user", "admin", "none")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: str = "api"
    #: What a request without a valid token gets: a JSON 401, or (the page) a handler that answers it,
    #: e.g. with the login form.
    unauthorized: Handler | None = None


def route(method: str, pattern: str, handler: Handler, auth: str = "api", unauthorized: Handler | None = None) -> Route:
    """A :class:`Route`; ``pattern`` matches the path without its leading/trailing slashes and query."""
    assert auth in AUTH_KINDS
    return Route(method, re.compile(pattern), handler, auth, unauthorized)


class App:
    """Routes requests to handlers; turns :class:`SandboxError` into JSON error replies."""

    def __init__(self, store: Store, faults: Faults, routes: Sequence[Route], access: Access | None = None) -> None:
        """``routes``: the table (:data:`fliplet_workers.sandbox.routes.ROUTES`), passed in because it
        imports the handlers, which import this module."""
        self.store = store
        self.faults = faults
        self.access = access or Access()
        self.routes = list(routes)

    def handle(self, request: Request) -> Reply:
        refused = self.access.refusal(request)
        if refused is not None:
            return refused
        allowed = False
        for candidate in self.routes:
            match = candidate.pattern.fullmatch(request.path)
            if match is None:
                continue
            allowed = True
            if candidate.method != request.method:
                continue
            request.params = match.groupdict()
            try:
                denied = self._authorize(candidate, request)
                return denied if denied is not None else candidate.handler(self, request)
            except SandboxError as exc:
                return error_reply(exc.status, exc.message)
            except Exception:
                log.exception("Sandbox handler failed: %s %s", request.method, request.path)
                return error_reply(500, "Sandbox internal error")
        if allowed:
            return error_reply(405, f"Method {request.method} not allowed on /{request.path}")
        return error_reply(404, f"No such endpoint: /{request.path}")

    def _authorize(self, candidate: Route, request: Request) -> Reply | None:
        """None when the request may go on (``request.token`` then holds the token to act as)."""
        if candidate.auth == "none":
            return None
        if candidate.auth != "api" and not request.token:
            request.token = self.access.session_token(request)
        if self.store.user_for_token(request.token or None) is None:
            if candidate.unauthorized is not None:
                return candidate.unauthorized(self, request)
            return error_reply(401, "Invalid or expired token")
        if candidate.auth == "admin" and not secrets.compare_digest(request.token, self.access.admin_token):
            return error_reply(403, "Only the sandbox's own token may use the /_sandbox endpoints")
        return None

    def with_faults(self, kind: str, apply: Callable[[], Reply], on_fault: Callable[[str], None] | None = None) -> Reply:
        """Run ``apply`` under the injected latency and the next queued fault of ``kind``;
        ``on_fault`` hears which fault was injected (the commit log notes it)."""
        delay = self.faults.delay_seconds(kind)
        if delay:
            time.sleep(delay)
        action = self.faults.next_action(kind)
        if action != "ok" and on_fault is not None:
            on_fault(action)
        if action == "error":
            return error_reply(500, "Sandbox injected failure")
        if action == "drop-before-apply":
            return DROP
        reply = apply()
        return DROP if action == "drop-after-apply" else reply
