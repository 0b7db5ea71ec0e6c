"""The delete guard and the plan's failures in the fleet: the planner holds deletions back exactly as
the foreground agent does (both use ``run.stream_push``), and the finalize step, which only has the
plan's counts, still reports the run as failed and says why. Real Redis and sandbox, no worker."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from dataclasses import replace
from typing import Any

import pytest
from fleetproc import make_source, write_config

from fliplet_workers.fleet import flow
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.settings import FleetSettings
from fliplet_workers.sandbox.server import SandboxServer


@pytest.fixture
def local(tmp_path: Any, settings: FleetSettings) -> Fleet:
    configs = tmp_path / "configs"
    configs.mkdir()
    return Fleet.create(replace(settings, config_dir=str(configs)))


def _run(fleet: Fleet, name: str) -> dict[str, Any]:
    """One whole run through the fleet's steps, in this process; returns its summary."""
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    sent: list[int] = []
    started = flow.start(fleet, run_id, name, dispatch=lambda r, n, f, c, o: sent.append(n))
    if not sent:
        return started.result
    for number in sent:
        flow.commit(fleet, run_id, number, name, 0)
    return flow.finalize(fleet, run_id, name, 0, owner="t")


def _sql(path: str, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(statement)
        db.commit()


def test_the_fleet_holds_back_deletions_above_the_limit_and_fails_the_run(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"guard{uuid.uuid4().hex[:6]}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(local.settings.config_dir, f"{name}.db")
    make_source(db, 30)
    write_config(local.settings.config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db,
                 batch_size=10, mode="replace")
    assert _run(local, name)["inserted"] == 30

    _sql(db, "DELETE FROM users WHERE id <= 20")
    _sql(db, "UPDATE users SET name = 'Renamed' WHERE id = 30")
    summary = _run(local, name)  # one batch dispatched (the update), the 20 deletions held back
    assert summary["ok"] is False and summary["updated"] == 1 and summary["deleted"] == 0
    assert any("Refusing to delete 20 of the data source's 30 entries: this run may delete at most 15" in e
               for e in summary["errors"])
    entries = sandbox.store.entries(ds)
    assert len(entries) == 30 and {e["data"]["name"] for e in entries if e["data"]["id"] == 30} == {"Renamed"}

    _sql(db, "DELETE FROM users")
    summary = _run(local, name)  # zero rows: nothing to dispatch, the inline path
    assert summary["ok"] is False and "Refusing to delete 30 of the data source's 30 entries" in summary["errors"][0]
    assert len(sandbox.store.entries(ds)) == 30

    write_config(local.settings.config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db,
                 batch_size=10, mode="replace", delete_limit="none")
    summary = _run(local, name)
    assert summary["ok"] is True and summary["deleted"] == 30 and sandbox.store.entries(ds) == []


def test_the_fleet_fails_a_misspelt_key_column_before_sending_anything(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"typo{uuid.uuid4().hex[:6]}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(local.settings.config_dir, f"{name}.db")
    make_source(db, 5)
    write_config(local.settings.config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db,
                 primary_column="ID", mode="replace")
    summary = _run(local, name)
    assert summary["ok"] is False
    assert "primary_column 'ID' is not a column of the query's result (columns: id, email, name, score); " \
           "did you mean 'id'?" in summary["errors"][0]
    assert sandbox.store.commit_count(ds) == 0
