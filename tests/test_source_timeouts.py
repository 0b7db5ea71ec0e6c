"""Plain database URLs and database timeouts, through the real CLI, real databases, the real sandbox.

* ``database_url: postgresql://…`` / ``mysql://…`` / ``mariadb://…`` (no ``+driver``) sync with the
  drivers the package ships.
* A PostgreSQL server that freezes mid-query (every process SIGSTOPped: the kernel still acknowledges
  packets, nothing answers) fails the run within ``query_timeout`` plus the watchdog's grace, with the
  log table's "Cannot execute database query", exit 1, nothing sent, no password. The server is a
  dedicated instance, so the session's shared one never freezes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import psycopg2
import pytest
import sqlalchemy as sa
from agent_support import World, make_world
from servers import DbParams, MariaDBServer, PostgresServer, Server, ServerError, frozen, wait_until

from fliplet_workers.sandbox import SandboxServer

S = TypeVar("S", bound=Server)

ROWS = [{"id": i, "email": f"u{i}@example.com", "name": f"User {i}"} for i in range(1, 11)]


def plain_url(scheme: str, params: DbParams) -> str:
    return (f"{scheme}://{quote(params.user, safe='')}:{quote(params.password, safe='')}"
            f"@{params.host}:{params.port}/{params.dbname}")


@pytest.mark.integration
@pytest.mark.parametrize(("scheme", "server"), [
    ("postgresql", "postgres"), ("postgres", "postgres"), ("mysql", "mariadb"), ("mariadb", "mariadb"),
])
def test_plain_database_urls_sync(scheme: str, server: str, request: pytest.FixtureRequest,
                                  sandbox: SandboxServer, tmp_path: Path) -> None:
    params: DbParams = request.getfixturevalue(f"{server}_params")
    engine = sa.create_engine(params.url)
    try:
        world: World = make_world(sandbox, engine, {"database_url": plain_url(scheme, params)}, tmp_path,
                                  f"plain_{uuid.uuid4().hex[:8]}")
        world.insert(*ROWS)
        assert world.run() == 0
        assert sorted(world.data_by_key()) == [r["id"] for r in ROWS]
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ a frozen server


def _own(server: S) -> Iterator[S]:
    """A server for this test alone (freezing a shared one would stall other tests)."""
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(f"cannot start {server.name} for the test: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    yield from _own(PostgresServer())


def _run_frozen(server: Server, config: Path, log: Path, running: Callable[[], bool]) -> tuple[int, str, float]:
    """Start ``fliplet-agent start config``, freeze ``server`` once ``running()`` says its query runs,
    and return the exit code, the output and the seconds from the freeze to the exit."""
    proc = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "start", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "FLIPLET_AGENT_LOG": str(log)})
    try:
        wait_until(lambda: running() or proc.poll() is not None, "the query to run", 20)
        assert proc.poll() is None, proc.communicate()[0]
        with frozen(server) as pids:
            assert pids  # every process of the server is stopped
            started = time.monotonic()
            try:
                output, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                pytest.fail(f"the run still hangs 30 s after the server froze:\n{output}")
            return proc.returncode, output, time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _active_query(params: DbParams, marker: str) -> bool:
    conn = psycopg2.connect(host=params.host, port=params.port, user=params.user, password=params.password,
                            dbname=params.dbname, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            # The agent reads through a server-side cursor: what runs is its FETCH (or the DECLARE).
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() "
                        "AND (query LIKE %s OR query LIKE 'FETCH %%')", (f"%{marker}%",))
            row = cur.fetchone()
            return bool(row and row[0])
    finally:
        conn.close()


@pytest.mark.integration
def test_frozen_postgres_fails_the_run_within_query_timeout(own_postgres: PostgresServer, sandbox: SandboxServer,
                                                            tmp_path: Path) -> None:
    params = own_postgres.params
    engine = sa.create_engine(params.url)
    table = f"frozen_{uuid.uuid4().hex[:8]}"
    try:
        world = make_world(sandbox, engine, {"database_url": plain_url("postgresql", params)}, tmp_path, table)
        world.insert(*ROWS)
    finally:
        engine.dispose()
    # The query sleeps first, so there is a moment when it is surely running on the server.
    query = f"SELECT id, email, name FROM {table}, (SELECT pg_sleep(2)) AS s ORDER BY id"
    config = world.write_config(query=query, query_timeout=3, timestamp_column=None, delete_column=None)
    log = tmp_path / "agent.log"
    code, output, elapsed = _run_frozen(own_postgres, config, log, lambda: _active_query(params, table))
    assert code == 1, output
    assert elapsed < 15, elapsed  # query_timeout 3 s + the watchdog's 2 s grace, not for ever
    assert "Cannot execute database query" in output, output
    assert "did not answer within query_timeout (3 s)" in output, output
    assert params.password not in output
    assert params.password not in log.read_text()
    assert world.entries() == []  # nothing was sent
    assert world.commits() == 0


@pytest.mark.integration
def test_slow_statement_hits_postgres_statement_timeout(postgres_params: DbParams, sandbox: SandboxServer,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A live server that is merely slow ends the statement itself, with its own words."""
    engine = sa.create_engine(postgres_params.url)
    try:
        world = make_world(sandbox, engine, {"database_url": plain_url("postgresql", postgres_params)}, tmp_path,
                           f"slow_{uuid.uuid4().hex[:8]}")
        world.insert(*ROWS)
    finally:
        engine.dispose()
    started = time.monotonic()
    code = world.run(query=f"SELECT id, email, name FROM {world.table}, (SELECT pg_sleep(30)) AS s",
                     query_timeout=1, timestamp_column=None, delete_column=None)
    assert time.monotonic() - started < 10
    assert code == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Cannot execute database query" in text and "statement timeout" in text, text
    assert world.commits() == 0


@pytest.fixture
def own_mariadb() -> Iterator[MariaDBServer]:
    yield from _own(MariaDBServer())


def _mariadb_running(params: DbParams, marker: str) -> bool:
    import pymysql

    conn = pymysql.connect(host=params.host, port=params.port, user=params.user, password=params.password,
                           database=params.dbname, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.processlist WHERE info LIKE %s "
                        "AND id <> connection_id()", (f"%{marker}%",))
            row = cur.fetchone()
            return bool(row and row[0])
    finally:
        conn.close()


@pytest.mark.integration
def test_frozen_mariadb_fails_the_run_within_query_timeout(own_mariadb: MariaDBServer, sandbox: SandboxServer,
                                                           tmp_path: Path) -> None:
    """PyMySQL's read_timeout is a client-side socket timeout: it catches a frozen server alone."""
    params = own_mariadb.params
    engine = sa.create_engine(params.url)
    table = f"frozen_{uuid.uuid4().hex[:8]}"
    try:
        world = make_world(sandbox, engine, {"database_url": plain_url("mariadb", params)}, tmp_path, table)
        world.insert(*ROWS)
    finally:
        engine.dispose()
    config = world.write_config(query=f"SELECT id, email, name, SLEEP(2) AS s FROM {table} LIMIT 1",
                                query_timeout=3, timestamp_column=None, delete_column=None)
    log = tmp_path / "agent.log"
    code, output, elapsed = _run_frozen(own_mariadb, config, log, lambda: _mariadb_running(params, table))
    assert code == 1, output
    assert elapsed < 15, elapsed
    assert "Cannot execute database query" in output, output
    assert "timed out" in output, output
    assert params.password not in output and params.password not in log.read_text()
    assert world.commits() == 0
