"""Shared pytest fixtures. Keep this file small: put the logic in helper modules (``servers.py``…).

Real servers (session scope, started lazily: only when a test asks for one; stopped at session end):

* ``postgres_params`` / ``mariadb_params`` → :class:`servers.DbParams` (``host``, ``port``, ``user``,
  ``password``, ``dbname``, ``driver``; ``.url``; ``.options()`` gives a YAML config's
  ``database_*`` options). The user is ``agent`` with a password full of URL-special characters,
  the database ``agent_test``; the account may create more databases. Tests share the server: use
  table names unique to your test.
* ``postgres_url`` / ``mariadb_url`` → SQLAlchemy URL strings (``postgresql+psycopg2://…``,
  ``mysql+pymysql://…``) with user and password.
* ``redis_url`` → ``redis://127.0.0.1:<port>/0`` (no persistence, no password).

A missing server binary fails the test (never skips) with the apt package to install.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from servers import DbParams, MariaDBServer, PostgresServer, RedisServer, Server, ServerError  # noqa: E402

from fliplet_workers.sandbox import SandboxServer  # noqa: E402

S = TypeVar("S", bound=Server)


def _serve(server: S) -> Iterator[S]:
    """Start ``server`` for the session (failing the test with the reason if it cannot), then stop it."""
    problem = None
    try:
        server.start()
    except ServerError as exc:
        problem = f"cannot start {server.name} for the tests: {exc}"
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from _serve(PostgresServer())


@pytest.fixture(scope="session")
def postgres_params(postgres_server: PostgresServer) -> DbParams:
    return postgres_server.params


@pytest.fixture(scope="session")
def postgres_url(postgres_params: DbParams) -> str:
    return postgres_params.url


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    yield from _serve(MariaDBServer())


@pytest.fixture(scope="session")
def mariadb_params(mariadb_server: MariaDBServer) -> DbParams:
    return mariadb_server.params


@pytest.fixture(scope="session")
def mariadb_url(mariadb_params: DbParams) -> str:
    return mariadb_params.url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from _serve(RedisServer())


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(autouse=True)
def _reset_agent_logging() -> Iterator[None]:
    """``logs.setup`` (called by the CLI) configures the package logger for a process; undo it after
    each test so that handlers bound to one test's captured stderr never leak into the next."""
    yield
    import logging

    logger = logging.getLogger("fliplet_workers")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A fresh, real sandbox HTTP server on 127.0.0.1 (its default data: token ``eu--sandbox-token``,
    data sources 1 and 2). Starting one takes milliseconds, so every test gets its own state."""
    with SandboxServer(port=0) as server:
        yield server


@pytest.fixture(autouse=True)
def _agent_log_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The agent appends to ``~/fliplet-agent.log`` by default: tests log to a temporary file instead."""
    path = tmp_path_factory.mktemp("log") / "fliplet-agent.log"
    monkeypatch.setenv("FLIPLET_AGENT_LOG", str(path))
    return path
