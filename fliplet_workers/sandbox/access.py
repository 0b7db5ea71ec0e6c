"""Who may ask the sandbox what: its addresses, its own token, and the page's login sessions.

Why: users run the sandbox on their desktops with real data, where any web page they visit can send
requests to 127.0.0.1. So, before any route is looked at, :class:`Access` refuses (403) a ``Host``
header that is not the address it listens on (DNS rebinding) and an ``Origin`` header that is not its
own (a foreign web page); the console's login form opens a session whose cookie (HttpOnly,
SameSite=Strict) holds a random id, never the token.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

from fliplet_workers.sandbox.store import DEMO_TOKEN
from fliplet_workers.sandbox.wire import Reply, Request, error_reply

#: Login sessions kept at once (the oldest is forgotten first): login spam cannot grow memory.
MAX_SESSIONS = 1000

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
