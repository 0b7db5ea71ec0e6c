"""Fixtures of the fleet tests: a real redis-server, the sandbox, real Celery workers, beat, Flower.

Everything listens on 127.0.0.1 and is stopped at the end of the session. The settings are the
production ones with shorter times, so that a dead worker's task comes back in seconds instead of an
hour (visibility timeout 10 s, swept every second), beat rescans the config directory every 2 s, and
a dead beat's leadership lapses after 6 s.

Tests share one Redis, one sandbox and one config directory: each uses its own config names and
data sources, so they never see each other's runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from celery import Celery

sys.path.insert(0, os.path.dirname(__file__))

from fleetproc import Fleet as Processes  # noqa: E402
from fleetproc import fleet_env  # noqa: E402

from fliplet_workers.fleet.app import create_app  # noqa: E402
from fliplet_workers.fleet.runtime import Fleet  # noqa: E402
from fliplet_workers.fleet.settings import FleetSettings  # noqa: E402
from fliplet_workers.sandbox.server import SandboxServer  # noqa: E402

TEST_SETTINGS = {
    "FLIPLET_VISIBILITY_TIMEOUT": 10,
    "FLIPLET_RESTORE_INTERVAL": 1,
    "FLIPLET_LEASE_TTL": 4,
    "FLIPLET_LOCK_TTL": 120,
    "FLIPLET_TASK_SOFT_TIME_LIMIT": 120,
    "FLIPLET_TASK_TIME_LIMIT": 150,
    "FLIPLET_SCHEDULE_RESCAN": 2,
    "FLIPLET_BEAT_MAX_INTERVAL": 1,
    "FLIPLET_BEAT_LEADER_TTL": 6,
    # The session's beats sweep rarely: the recovery tests run their own Redis and fleet
    # (test_fleet_recovery.py), and a sweep here would act on the half-done runs other tests leave.
    "FLIPLET_RECOVER_INTERVAL": 3600,
}


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="session")
def env(redis_url: str, config_dir: str) -> dict[str, str]:
    return fleet_env(redis_url, config_dir, **TEST_SETTINGS)


@pytest.fixture(scope="session")
def settings(env: dict[str, str]) -> FleetSettings:
    return FleetSettings.from_env(env)


@pytest.fixture(scope="session")
def fleet(settings: FleetSettings) -> Fleet:
    """The fleet's Redis view (locks, runs, history), in this process."""
    return Fleet.create(settings)


@pytest.fixture(scope="session")
def celery_app(settings: FleetSettings) -> Celery:
    """A client app on the test broker (to send tasks and read results)."""
    return create_app(settings)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _clear_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sandbox" in request.fixturenames:
        request.getfixturevalue("sandbox").faults.clear()


@pytest.fixture(scope="session")
def processes(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    procs = Processes(env, str(tmp_path_factory.mktemp("fleet-logs")))
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def workers(processes: Processes) -> list:  # type: ignore[type-arg]
    """Two real worker processes (prefork, one pool process each), started once for the session.

    A test that kills one starts a replacement before it ends, so that later tests find two.
    """
    return [processes.worker(), processes.worker()]
