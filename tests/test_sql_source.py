"""SqlSource and engine_url against SQLite (temp file), a real PostgreSQL and a real MariaDB.

The servers come from the session fixtures in conftest.py (tests/servers.py). Every test that
writes uses its own table names, since the servers are shared by the whole session.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import sys
import threading
import time
import traceback
import tracemalloc
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg2
import pymysql
import pytest
from servers import DbParams, free_port
from sqlalchemy import make_url
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import OperationalError

from fliplet_workers.config.model import Database
from fliplet_workers.errors import SourceConnectError, SourceQueryError
from fliplet_workers.redaction import Secret
from fliplet_workers.sources import sql as sql_module
from fliplet_workers.sources.sql import ODBC_DRIVER, SqlSource, connect_args, engine_url

STREAM_ROWS = 50_000
PAYLOAD = 200  # characters per streamed row: 50k rows ≈ 10 MB of text, ~25 MB as Python dicts
#: Peak Python memory allowed while streaming 50k rows: a fraction of the materialised result.
STREAM_PEAK_LIMIT = 5 * 1024 * 1024


def database(params: DbParams, **changes: Any) -> Database:
    fields: dict[str, Any] = {
        "driver": params.driver, "host": params.host, "port": params.port, "name": params.dbname,
        "username": params.user, "password": Secret(params.password),
    }
    fields.update(changes)
    return Database(**fields)


def error_texts(exc: BaseException) -> str:
    """Everything a log could show of an exception: str, repr, full traceback with causes."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


def assert_secret_free(exc: BaseException, *secrets: str) -> None:
    texts = error_texts(exc)
    for secret in secrets:
        assert secret not in texts
    # no chained driver exception (its args may hold secrets even when its text is clean)
    assert exc.__cause__ is None
    assert exc.__context__ is None


