"""SQL databases as a row source, on SQLAlchemy 2 (sqlite, PostgreSQL, MySQL/MariaDB, SQL Server).

* :func:`engine_url` turns a :class:`~fliplet_workers.config.model.Database` into a SQLAlchemy URL:
  ``database_url`` wins, else the driver and parts (built with ``URL.create`` so any character in a
  password is safe).
* :class:`SqlSource` connects (with a ``SELECT 1`` check), **streams** query rows as dicts
  (server-side cursor on PostgreSQL, unbuffered ``SSCursor`` on MySQL: memory stays flat whatever
  the row count), and runs writes for pull operations' actions.

Queries without parameters go to the driver verbatim, as the original agent sends them (``%``,
``'::'`` or ``':name'`` in literals are safe); queries with a ``params`` mapping use SQLAlchemy's
``:name`` placeholders.

Plain ``database_url`` schemes get the shipped drivers (:func:`with_shipped_driver`): ``postgresql://``
and ``postgres://`` → psycopg2, ``mysql://`` and ``mariadb://`` → PyMySQL, ``mssql://`` → pymssql.

Every wait on the database is bounded by ``query_timeout`` (:func:`connect_args`: connect, statement
and read timeouts, TCP keepalives; for PostgreSQL also :class:`_Watchdog`, since a frozen server
answers none of the server-side limits). An expired one is a :class:`SourceQueryError` (or
:class:`SourceConnectError` while connecting) saying so.

Errors: a failed connection raises :class:`SourceConnectError`, a failed query
:class:`SourceQueryError`, each carrying the database's own reason with every password redacted and
no chained driver exception (whose text or arguments could hold secrets).

Values are the drivers' Python types, which ``core.rows`` normalises: Decimal, float, int, str,
datetime (tz-aware for ``timestamptz``), date, time, bytes, UUID/str, dict/list for JSON. Two fixes
here: ``memoryview`` (PostgreSQL ``bytea``) becomes ``bytes``, and ``timedelta`` (MySQL ``TIME``,
PostgreSQL ``interval``) becomes a ``time`` when it is a time of day, else ``[-]H:MM:SS`` text as
MySQL prints it. MySQL ``JSON`` columns (text on the wire) are decoded to dict/list.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import sqlalchemy
from sqlalchemy import URL, make_url, text
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.exc import SQLAlchemyError, StatementError

from fliplet_workers.config.model import Database
from fliplet_workers.errors import SourceConnectError, SourceQueryError
from fliplet_workers.secrets import Secret, redact

T = TypeVar("T")

#: Rows fetched per round trip while streaming.
STREAM_BATCH = 1000
#: Seconds to wait for a connection, a statement or a fetch when the caller gives no ``query_timeout``
#: (the config's default is the same).
DEFAULT_QUERY_TIMEOUT = 300.0
#: Seconds the client-side watchdog waits beyond ``query_timeout`` before it drops a PostgreSQL
#: connection: a server that still answers reports its own ``statement_timeout`` first.
WATCHDOG_GRACE = 2.0
#: The ODBC driver named in ``mssql+pyodbc`` URLs built from parts (``database_native_odbc``).
ODBC_DRIVER = "ODBC Driver 18 for SQL Server"

_DIALECTS = {"postgres": "postgresql+psycopg2", "mysql": "mysql+pymysql"}

#: Plain ``database_url`` schemes and the shipped driver each one means. SQLAlchemy's own defaults
#: (psycopg2 for PostgreSQL but MySQLdb for MySQL, and no ``postgres`` at all) would need drivers the
#: package does not install; an explicit ``+driver`` is always kept.
_PLAIN_SCHEMES = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mssql": "mssql+pymssql",
}

#: pip package to install when a driver module is missing.
_DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
    "pymssql": "pymssql",
    "pyodbc": "pyodbc",
}

#: libpq drivers: their connections take ``connect_timeout``, ``options``, keepalives and
#: ``tcp_user_timeout``, and expose the socket (``fileno()``) to the watchdog.
_LIBPQ_DRIVERS = ("psycopg2", "psycopg", "psycopg2cffi")

#: MySQL's wire type code for JSON columns (``pymysql.constants.FIELD_TYPE.JSON``).
_MYSQL_JSON = 245

#: ``password=…`` / ``pwd=…`` pairs as connection strings print them.
_KV_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)(\{[^}]*\}|'[^']*'|\"[^\"]*\"|[^\s;,&)]+)")


def engine_url(db: Database, base_dir: str) -> URL:
    """The SQLAlchemy URL for ``db``. Relative SQLite paths are resolved against ``base_dir``.

    Raises ``ValueError`` (with a message free of secrets) when the settings cannot make a URL.
    """
    if db.url:
        try:
            url = make_url(_reveal(db.url))
        except Exception:
            raise ValueError(
                "database_url is not a valid SQLAlchemy URL (expected dialect+driver://user:password@host:port/name)"
            ) from None
        return _resolve_sqlite(with_shipped_driver(url), base_dir)

    if db.driver == "sqlite":
        if not db.name:
            raise ValueError("the sqlite driver needs database_name: the path of the database file")
        return _resolve_sqlite(URL.create("sqlite", database=db.name), base_dir)

    password = _reveal(db.password) if db.password is not None else None
    host = db.host or "localhost"
    username = db.username
    query: dict[str, str] = {}
    if db.driver in _DIALECTS:
        drivername = _DIALECTS[db.driver]
        if db.driver == "mysql":
            query["charset"] = "utf8mb4"
    elif db.driver == "mssql":
        if db.instance:
            host = f"{host}\\{db.instance}"
        if db.domain and username:
            username = f"{db.domain}\\{username}"
        if db.native_odbc:
            drivername = "mssql+pyodbc"
            query["driver"] = ODBC_DRIVER
            if db.encrypt is not None:
                query["Encrypt"] = "yes" if db.encrypt else "no"
        else:
            drivername = "mssql+pymssql"
            if db.encrypt is not None:
                query["encryption"] = "require" if db.encrypt else "off"
    else:
        raise ValueError(f"unknown database driver {db.driver!r}: use one of sqlite, postgres, mysql, mssql")
    return URL.create(
        drivername, username=username, password=password, host=host, port=db.port, database=db.name, query=query
    )


def with_shipped_driver(url: URL) -> URL:
    """``url`` with a plain scheme (``postgresql://``, ``mysql://``…) mapped to the driver this package
    installs (see ``_PLAIN_SCHEMES``); a URL naming its driver (``dialect+driver://``) is unchanged."""
    if "+" in url.drivername:
        return url
    drivername = _PLAIN_SCHEMES.get(url.drivername)
    return url.set(drivername=drivername) if drivername else url


def connect_args(url: URL, query_timeout: float = DEFAULT_QUERY_TIMEOUT) -> dict[str, Any]:
    """Driver keyword arguments that bound every wait on the database by ``query_timeout`` seconds.

    Why each: a connect timeout (a host that drops packets), a statement timeout (a query that never
    ends), a read timeout or TCP keepalives (a server or network that stops answering mid-fetch).
    SQLite's ``timeout`` is how long to wait for another writer's lock. A key the URL sets already is
    left to the URL. PostgreSQL has no client-side read timeout: :class:`_Watchdog` is that.
    """
    seconds = max(1, math.ceil(query_timeout))
    backend, driver = url.get_backend_name(), url.get_driver_name()
    args: dict[str, Any] = {}
    if backend == "sqlite":
        args = {"timeout": float(query_timeout)}
    elif backend == "postgresql" and driver in _LIBPQ_DRIVERS:
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


class _Watchdog:
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
        self._watchdog: _Watchdog | None = None
        self._engine: Engine | None = None
        self._url: URL | None = None
        self._secrets = _secret_values(db)

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
        if url.get_backend_name() == "postgresql" and url.get_driver_name() in _LIBPQ_DRIVERS:
            self._watchdog = _Watchdog(self.query_timeout + WATCHDOG_GRACE)
        try:
            _check_sqlite_file(url)
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
        except _SqliteFileMissing as exc:
            message = str(exc)
        except Exception as exc:  # any driver / network / import failure
            reason = self._timed_out() or _reason(exc, url)
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
        engine = self.engine
        conn = self._checkout(engine)
        exhausted = False
        try:
            message: str | None = None
            result: CursorResult[Any] | None = None
            try:
                streaming = conn.execution_options(stream_results=True, yield_per=self.yield_per)
                with self._guard():
                    result = _run(streaming, query, params)
            except Exception as exc:
                message = self._timed_out() or _reason(exc, self._url)
            if message is None and result is not None and not result.returns_rows:
                message = "the query does not return rows (a push query must be a SELECT)"
            if message is not None or result is None:
                raise SourceQueryError(self._redact(message or "the query failed")) from None

            shape = _RowShaper(list(map(str, result.keys())), _json_columns(result, self._url))
            try:
                # partitions() fetches ``yield_per`` rows per driver call on every backend (SQLite
                # included), instead of one call per row.
                # Only the fetch is timed (the watchdog is disarmed while the consumer works).
                partitions = result.partitions(self.yield_per)
                while True:
                    with self._guard():
                        partition = next(partitions, None)
                    if partition is None:
                        break
                    for row in partition:
                        yield shape(row)
                exhausted = True
            except Exception as exc:  # a failure while fetching (the consumer's errors never land here)
                message = self._timed_out() or _reason(exc, self._url)
            if message is not None:
                raise SourceQueryError(self._redact(message)) from None
        finally:
            if not exhausted and self.url.get_backend_name() in ("mysql", "mariadb"):
                # An unbuffered MySQL cursor drains every remaining row on close: drop the
                # connection instead so an abandoned stream stops at once.
                _abandon_mysql_stream(conn)
            # e.g. the server went away after the last row; closing a cursor is a round trip too
            with contextlib.suppress(Exception), self._guard():
                conn.close()

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run any statement in a transaction and commit; return its rows (``[]`` if none).

        For small reads and code configs' ``db.query``; use :meth:`rows` for large results.
        """

        def rows_of(result: CursorResult[Any]) -> list[dict[str, Any]]:
            if not result.returns_rows:
                return []
            shape = _RowShaper(list(map(str, result.keys())), _json_columns(result, self._url))
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
            message = self._timed_out() or _reason(exc, self._url)
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
            reason = self._timed_out() or _reason(exc, self._url)
            message = f"{reason} ({self.url.render_as_string(hide_password=True)})"
        raise SourceConnectError(self._redact(message)) from None

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        """A deadline around one blocking driver call (PostgreSQL's watchdog; others time out alone)."""
        return self._watchdog.guard() if self._watchdog is not None else contextlib.nullcontext()

    def _timed_out(self) -> str | None:
        """Why the last call failed if the watchdog cut it off, else None."""
        return self._watchdog.expired(self.query_timeout) if self._watchdog is not None else None

    def _redact(self, text_: str) -> str:
        """``secrets.redact`` plus this database's own password(s), however short, and key=value pairs."""
        out = redact(text_)
        for value in self._secrets:
            if len(value) >= 4:
                out = out.replace(value, "***")
            else:  # a very short password: only where it stands alone, not inside other words
                out = re.sub(rf"(?<![\w]){re.escape(value)}(?![\w])", "***", out)
        return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)


# ---------------------------------------------------------------------- helpers


class _SqliteFileMissing(Exception):
    pass


def _reveal(value: str) -> str:
    return value.reveal() if isinstance(value, Secret) else str(value)


def _resolve_sqlite(url: URL, base_dir: str) -> URL:
    """Resolve a relative SQLite path against ``base_dir`` (the config file's folder)."""
    if url.get_backend_name() != "sqlite":
        return url
    name = url.database or ""
    if not name or name == ":memory:" or name.startswith("file:") or url.query.get("uri"):
        return url
    path = os.path.expanduser(name)
    if not os.path.isabs(path):
        path = os.path.join(os.path.abspath(base_dir), path)
    return url.set(database=os.path.normpath(path))


def _check_sqlite_file(url: URL) -> None:
    """SQLite would silently create a missing file (then fail on "no such table"): say so instead."""
    if url.get_backend_name() != "sqlite":
        return
    name = url.database or ""
    if not name or name == ":memory:" or name.startswith("file:") or url.query.get("uri"):
        return
    if not os.path.isfile(name):
        raise _SqliteFileMissing(f"SQLite database file not found: {name}")


def _secret_values(db: Database) -> list[str]:
    """Every form in which this database's passwords could show up in a driver's message."""
    values: set[str] = set()
    if db.password:
        values.add(_reveal(db.password))
    if db.url:
        raw = _reveal(db.url)
        try:
            password = make_url(raw).password
        except Exception:
            values.add(raw)  # a URL that does not parse: hide the whole thing
        else:
            if password:
                values.add(str(password))
    for value in list(values):
        values.update({quote(value, safe=""), quote_plus(value)})
    return sorted((v for v in values if v), key=len, reverse=True)


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _reason(exc: BaseException, url: URL | None) -> str:
    """The database's own words for ``exc`` (not SQLAlchemy's wrapper with SQL and parameters)."""
    source: BaseException = exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, BaseException):
        source = exc.orig
    if isinstance(source, ImportError):
        module = (source.name or "").split(".")[0]
        package = _DRIVER_PACKAGES.get(module, module or "the driver")
        dialect = url.drivername if url is not None else "this database"
        return f"the Python driver for {dialect} is not installed ({source}): pip install {package}"
    args: tuple[Any, ...] = tuple(getattr(source, "args", ()))
    if len(args) == 1 and isinstance(args[0], tuple):  # pymssql wraps (code, message) once more
        args = args[0]
    diag = getattr(source, "diag", None)  # psycopg2: the server's message without our DECLARE wrapper
    primary = getattr(diag, "message_primary", None)
    if primary:
        detail, hint = getattr(diag, "message_detail", None), getattr(diag, "message_hint", None)
        text_ = str(primary) + (f" ({detail})" if detail else "") + (f" (hint: {hint})" if hint else "")
    elif len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str | bytes):
        # PyMySQL / pymssql: (error code, message)
        lines = dict.fromkeys(line.strip() for line in _text(args[1]).splitlines() if line.strip())
        text_ = f"{' '.join(lines)} (error {args[0]})"  # FreeTDS repeats its lines: keep each once
    elif isinstance(source, SQLAlchemyError):
        text_ = _text(args[0]) if args else ""  # str() would add SQLAlchemy's "background" link
    else:
        text_ = str(source)
    text_ = re.sub(r"\s*\n\s*", " ", text_.strip())  # one line, for the log table
    return text_ or type(source).__name__


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


