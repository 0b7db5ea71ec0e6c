"""SQL databases as a row source, on SQLAlchemy 2 (sqlite, PostgreSQL, MySQL/MariaDB, SQL Server).

:class:`SqlSource` connects (with a ``SELECT 1`` check), **streams** query rows as dicts
(server-side cursor on PostgreSQL, unbuffered ``SSCursor`` on MySQL: memory stays flat whatever the
row count), and runs writes for pull operations' actions.

Queries without parameters go to the driver verbatim, as the original agent sends them (``%``,
``'::'`` or ``':name'`` in literals are safe); queries with a ``params`` mapping use SQLAlchemy's
``:name`` placeholders.

Errors: a failed connection raises :class:`SourceConnectError`, a failed query
:class:`SourceQueryError`, each carrying the database's own reason with every password redacted and
no chained driver exception (whose text or arguments could hold secrets).

The rest of the SQL layer, one idea per module:

* :mod:`.sql_url`: the SQLAlchemy URL from the config's ``database_*`` options (:func:`engine_url`);
* :mod:`.sql_timeouts`: every wait bounded by ``query_timeout`` (:func:`connect_args`, and the
  PostgreSQL watchdog, since a frozen server answers none of the server-side limits);
* :mod:`.sql_errors`: a driver failure in the database's own words, passwords redacted;
* :mod:`.sql_rows`: driver rows as dicts (bytes, durations and MySQL JSON fixed for the core).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy import URL, text
from sqlalchemy.engine import Connection, CursorResult, Engine

from fliplet_workers.config.model import Database
from fliplet_workers.errors import SourceConnectError, SourceQueryError
from fliplet_workers.sources.sql_errors import Redactor, driver_reason
from fliplet_workers.sources.sql_rows import RowShaper, json_columns
from fliplet_workers.sources.sql_timeouts import (
    DEFAULT_QUERY_TIMEOUT,
    LIBPQ_DRIVERS,
    WATCHDOG_GRACE,
    Watchdog,
    connect_args,
)
from fliplet_workers.sources.sql_url import ODBC_DRIVER, SqliteFileMissing, check_sqlite_file, engine_url

__all__ = ["DEFAULT_QUERY_TIMEOUT", "ODBC_DRIVER", "STREAM_BATCH", "SqlSource", "connect_args", "engine_url"]

T = TypeVar("T")

#: Rows fetched per round trip while streaming.
STREAM_BATCH = 1000


class SqlSource:
    """One database: connect, stream rows, run writes. A context manager (connects, then disposes).

    >>> with SqlSource(db, base_dir) as source:          # doctest: +SKIP
    ...     for row in source.rows("SELECT id, email FROM users"):
    ...         ...
    """

    def __init__(self, db: Database, base_dir: str = ".", *, yield_per: int = STREAM_BATCH,
                 query_timeout: float = DEFAULT_QUERY_TIMEOUT) -> None:
        self.db = db
        self.base_dir = base_dir
        self.yield_per = yield_per
        #: Seconds any one wait on the database may take: connect, statement, fetch (see connect_args).
        self.query_timeout = query_timeout
        self._watchdog: Watchdog | None = None
        self._engine: Engine | None = None
        self._url: URL | None = None
        self._redact = Redactor(db)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SqlSource:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> URL:
        """The engine URL (its ``repr`` hides the password)."""
        if self._url is None:
            try:
                self._url = engine_url(self.db, self.base_dir)
            except ValueError as exc:
                message = self._redact(str(exc))
            else:
                return self._url
            raise SourceConnectError(message) from None
        return self._url

    def connect(self) -> None:
        """Create the engine and check it with ``SELECT 1``. Idempotent.

        Raises :class:`SourceConnectError` with the driver's reason (redacted).
        """
        if self._engine is not None:
            return
        url = self.url
        message: str | None = None
        engine: Engine | None = None
        if url.get_backend_name() == "postgresql" and url.get_driver_name() in LIBPQ_DRIVERS:
            self._watchdog = Watchdog(self.query_timeout + WATCHDOG_GRACE)
        try:
            check_sqlite_file(url)
            engine = sqlalchemy.create_engine(
                url, pool_pre_ping=True, hide_parameters=True,
                connect_args=connect_args(url, self.query_timeout),
            )
            if self._watchdog is not None:
                self._watchdog.watch(engine)
            if url.get_driver_name() == "pyodbc":  # pyodbc's query timeout is a connection attribute
                seconds = max(1, math.ceil(self.query_timeout))
                sqlalchemy.event.listen(engine, "connect", lambda dbapi_conn, _rec: setattr(dbapi_conn, "timeout", seconds))
            with self._guard(), engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SqliteFileMissing as exc:
            message = str(exc)
        except Exception as exc:  # any driver / network / import failure
            reason = self._timed_out() or driver_reason(exc, url)
            message = f"{reason} ({url.render_as_string(hide_password=True)})"
        if message is not None:
            if engine is not None:
                engine.dispose()
            raise SourceConnectError(self._redact(message)) from None
        self._engine = engine

    def close(self) -> None:
        """Dispose of the engine and its pooled connections. Idempotent."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        """The engine, connecting first if needed."""
        self.connect()
        assert self._engine is not None
        return self._engine

    # ------------------------------------------------------------------ reads

    def rows(self, query: str, params: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Stream the rows of ``query`` as dicts keyed by the query's column labels.

        Rows are fetched ``yield_per`` at a time through a server-side cursor (PostgreSQL) or an
        unbuffered cursor (MySQL); nothing is fetched all at once. A label used twice keeps the later
        column's value. Nothing runs until the first row is asked for; closing the iterator early
        releases the connection.

        Raises :class:`SourceConnectError` if no connection can be made, :class:`SourceQueryError`
        if the query fails (also mid-stream) or returns no result set.
        """
        conn = self._checkout(self.engine)
        exhausted = False
        try:
            result = self._start_stream(conn, query, params)
            shape = RowShaper(list(map(str, result.keys())), json_columns(result, self._url))
            for partition in self._partitions(result):
                for row in partition:
                    yield shape(row)
            exhausted = True
        finally:
            if not exhausted and self.url.get_backend_name() in ("mysql", "mariadb"):
                # An unbuffered MySQL cursor drains every remaining row on close: drop the
                # connection instead so an abandoned stream stops at once.
                _abandon_mysql_stream(conn)
            # e.g. the server went away after the last row; closing a cursor is a round trip too
            with contextlib.suppress(Exception), self._guard():
                conn.close()

    def _start_stream(self, conn: Connection, query: str, params: Mapping[str, Any] | None) -> CursorResult[Any]:
        """Run ``query`` on a streaming cursor; :class:`SourceQueryError` if it fails or has no rows."""
        message: str | None = None
        result: CursorResult[Any] | None = None
        try:
            streaming = conn.execution_options(stream_results=True, yield_per=self.yield_per)
            with self._guard():
                result = _run(streaming, query, params)
        except Exception as exc:
            message = self._timed_out() or driver_reason(exc, self._url)
        if message is None and result is not None and not result.returns_rows:
            message = "the query does not return rows (a push query must be a SELECT)"
        if message is not None or result is None:
            raise SourceQueryError(self._redact(message or "the query failed")) from None
        return result

    def _partitions(self, result: CursorResult[Any]) -> Iterator[Sequence[Any]]:
        """The result's rows, ``yield_per`` per driver call on every backend (SQLite included) instead
        of one call per row. Only the fetch is timed (the watchdog is disarmed while the consumer
        works); a failed fetch is a :class:`SourceQueryError` (the consumer's errors never land here).
        """
        try:
            partitions = result.partitions(self.yield_per)
            while True:
                with self._guard():
                    partition = next(partitions, None)
                if partition is None:
                    return
                yield partition
        except Exception as exc:
            message = self._timed_out() or driver_reason(exc, self._url)
        raise SourceQueryError(self._redact(message)) from None

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run any statement in a transaction and commit; return its rows (``[]`` if none).

        For small reads and code configs' ``db.query``; use :meth:`rows` for large results.
        """

        def rows_of(result: CursorResult[Any]) -> list[dict[str, Any]]:
            if not result.returns_rows:
                return []
            shape = RowShaper(list(map(str, result.keys())), json_columns(result, self._url))
            return [shape(row) for row in result]

        return self._in_transaction(sql, params, rows_of)

    # ------------------------------------------------------------------ writes

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run a write in its own transaction and commit. Returns the affected row count (-1 unknown)."""
        return self._in_transaction(sql, params, lambda result: int(result.rowcount))

    def _in_transaction(self, sql: str, params: Mapping[str, Any] | None,
                        read: Callable[[CursorResult[Any]], T]) -> T:
        """Run one statement in its own committed transaction; any failure is a SourceQueryError."""
        message = ""
        conn = self._checkout(self.engine)
        try:
            with self._guard(), conn.begin():
                return read(_run(conn, sql, params))
        except Exception as exc:
            message = self._timed_out() or driver_reason(exc, self._url)
        finally:
            with self._guard():
                conn.close()
        raise SourceQueryError(self._redact(message)) from None

    # ------------------------------------------------------------------ internals

    def _checkout(self, engine: Engine) -> Connection:
        message: str | None = None
        try:
            with self._guard():  # the pool's pre-ping is a round trip too
                return engine.connect()
        except Exception as exc:
            reason = self._timed_out() or driver_reason(exc, self._url)
            message = f"{reason} ({self.url.render_as_string(hide_password=True)})"
        raise SourceConnectError(self._redact(message)) from None

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        """A deadline around one blocking driver call (PostgreSQL's watchdog; others time out alone)."""
        return self._watchdog.guard() if self._watchdog is not None else contextlib.nullcontext()

    def _timed_out(self) -> str | None:
        """Why the last call failed if the watchdog cut it off, else None."""
        return self._watchdog.expired(self.query_timeout) if self._watchdog is not None else None


# ---------------------------------------------------------------------- helpers


def _abandon_mysql_stream(conn: Connection) -> None:
    """Drop a connection whose unbuffered result was not read to the end.

    Closing it normally would read (and discard) every remaining row; closing the socket makes the
    server abort the query instead. PyMySQL's pending result is marked done first, or its finaliser
    would later try to drain it from the closed socket.
    """
    with contextlib.suppress(Exception):
        raw = conn.connection.dbapi_connection
        pending = getattr(raw, "_result", None)
        if pending is not None and getattr(pending, "unbuffered_active", False):
            pending.unbuffered_active = False
    with contextlib.suppress(Exception):
        conn.invalidate()


def _run(conn: Connection, sql: str, params: Mapping[str, Any] | None) -> CursorResult[Any]:
    if params:
        return conn.execute(text(sql), dict(params))
    # no_parameters: cursor.execute(sql) with no parameter collection, so "%" needs no escaping
    return conn.execution_options(no_parameters=True).exec_driver_sql(sql)