def peak_while(iterator: Iterator[dict[str, Any]]) -> tuple[int, int]:
    """Consume ``iterator`` without keeping rows; return (row count, peak traced bytes)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        count = 0
        for _row in iterator:
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


# ------------------------------------------------------------------------------------ engine_url


class TestEngineUrl:
    PASSWORD = "p@ss:w/rd?#%;{}"

    def test_postgres_parts_with_special_password(self) -> None:
        db = Database(driver="postgres", host="db.example.com", port=5433, name="crm",
                      username="sync", password=Secret(self.PASSWORD))
        url = engine_url(db, ".")
        assert url.drivername == "postgresql+psycopg2"
        assert (url.host, url.port, url.database, url.username) == ("db.example.com", 5433, "crm", "sync")
        assert url.password == self.PASSWORD
        rendered = url.render_as_string(hide_password=False)
        assert self.PASSWORD not in rendered  # percent-encoded in the string form...
        assert make_url(rendered).password == self.PASSWORD  # ...and decoded back intact
        assert self.PASSWORD not in repr(url)

    def test_missing_host_defaults_to_localhost_tcp(self) -> None:
        url = engine_url(Database(driver="postgres", name="crm", username="u"), ".")
        assert url.host == "localhost"
        assert url.port is None and url.password is None

    def test_mysql_uses_pymysql_and_utf8mb4(self) -> None:
        db = Database(driver="mysql", host="h", port=3306, name="shop", username="u", password=Secret("a@b:c/d"))
        url = engine_url(db, ".")
        assert url.drivername == "mysql+pymysql"
        assert url.query == {"charset": "utf8mb4"}
        assert url.password == "a@b:c/d"

    def test_mssql_pymssql_instance_domain_encrypt(self) -> None:
        db = Database(driver="mssql", host="sql.corp", port=1433, name="eu", username="sampleuser",
                      password=Secret(self.PASSWORD), domain="CORP", instance="SQLEXPRESS", encrypt=True)
        url = engine_url(db, ".")
        assert url.drivername == "mssql+pymssql"
        assert url.host == "sql.corp\\SQLEXPRESS"
        assert url.username == "CORP\\sampleuser"
        assert url.query == {"encryption": "require"}
        _, kwargs = url.get_dialect()().create_connect_args(url)
        assert kwargs["host"] == "sql.corp\\SQLEXPRESS:1433"
        assert kwargs["user"] == "CORP\\sampleuser"
        assert kwargs["password"] == self.PASSWORD
        assert kwargs["encryption"] == "require"
        assert engine_url(Database(driver="mssql", host="h", encrypt=False), ".").query == {"encryption": "off"}
        assert engine_url(Database(driver="mssql", host="h"), ".").query == {}

    def test_mssql_native_odbc(self) -> None:
        db = Database(driver="mssql", host="sql.corp", port=1433, name="eu", username="sampleuser",
                      password=Secret("pw;x}y"), domain="CORP", instance="INST", encrypt=False, native_odbc=True)
        url = engine_url(db, ".")
        assert url.drivername == "mssql+pyodbc"
        assert url.query == {"driver": ODBC_DRIVER, "Encrypt": "no"}
        (connection_string,), _ = url.get_dialect()().create_connect_args(url)
        parts = connection_string.split(";")
        assert f"DRIVER={{{ODBC_DRIVER}}}" in parts
        assert "Server=sql.corp\\INST,1433" in parts
        assert "UID=CORP\\sampleuser" in parts
        assert "Encrypt=no" in parts
        assert "PWD={pw;x}}y}" in connection_string  # ODBC-escaped, so ";" cannot end the value

    def test_sqlite_paths(self, tmp_path: Any) -> None:
        relative = engine_url(Database(driver="sqlite", name="data/app.db"), str(tmp_path))
        assert relative.drivername == "sqlite"
        assert relative.database == str(tmp_path / "data" / "app.db")
        absolute = engine_url(Database(driver="sqlite", name="/srv/app.db"), str(tmp_path))
        assert absolute.database == "/srv/app.db"
        assert engine_url(Database(driver="sqlite", name=":memory:"), str(tmp_path)).database == ":memory:"
        from_url = engine_url(Database(driver="sqlite", url=Secret("sqlite:///rel.db")), str(tmp_path))
        assert from_url.database == str(tmp_path / "rel.db")
        with pytest.raises(ValueError, match="database_name"):
            engine_url(Database(driver="sqlite"), str(tmp_path))

    def test_url_wins_over_parts(self) -> None:
        db = Database(driver="mysql", host="ignored", port=1, name="ignored",
                      url=Secret("postgresql+psycopg2://u:p%40ss@real-host:6543/real"))
        url = engine_url(db, ".")
        assert (url.drivername, url.host, url.port, url.database) == ("postgresql+psycopg2", "real-host", 6543, "real")
        assert url.password == "p@ss"

    def test_invalid_url_hides_itself(self) -> None:
        secret_url = "this is not a url with hunter2hunter2"
        db = Database(driver="postgres", url=Secret(secret_url))
        with pytest.raises(ValueError) as info:
            engine_url(db, ".")
        assert "hunter2hunter2" not in str(info.value)
        with pytest.raises(SourceConnectError) as connect_info:
            SqlSource(db).connect()
        assert_secret_free(connect_info.value, "hunter2hunter2")

    def test_timeouts_follow_query_timeout(self) -> None:
        def args(**kw: Any) -> dict[str, Any]:
            return connect_args(engine_url(Database(host="h", name="d", **kw), "."), 7)

        assert args(driver="postgres") == {
            "connect_timeout": 7, "options": "-c statement_timeout=7000", "keepalives": 1,
            "keepalives_idle": 2, "keepalives_interval": 2, "keepalives_count": 3, "tcp_user_timeout": 7000,
        }
        assert args(driver="mysql") == {"connect_timeout": 7, "read_timeout": 7, "write_timeout": 7}
        assert args(driver="mssql") == {"login_timeout": 7, "timeout": 7}
        assert args(driver="mssql", native_odbc=True) == {"timeout": 7}
        assert args(driver="sqlite") == {"timeout": 7.0}
        # the default is the config's default, 300 s; a fraction rounds up; libpq's minimum is 2
        assert connect_args(make_url("mysql+pymysql://u@h/d"))["read_timeout"] == 300
        assert connect_args(make_url("postgresql+psycopg2://u@h/d"), 0.5)["connect_timeout"] == 2
        assert connect_args(make_url("mssql+pymssql://u@h/d"), 2.5)["timeout"] == 3
        # a value the user put in the URL is kept
        assert "connect_timeout" not in connect_args(make_url("postgresql+psycopg2://u@h/d?connect_timeout=3"))

    @pytest.mark.parametrize(("plain", "driver"), [
        ("postgresql://u:p@h/d", "postgresql+psycopg2"),
        ("postgres://u:p@h/d", "postgresql+psycopg2"),
        ("mysql://u:p@h/d", "mysql+pymysql"),
        ("mariadb://u:p@h/d", "mariadb+pymysql"),
        ("mssql://u:p@h/d", "mssql+pymssql"),
        ("postgresql+psycopg://u:p@h/d", "postgresql+psycopg"),  # an explicit driver is kept
        ("mysql+mysqldb://u:p@h/d", "mysql+mysqldb"),
        ("sqlite:///x.db", "sqlite"),
    ])
    def test_plain_urls_use_the_shipped_drivers(self, plain: str, driver: str) -> None:
        url = engine_url(Database(driver="postgres", url=Secret(plain)), ".")
        assert url.drivername == driver
        url.get_dialect()  # the dialect loads (its driver module is imported only on connect)


# ---------------------------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_db(tmp_path: Any) -> tuple[Database, str]:
    """A SQLite file ``data.db`` in ``tmp_path`` (the "config folder"), named relatively."""
    conn = sqlite3.connect(tmp_path / "data.db")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, score REAL, avatar BLOB, note TEXT)")
    conn.executemany(
        "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
        [(1, "a@example.com", 1.5, b"\x00\xff", None), (2, "b%@example.com", 2.0, None, ":abc")],
    )
    conn.commit()
    conn.close()
    return Database(driver="sqlite", name="data.db"), str(tmp_path)


class TestSqlite:
    def test_rows_as_dicts_with_python_types(self, sqlite_db: tuple[Database, str]) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            rows = list(source.rows("SELECT id, email AS Email, score, avatar, note FROM users ORDER BY id"))
        assert rows == [
            {"id": 1, "Email": "a@example.com", "score": 1.5, "avatar": b"\x00\xff", "note": None},
            {"id": 2, "Email": "b%@example.com", "score": 2.0, "avatar": None, "note": ":abc"},
        ]
        assert type(rows[0]["avatar"]) is bytes

    def test_query_text_is_sent_verbatim(self, sqlite_db: tuple[Database, str]) -> None:
        """No parameters: "%", "::" and ":name" inside literals reach the database untouched."""
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            rows = list(source.rows("SELECT id, ':x' AS lit FROM users WHERE email LIKE 'b%' AND note = ':abc';"))
        assert rows == [{"id": 2, "lit": ":x"}]

    def test_named_params(self, sqlite_db: tuple[Database, str]) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            assert [r["id"] for r in source.rows("SELECT id FROM users WHERE score > :min", {"min": 1.6})] == [2]
            assert source.query("SELECT email FROM users WHERE id = :id", {"id": 1}) == [{"email": "a@example.com"}]

    def test_duplicate_labels_later_wins(self, sqlite_db: tuple[Database, str]) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            rows = list(source.rows("SELECT id, email, 'other' AS email FROM users WHERE id = 1"))
        assert rows == [{"id": 1, "email": "other"}]

    def test_execute_commits(self, sqlite_db: tuple[Database, str], tmp_path: Any) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            assert source.execute("UPDATE users SET note = :n WHERE id = :id", {"n": "synced", "id": 1}) == 1
            assert source.query("INSERT INTO users (id, email) VALUES (3, 'c@example.com')") == []
        # visible to another connection: committed
        conn = sqlite3.connect(tmp_path / "data.db")
        assert conn.execute("SELECT note FROM users WHERE id = 1").fetchone() == ("synced",)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (3,)
        conn.close()

    def test_failed_write_rolls_back(self, sqlite_db: tuple[Database, str], tmp_path: Any) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source, pytest.raises(SourceQueryError, match="UNIQUE constraint"):
            source.query("INSERT INTO users (id, email) VALUES (10, 'x'), (1, 'duplicate')")
        conn = sqlite3.connect(tmp_path / "data.db")
        assert conn.execute("SELECT count(*) FROM users WHERE id = 10").fetchone() == (0,)
        conn.close()

    def test_a_lock_held_longer_than_query_timeout_fails_the_statement(self, sqlite_db: tuple[Database, str],
                                                                       tmp_path: Any) -> None:
        db, base = sqlite_db
        holder = sqlite3.connect(tmp_path / "data.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer that never lets go
        try:
            with SqlSource(db, base, query_timeout=0.5) as source:
                started = time.monotonic()
                with pytest.raises(SourceQueryError, match="database is locked"):
                    source.execute("UPDATE users SET note = 'x'")
                assert 0.4 < time.monotonic() - started < 5  # waited for the lock, then gave up
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    def test_missing_file_is_not_created(self, tmp_path: Any) -> None:
        source = SqlSource(Database(driver="sqlite", name="nope.db"), str(tmp_path))
        with pytest.raises(SourceConnectError, match="SQLite database file not found") as info:
            source.connect()
        assert str(tmp_path / "nope.db") in str(info.value)
        assert not (tmp_path / "nope.db").exists()

    def test_bad_sql(self, sqlite_db: tuple[Database, str]) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            with pytest.raises(SourceQueryError, match="no such table: nope") as info:
                list(source.rows("SELECT * FROM nope"))
            assert "[SQL:" not in str(info.value)  # the database's words, not SQLAlchemy's wrapper
            assert info.value.__context__ is None
            with pytest.raises(SourceQueryError, match="does not return rows"):
                list(source.rows("UPDATE users SET note = 'x' WHERE id = 0"))
            with pytest.raises(SourceQueryError, match="no such column"):
                source.execute("UPDATE users SET nope = 1")

    def test_streams_50k_rows(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "big.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT)")
        conn.executemany("INSERT INTO big VALUES (?, ?)", ((i, f"{i:08d}" * (PAYLOAD // 8)) for i in range(STREAM_ROWS)))
        conn.commit()
        conn.close()

        def no_fetchall(*_a: Any, **_k: Any) -> Any:
            raise AssertionError("rows() must not fetch everything at once")

        monkeypatch.setattr(CursorResult, "fetchall", no_fetchall)
        monkeypatch.setattr(CursorResult, "all", no_fetchall)
        with SqlSource(Database(driver="sqlite", name=str(path)), str(tmp_path), yield_per=500) as source:
            rows = source.rows("SELECT id, payload FROM big ORDER BY id")
            assert isinstance(rows, Iterator)
            assert next(rows) == {"id": 0, "payload": "00000000" * 25}
            count, peak = peak_while(rows)
        assert count == STREAM_ROWS - 1
        assert peak < STREAM_PEAK_LIMIT, f"peak {peak} bytes while streaming"

    def test_abandoned_stream_returns_its_connection(self, sqlite_db: tuple[Database, str]) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            rows = source.rows("SELECT id FROM users ORDER BY id")
            assert next(rows) == {"id": 1}
            assert source.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
            rows.close()
            assert source.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def test_nothing_runs_until_iterated(self, sqlite_db: tuple[Database, str]) -> None:
        db, base = sqlite_db
        with SqlSource(db, base) as source:
            rows = source.rows("SELECT * FROM nope")  # no error yet
            with pytest.raises(SourceQueryError):
                next(rows)

    def test_driver_text_with_password_is_redacted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Even a driver that echoes the password (or a connection string) leaks nothing."""
        password = "Tr0ub4dor&3"

        def failing_engine(*_a: Any, **_k: Any) -> Any:
            orig = Exception(f"login failed: password '{password}' rejected; dsn host=h pwd={{other}} user=u")
            raise OperationalError("SELECT 1", {}, orig)

        monkeypatch.setattr(sql_module.sqlalchemy, "create_engine", failing_engine)
        db = Database(driver="postgres", host="h", username="u", password=Secret(password))
        with pytest.raises(SourceConnectError) as info:
            SqlSource(db).connect()
        assert_secret_free(info.value, password, "{other}")
        assert "login failed" in str(info.value)
        assert "pwd=***" in str(info.value)

    def test_missing_driver_module_says_what_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "pyodbc", None)
        db = Database(driver="mssql", host="127.0.0.1", port=free_port(), username="u",
                      password=Secret("odbc-secret"), native_odbc=True)
        with pytest.raises(SourceConnectError, match="pip install pyodbc") as info:
            SqlSource(db).connect()
        assert_secret_free(info.value, "odbc-secret")