def _json_columns(result: CursorResult[Any], url: URL | None) -> frozenset[int]:
    """Positions of MySQL JSON columns, which PyMySQL hands over as text."""
    if url is None or url.get_backend_name() not in ("mysql", "mariadb"):
        return frozenset()
    description = getattr(result.cursor, "description", None) or ()
    return frozenset(i for i, col in enumerate(description) if len(col) > 1 and col[1] == _MYSQL_JSON)


_NEEDS_FIX = (memoryview, bytearray, dt.timedelta)


class _RowShaper:
    """Turns driver rows into dicts, converting what the core cannot take as is (buffers, durations,
    MySQL JSON text).

    Why a class: a column's non-null values always have the same Python type, so which columns need
    converting is learnt from the first non-null value of each; every other row then takes the fast
    path, a plain ``dict(zip(...))`` (a million rows read about twice as fast).
    """

    def __init__(self, keys: list[str], json_columns: frozenset[int]) -> None:
        self.keys = keys
        self.json_columns = json_columns
        self.convert = bool(json_columns)
        self.unknown = set(range(len(keys))) - set(json_columns)

    def __call__(self, row: Any) -> dict[str, Any]:
        if self.unknown:
            self._learn(row)
        if not self.convert:
            return dict(zip(self.keys, row, strict=True))
        return _row_dict(self.keys, row, self.json_columns)

    def _learn(self, row: Any) -> None:
        for index in list(self.unknown):
            value = row[index]
            if value is not None:
                self.unknown.discard(index)
                self.convert = self.convert or isinstance(value, _NEEDS_FIX)


def _row_dict(keys: list[str], row: Any, json_columns: frozenset[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (key, value) in enumerate(zip(keys, row, strict=True)):
        if isinstance(value, memoryview | bytearray):
            value = bytes(value)
        elif isinstance(value, dt.timedelta):
            value = _time_of(value)
        elif i in json_columns and isinstance(value, str | bytes):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[key] = value
    return out


def _time_of(value: dt.timedelta) -> dt.time | str:
    """A duration as a time of day when it is one, else MySQL's ``[-]H:MM:SS[.ffffff]`` text."""
    if dt.timedelta(0) <= value < dt.timedelta(days=1):
        return (dt.datetime.min + value).time()
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.days * 86400 + value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    frac = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}{frac}"
