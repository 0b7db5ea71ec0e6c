"""The fleet's commit step goes through the same retry core as the foreground agent: with the
sandbox slower than ``timeout`` on every commit, every row lands exactly once (real redis-server,
real Celery worker processes, the sandbox over HTTP); and a code config's ``onSync``, which runs in
the finalize step, gets the entries the commit steps sent, as in the foreground."""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from fleetproc import make_source, wait_for, write_config

from fliplet_workers.fleet import flow, history
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.settings import FleetSettings
from fliplet_workers.sandbox.server import SandboxServer

pytestmark = pytest.mark.integration


def test_a_sandbox_slower_than_timeout_lands_each_row_once_in_the_fleet(
        workers: list, fleet: Fleet, celery_app: Celery, sandbox: SandboxServer,  # type: ignore[type-arg]
        config_dir: str, data_dir: str) -> None:
    name = f"slow{uuid.uuid4().hex[:8]}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(data_dir, f"{name}.db")
    make_source(db, 40)
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, batch_size=10,
                 timeout=0.5, retry_delay=0.1, retries=3)
    sandbox.faults.set(commit_delay_ms=800)  # every commit is applied 0.8 s after it arrives: no answer
    run_id = celery_app.send_task("fliplet.sync", args=[name]).get(timeout=60)["run_id"]
    summary = wait_for(lambda: history.last(fleet.redis, name, 0), f"a run summary of {name}", 60)[0]
    keys = Counter(e["data"]["id"] for e in sandbox.store.entries(ds))
    assert sorted(keys) == list(range(1, 41)) and max(keys.values()) == 1  # every row, exactly once
    assert sandbox.store.commit_count(ds) == 4  # no batch was sent twice
    assert summary["run_id"] == run_id and summary["ok"] and summary["errors"] == []
    assert (summary["inserted"], summary["batches"]) == (40, 4)


def test_onsync_in_the_finalize_step_gets_the_entries_sent(
        tmp_path: Path, settings: FleetSettings, sandbox: SandboxServer) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    local = Fleet.create(replace(settings, config_dir=str(configs)))
    name = f"sync{uuid.uuid4().hex[:8]}"
    ds = sandbox.store.create_data_source(name)
    seen = tmp_path / "seen.json"
    (configs / f"{name}.py").write_text(textwrap.dedent(f"""
        import json

        config = {{"authToken": "eu--sandbox-token", "baseURL": "{sandbox.url}"}}

        def rows(http):
            return [{{"id": i, "title": f"todo {{i}}"}} for i in range(1, 6)]

        def remember(result):
            with open({str(seen)!r}, "w") as out:
                json.dump(result, out)

        def setup(agent):
            agent.push({{"source": rows, "primaryColumnName": "id", "targetDataSourceId": {ds},
                         "onSync": remember, "batchSize": 2}})
    """))
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    numbers: list[int] = []
    started = flow.start(local, run_id, name, dispatch=lambda _run, n, *_: numbers.append(n))
    assert started.result["dispatched"] == 3
    for number in numbers:
        flow.commit(local, run_id, number, name, 0)
    summary = flow.finalize(local, run_id, name, 0, owner="test")
    assert summary["inserted"] == 5 and summary["ok"]
    result: dict[str, Any] = json.loads(seen.read_text())
    sent = sorted(result["commits"], key=lambda e: e["data"]["id"])
    assert sent == [{"data": {"id": i, "title": f"todo {i}"}} for i in range(1, 6)]
    assert result["summary"]["inserted"] == 5 and result["responses"] == []  # answers stay with the workers