# ------------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="module")
def pg_tables(postgres_params: DbParams) -> DbParams:
    conn = psycopg2.connect(host=postgres_params.host, port=postgres_params.port, user=postgres_params.user,
                            password=postgres_params.password, dbname=postgres_params.dbname)
    with conn, conn.cursor() as cur:
        cur.execute("""
            DROP TABLE IF EXISTS sql_source_types, sql_source_big;
            CREATE TABLE sql_source_types (
                id integer PRIMARY KEY, name text, price numeric(10, 2), created timestamptz,
                local_ts timestamp, day date, raw bytea, ref uuid, doc jsonb, active boolean, at time,
                big bigint, ratio double precision
            );
            INSERT INTO sql_source_types VALUES
                (1, 'Ada', 12.50, '2024-03-01 10:00:00+02', '2024-03-01 10:00:00', '2024-03-01', '\\x00ff10',
                 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"tags": ["x"], "n": 1}', true, '08:30:00',
                 9007199254740993, 0.25),
                (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
            CREATE TABLE sql_source_big AS
                SELECT g AS id, repeat(md5(g::text), 7) AS payload FROM generate_series(1, 50000) AS g;
        """)
    conn.close()
    return postgres_params


class TestPostgres:
    def test_types(self, pg_tables: DbParams) -> None:
        with SqlSource(database(pg_tables)) as source:
            rows = list(source.rows("SELECT * FROM sql_source_types ORDER BY id"))
        first, second = rows
        assert first == {
            "id": 1, "name": "Ada", "price": Decimal("12.50"),
            "created": dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC),
            "local_ts": dt.datetime(2024, 3, 1, 10, 0), "day": dt.date(2024, 3, 1), "raw": b"\x00\xff\x10",
            "ref": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "doc": {"tags": ["x"], "n": 1},
            "active": True, "at": dt.time(8, 30), "big": 9007199254740993, "ratio": 0.25,
        }
        assert first["created"].utcoffset() == dt.timedelta(0)  # tz-aware, not naive
        assert first["local_ts"].tzinfo is None
        assert type(first["raw"]) is bytes  # not psycopg2's memoryview
        assert type(first["price"]) is Decimal
        assert set(second.values()) == {2, None}

    def test_labels_params_and_literals(self, pg_tables: DbParams) -> None:
        with SqlSource(database(pg_tables)) as source:
            rows = list(source.rows(
                """SELECT id, name AS "Full Name", 'x'::text AS name, ':lit' AS lit, '50%' AS pct,
                          interval '3 days 2 hours' AS span, 7 AS id
                   FROM sql_source_types WHERE id = 1;"""
            ))
            assert rows == [{"id": 7, "Full Name": "Ada", "name": "x", "lit": ":lit", "pct": "50%", "span": "74:00:00"}]
            assert source.query("SELECT name FROM sql_source_types WHERE id = :id", {"id": 1}) == [{"name": "Ada"}]

    def test_streams_through_a_server_side_cursor(self, pg_tables: DbParams) -> None:
        """While rows are being read, the backend is FETCHing from a named cursor, at most yield_per
        rows at a time, and Python memory stays far below the result's size."""
        watcher = psycopg2.connect(host=pg_tables.host, port=pg_tables.port, user=pg_tables.user,
                                   password=pg_tables.password, dbname=pg_tables.dbname)
        watcher.autocommit = True

        def backend_activity() -> list[tuple[str, str]]:
            with watcher.cursor() as cur:
                cur.execute(
                    "SELECT state, query FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend'",
                    (pg_tables.dbname,),
                )
                return cur.fetchall()

        try:
            with SqlSource(database(pg_tables), yield_per=1000) as source:
                rows = source.rows("SELECT id, payload FROM sql_source_big ORDER BY id")
                assert isinstance(rows, Iterator)
                assert next(rows)["id"] == 1
                for _ in range(9_999):
                    next(rows)
                activity = backend_activity()
                fetching = [a for a in activity if re.fullmatch(r'FETCH FORWARD 1000 FROM "c_\w+"', a[1])]
                assert fetching, f"no FETCH from a server-side cursor in pg_stat_activity: {activity}"
                assert fetching[0][0] == "idle in transaction"
                count, peak = peak_while(rows)
        finally:
            watcher.close()
        assert count == STREAM_ROWS - 10_000
        assert peak < STREAM_PEAK_LIMIT, f"peak {peak} bytes while streaming"

    def test_url_with_special_password(self, pg_tables: DbParams, postgres_url: str) -> None:
        assert "%40" in postgres_url  # the fixture's password really has URL-special characters
        with SqlSource(Database(driver="postgres", url=Secret(postgres_url))) as source:
            assert source.query("SELECT current_user AS who") == [{"who": pg_tables.user}]

    def test_wrong_password(self, pg_tables: DbParams) -> None:
        wrong = "Wr0ng-" + pg_tables.password
        with pytest.raises(SourceConnectError, match="password authentication failed") as info:
            SqlSource(database(pg_tables, password=Secret(wrong))).connect()
        assert_secret_free(info.value, wrong, pg_tables.password)
        assert "***" in str(info.value)  # the URL is shown, its password masked

    def test_wrong_password_in_url(self, pg_tables: DbParams) -> None:
        url = f"postgresql+psycopg2://{pg_tables.user}:N0pe%40pass@127.0.0.1:{pg_tables.port}/{pg_tables.dbname}"
        with pytest.raises(SourceConnectError, match="password authentication failed") as info:
            SqlSource(Database(driver="postgres", url=Secret(url))).connect()
        assert_secret_free(info.value, "N0pe@pass", "N0pe%40pass")

    def test_unreachable_port(self, pg_tables: DbParams) -> None:
        port = free_port()
        started = time.monotonic()
        with pytest.raises(SourceConnectError, match="Connection refused") as info:
            SqlSource(database(pg_tables, port=port)).connect()
        assert time.monotonic() - started < 15
        assert f":{port}/" in str(info.value)
        assert_secret_free(info.value, pg_tables.password)

    def test_bad_sql(self, pg_tables: DbParams) -> None:
        with SqlSource(database(pg_tables)) as source:
            with pytest.raises(SourceQueryError) as info:
                list(source.rows("SELECT nope FROM sql_source_types"))
            assert str(info.value).startswith('column "nope" does not exist (hint: Perhaps you meant')
            assert "DECLARE" not in str(info.value)  # our server-side cursor wrapper stays hidden
            assert info.value.__context__ is None
            # the source stays usable after a failed query
            assert source.query("SELECT count(*) AS n FROM sql_source_types") == [{"n": 2}]

    def test_execute_commits(self, pg_tables: DbParams) -> None:
        with SqlSource(database(pg_tables)) as source:
            source.execute("CREATE TABLE IF NOT EXISTS sql_source_writes (id int, note text)")
            assert source.execute("INSERT INTO sql_source_writes VALUES (:id, :note)", {"id": 1, "note": "a%"}) == 1
        conn = psycopg2.connect(host=pg_tables.host, port=pg_tables.port, user=pg_tables.user,
                                password=pg_tables.password, dbname=pg_tables.dbname)
        with conn.cursor() as cur:
            cur.execute("SELECT id, note FROM sql_source_writes")
            assert cur.fetchall() == [(1, "a%")]
        conn.close()


