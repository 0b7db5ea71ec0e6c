"""Every wait on the database bounded by ``query_timeout``.

:func:`connect_args` gives each driver its connect, statement and read timeouts and TCP keepalives;
for PostgreSQL, :class:`Watchdog` adds a client-side deadline, since a frozen server answers none of
the server-side limits. An expired one is reported by the source as a timeout (see
:meth:`Watchdog.expired`).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import sqlalchemy
from sqlalchemy import URL
from sqlalchemy.engine import Engine

__all__ = ["DEFAULT_QUERY_TIMEOUT", "LIBPQ_DRIVERS", "WATCHDOG_GRACE", "Watchdog", "connect_args"]

#: Seconds to wait for a connection, a statement or a fetch when the caller gives no ``query_timeout``
#: (the config's default is the same).
DEFAULT_QUERY_TIMEOUT = 300.0
#: Seconds the client-side watchdog waits beyond ``query_timeout`` before it drops a PostgreSQL
#: connection: a server that still answers reports its own ``statement_timeout`` first.
WATCHDOG_GRACE = 2.0

#: libpq drivers: their connections take ``connect_timeout``, ``options``, keepalives and
#: ``tcp_user_timeout``, and expose the socket (``fileno()``) to the watchdog.
LIBPQ_DRIVERS = ("psycopg2", "psycopg", "psycopg2cffi")


def connect_args(url: URL, query_timeout: float = DEFAULT_QUERY_TIMEOUT) -> dict[str, Any]:
    """Driver keyword arguments that bound every wait on the database by ``query_timeout`` seconds.

    Why each: a connect timeout (a host that drops packets), a statement timeout (a query that never
    ends), a read timeout or TCP keepalives (a server or network that stops answering mid-fetch).
    SQLite's ``timeout`` is how long to wait for another writer's lock. A key the URL sets already is
    left to the URL. PostgreSQL has no client-side read timeout: :class:`Watchdog` is that.
    """
    seconds = max(1, math.ceil(query_timeout))
    backend, driver = url.get_backend_name(), url.get_driver_name()
    args: dict[str, Any] = {}
    if backend == "sqlite":
        args = {"timeout": float(query_timeout)}
    elif backend == "postgresql" and driver in LIBPQ_DRIVERS:
        probe = max(1, min(30, seconds // 3))  # keepalive probes: a dead peer is noticed within the timeout
        args = {
            "connect_timeout": max(2, seconds),  # libpq treats 1 as 2
            "options": f"-c statement_timeout={seconds * 1000}",
            "keepalives": 1,
            "keepalives_idle": probe,
            "keepalives_interval": probe,
            "keepalives_count": 3,
            "tcp_user_timeout": seconds * 1000,  # unacknowledged data (network gone): libpq 12+
        }
    elif backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        args = {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    elif backend == "mssql" and driver == "pymssql":
        args = {"login_timeout": seconds, "timeout": seconds}
    elif backend == "mssql" and driver == "pyodbc":
        args = {"timeout": seconds}  # the login timeout; the statement timeout is set on each connection
    return {key: value for key, value in args.items() if key not in url.query}


class Watchdog:
    """A client-side deadline for PostgreSQL calls.

    ``statement_timeout`` runs on the server, and keepalives and ``tcp_user_timeout`` are answered by
    the server's kernel: none of them fires when the server process is frozen (stopped, swapped out,
    deadlocked) while its host still acknowledges packets. libpq then waits in ``recv`` for ever. The
    watchdog arms a timer around each blocking driver call; when it fires it shuts down the sockets of
    the engine's connections, so the blocked call returns with an error, which :meth:`expired` turns
    into a timeout message.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def watch(self, engine: Engine) -> None:
        """Track every DBAPI connection ``engine`` opens."""
        sqlalchemy.event.listen(engine, "connect", lambda dbapi_conn, _record: self._connections.add(dbapi_conn))

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        timer = threading.Timer(self.seconds, self._fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for conn in list(self._connections):
                with contextlib.suppress(Exception):
                    fd = conn.fileno()
                    # a duplicate of the descriptor: shutdown() acts on the socket libpq is blocked on
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)

    def expired(self, limit: float) -> str | None:
        """The timeout message if the watchdog fired (then the engine's connections are dead)."""
        if not self.fired:
            return None
        return f"the database did not answer within query_timeout ({_seconds(limit)} s)"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)

