"""An incremental operation in the fleet (real redis-server, real Celery workers, the sandbox over
HTTP): the finalize step advances the watermark in Redis only when the run ended ok, the next run
reads only the newer rows, and ``status`` (text and ``--json``) shows the watermark."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import uuid
from typing import Any

import pytest
from celery import Celery
from fleetproc import wait_for, write_config

from fliplet_workers.fleet import history, keys, status
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.sandbox.server import SandboxServer

pytestmark = pytest.mark.integration


def _source(path: str, rows: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, updated_at TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)",
                       ((i, f"u{i}@x.org", f"User {i}", f"2024-01-01 00:00:{i:02d}") for i in range(1, rows + 1)))
        db.commit()


def _incremental_config(sandbox: SandboxServer, config_dir: str, data_dir: str, prefix: str, *, rows: int,
                        batch_size: int) -> tuple[str, int, str]:
    """A config of an incremental operation over a fresh SQLite table of ``rows`` users, into a new
    data source: its name, the data source's id and the database file."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(data_dir, f"{name}.db")
    _source(db, rows)
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, batch_size=batch_size,
                 query="SELECT id, email, name, updated_at AS updatedAt FROM users",
                 timestamp_column="updatedAt", incremental=True, retries=1, retry_delay=0.05)
    return name, ds, db


def _change(path: str, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(sql)
        db.commit()


def _run(celery_app: Celery, fleet: Fleet, name: str, runs_before: int, **kwargs: Any) -> dict[str, Any]:
    result = celery_app.send_task("fliplet.sync", args=[name], kwargs=kwargs).get(timeout=60, propagate=False)
    run_id = result.args[1]["run_id"] if isinstance(result, Exception) else result["run_id"]  # a failed run
    summary: dict[str, Any] = wait_for(lambda: next((s for s in history.last(fleet.redis, name, 0, 10)
                                                     if s.get("run_id") == run_id), None),
                                       f"the summary of run {run_id}", 60)
    assert len(history.last(fleet.redis, name, 0, 10)) == runs_before + 1
    return summary


def _watermark(fleet: Fleet, name: str) -> Any:
    raw = fleet.redis.get(keys.watermark(name, 0))
    return json.loads(raw)["watermark"]["value"] if raw else None


def test_the_fleet_advances_the_watermark_only_after_an_ok_run_and_status_shows_it(
        workers: list, fleet: Fleet, celery_app: Celery, sandbox: SandboxServer,  # type: ignore[type-arg]
        config_dir: str, data_dir: str) -> None:
    name, ds, db = _incremental_config(sandbox, config_dir, data_dir, "inc", rows=30, batch_size=10)

    first = _run(celery_app, fleet, name, 0)
    assert first["ok"] and first["inserted"] == 30 and first["batches"] == 3
    assert _watermark(fleet, name) == "2024-01-01 00:00:30"

    _change(db, "UPDATE users SET name = 'edited', updated_at = '2024-02-01 00:00:00' WHERE id IN (4, 5)")
    commits = sandbox.store.commit_count(ds)
    second = _run(celery_app, fleet, name, 1)
    assert second["ok"] and (second["updated"], second["unchanged"], second["batches"]) == (2, 0, 1)
    assert sandbox.store.commit_count(ds) == commits + 1
    assert _watermark(fleet, name) == "2024-02-01 00:00:00"
    assert not fleet.redis.exists(keys.run_watermark(second["run_id"]))

    # a run whose commit fails for good leaves the watermark where it was
    _change(db, "UPDATE users SET name = 'late', updated_at = '2024-03-01 00:00:00' WHERE id = 6")
    sandbox.faults.set(commit=["error"] * 10)
    try:
        third = _run(celery_app, fleet, name, 2)
    finally:
        sandbox.faults.clear()
    assert not third["ok"] and _watermark(fleet, name) == "2024-02-01 00:00:00"
    fourth = _run(celery_app, fleet, name, 3)  # reads the row again
    assert fourth["ok"] and fourth["updated"] == 1 and _watermark(fleet, name) == "2024-03-01 00:00:00"

    out, text = io.StringIO(), io.StringIO()
    status.print_status(None, out=out, settings=fleet.settings, as_json=True, ping_timeout=0.5)
    status.print_status(None, out=text, settings=fleet.settings, ping_timeout=0.5)
    entry = next(c for c in json.loads(out.getvalue())["configs"] if c["name"] == name)
    mark = entry["operations"][0]["watermark"]
    assert mark["watermark"] == {"type": "string", "value": "2024-03-01 00:00:00"} and mark["datasourceId"] == ds
    assert "incremental: watermark 2024-03-01 00:00:00 (string), last full comparison" in text.getvalue()


def test_a_full_run_asked_of_the_fleet_catches_a_row_changed_without_a_newer_timestamp(
        workers: list, fleet: Fleet, celery_app: Celery, sandbox: SandboxServer,  # type: ignore[type-arg]
        config_dir: str, data_dir: str) -> None:
    name, ds, db = _incremental_config(sandbox, config_dir, data_dir, "incfull", rows=12, batch_size=5)
    assert _run(celery_app, fleet, name, 0)["inserted"] == 12
    # a change without a newer timestamp (a restore from a backup): an incremental run cannot see it
    _change(db, "UPDATE users SET name = 'restored', updated_at = '2023-12-31 00:00:00' WHERE id = 3")
    quiet = _run(celery_app, fleet, name, 1)
    assert quiet["ok"] and (quiet["updated"], quiet["batches"]) == (0, 0)
    full = _run(celery_app, fleet, name, 2, full=True)
    assert full["ok"] and (full["updated"], full["unchanged"]) == (1, 11)
    entry = next(e for e in sandbox.store.entries(ds) if e["data"]["id"] == 3)
    assert entry["data"]["name"] == "restored"
    assert _watermark(fleet, name) == "2024-01-01 00:00:12"