# --------------------------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="module")
def maria_tables(mariadb_params: DbParams) -> DbParams:
    conn = pymysql.connect(host=mariadb_params.host, port=mariadb_params.port, user=mariadb_params.user,
                           password=mariadb_params.password, database=mariadb_params.dbname, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS sql_source_types")
        cur.execute("""
            CREATE TABLE sql_source_types (
                id INT PRIMARY KEY, name VARCHAR(50), price DECIMAL(10, 2), created DATETIME(3), day DATE,
                raw VARBINARY(8), photo BLOB, at TIME, doc JSON, flag TINYINT(1), emoji VARCHAR(10)
            )
        """)
        cur.execute("""
            INSERT INTO sql_source_types VALUES
                (1, 'Ada', 12.50, '2024-03-01 10:00:00.123', '2024-03-01', x'00ff10', x'cafe', '08:30:00',
                 '{"tags": ["x"]}', 1, '🙂'),
                (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
        """)
    conn.close()
    return mariadb_params


class TestMariaDB:
    def test_types(self, maria_tables: DbParams) -> None:
        with SqlSource(database(maria_tables)) as source:
            first, second = source.rows("SELECT * FROM sql_source_types ORDER BY id")
        assert first == {
            "id": 1, "name": "Ada", "price": Decimal("12.50"), "created": dt.datetime(2024, 3, 1, 10, 0, 0, 123000),
            "day": dt.date(2024, 3, 1), "raw": b"\x00\xff\x10", "photo": b"\xca\xfe", "at": dt.time(8, 30),
            # MariaDB's JSON is LONGTEXT on the wire: it stays text (MySQL's JSON type is decoded)
            "doc": '{"tags": ["x"]}', "flag": 1, "emoji": "🙂",
        }
        assert set(second.values()) == {2, None}

    def test_labels_params_and_literals(self, maria_tables: DbParams) -> None:
        with SqlSource(database(maria_tables)) as source:
            rows = list(source.rows(
                "SELECT id, name AS `Full Name`, 'x' AS name, ':lit' AS lit, 7 AS id, TIME('30:00:01') AS span "
                "FROM sql_source_types WHERE name LIKE 'A%';"
            ))
            assert rows == [{"id": 7, "Full Name": "Ada", "name": "x", "lit": ":lit", "span": "30:00:01"}]
            assert source.query("SELECT name FROM sql_source_types WHERE id = :id", {"id": 1}) == [{"name": "Ada"}]

    def test_streams_with_an_unbuffered_cursor(self, maria_tables: DbParams) -> None:
        """While rows are being read, the server is still sending the SELECT (a buffered client would
        have read it all), and Python memory stays far below the result's size."""
        query = f"SELECT seq AS id, REPEAT('x', {PAYLOAD}) AS payload FROM seq_1_to_{STREAM_ROWS}"
        with SqlSource(database(maria_tables), yield_per=1000) as source:
            rows = source.rows(query)
            assert isinstance(rows, Iterator)
            assert next(rows) == {"id": 1, "payload": "x" * PAYLOAD}
            running = source.query(
                "SELECT command FROM information_schema.processlist WHERE info = :q AND id <> connection_id()",
                {"q": query},
            )
            assert running == [{"command": "Query"}]
            count, peak = peak_while(rows)
        assert count == STREAM_ROWS - 1
        assert peak < STREAM_PEAK_LIMIT, f"peak {peak} bytes while streaming"

    def test_abandoned_stream_stops_at_once(self, maria_tables: DbParams) -> None:
        with SqlSource(database(maria_tables)) as source:
            rows = source.rows("SELECT a.seq FROM seq_1_to_5000 a, seq_1_to_5000 b")  # 25M rows
            assert next(rows) == {"seq": 1}
            started = time.monotonic()
            rows.close()
            assert time.monotonic() - started < 5
            assert source.query("SELECT 1 AS one") == [{"one": 1}]

    def test_wrong_password(self, maria_tables: DbParams) -> None:
        wrong = "Wr0ng-" + maria_tables.password
        with pytest.raises(SourceConnectError, match="Access denied for user") as info:
            SqlSource(database(maria_tables, password=Secret(wrong))).connect()
        assert_secret_free(info.value, wrong, maria_tables.password)

    def test_unreachable_port(self, maria_tables: DbParams) -> None:
        with pytest.raises(SourceConnectError, match="Can't connect to MySQL server") as info:
            SqlSource(database(maria_tables, port=free_port())).connect()
        assert_secret_free(info.value, maria_tables.password)

    def test_bad_sql(self, maria_tables: DbParams, mariadb_url: str) -> None:
        with SqlSource(Database(driver="mysql", url=Secret(mariadb_url))) as source:
            with pytest.raises(SourceQueryError) as info:
                list(source.rows("SELECT * FROM nope"))
            assert str(info.value) == f"Table '{maria_tables.dbname}.nope' doesn't exist (error 1146)"
            with pytest.raises(SourceQueryError, match="error in your SQL syntax"):
                source.execute("INSRT INTO nope VALUES (1)")

    def test_execute_commits(self, maria_tables: DbParams) -> None:
        with SqlSource(database(maria_tables)) as source:
            source.execute("CREATE TABLE IF NOT EXISTS sql_source_writes (id INT, note VARCHAR(20))")
            assert source.execute("INSERT INTO sql_source_writes VALUES (:id, :note)", {"id": 1, "note": "a%"}) == 1
        conn = pymysql.connect(host=maria_tables.host, port=maria_tables.port, user=maria_tables.user,
                               password=maria_tables.password, database=maria_tables.dbname)
        with conn.cursor() as cur:
            cur.execute("SELECT id, note FROM sql_source_writes")
            assert cur.fetchall() == ((1, "a%"),)
        conn.close()


def test_sources_are_thread_safe_to_use_in_parallel(sqlite_db: tuple[Database, str]) -> None:
    """Two streams at once from one source (e.g. a code config reading while a push streams)."""
    db, base = sqlite_db
    errors: list[BaseException] = []
    with SqlSource(db, base) as source:

        def read() -> None:
            try:
                for _ in range(20):
                    assert [r["id"] for r in source.rows("SELECT id FROM users ORDER BY id")] == [1, 2]
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_sql_server_refused_connection_reads_as_one_clean_line() -> None:
    """No SQL Server runs here (Debian has none), but pymssql is real: a refused port gives FreeTDS's
    repeated, bytes-wrapped message, which must reach the user once, on one line, without the password."""
    port = free_port()
    db = Database(driver="mssql", host="127.0.0.1", port=port, name="x", username="sa",
                  password=Secret("Mssql-Secret-42"))
    with pytest.raises(SourceConnectError) as info:
        SqlSource(db).connect()
    text = str(info.value)
    assert "(error 20009)" in text and "\n" not in text and "b'" not in text
    assert text.count("Unable to connect") == 1
    assert "Mssql-Secret-42" not in text and f":{port}/" in text
