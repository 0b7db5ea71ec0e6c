"""Beat from configs, with real beat and worker processes: the scenarios share one minute boundary.

Two beats run (the second by mistake); an every-minute config exists before they start, another is
added while they run, and an invalid one sits next to them. At the next minute boundary each valid
config runs once (not twice), the invalid one is reported and skipped, and when the leading beat is
killed the other takes over.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from celery import Celery
from fleetproc import Fleet as Processes
from fleetproc import make_source, wait_for, write_config

from fliplet_workers.fleet import history
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.sandbox.server import SandboxServer

pytestmark = pytest.mark.integration


def _sync_runs(fleet: Fleet, name: str, since: float) -> list[dict[str, Any]]:
    """Every fliplet.sync task for ``name`` that finished after ``since`` (from the result backend)."""
    found = []
    for key in fleet.redis.scan_iter("celery-task-meta-*", count=500):
        raw = fleet.redis.get(key)
        if not raw:
            continue
        meta = orjson.loads(raw)
        if meta.get("name") != "fliplet.sync" or not meta.get("args") or meta["args"][0] != name:
            continue
        done = datetime.fromisoformat(meta["date_done"]).replace(tzinfo=UTC).timestamp()
        if done >= since:
            found.append(meta)
    return found


def test_beat_runs_configs_on_schedule_picks_up_new_ones_and_a_second_beat_does_not_double(
        workers: list, processes: Processes, fleet: Fleet, celery_app: Celery, sandbox: SandboxServer,
        config_dir: str, data_dir: str) -> None:
    tag = uuid.uuid4().hex[:6]
    every, late, broken = f"every{tag}", f"late{tag}", f"broken{tag}"
    sources = {}
    for name in (every, late):
        sources[name] = sandbox.store.create_data_source(name)
        make_source(os.path.join(data_dir, f"{name}.db"), 20)

    def write(name: str, **extra: Any) -> None:
        write_config(config_dir, name, api_url=sandbox.url, datasource_id=sources.get(name, 1),
                     database=os.path.join(data_dir, f"{name}.db"), batch_size=5, **extra)

    write(every, frequency="* * * * *")
    write(broken, frequency="* * * *")  # four fields: invalid
    first = processes.beat()
    wait_for(lambda: "is the leader" in first.text(), f"the first beat to lead:\n{first.tail()}", 30)
    second = processes.beat()
    wait_for(lambda: "stands by" in second.text(), f"the second beat to stand by:\n{second.tail()}", 30)

    if 60 - time.time() % 60 < 8:  # too close to a boundary for a new config to be rescanned in time
        time.sleep(60 - time.time() % 60 + 1)
    write(late, frequency="* * * * *")  # added while beat runs
    boundary = time.time() // 60 * 60 + 60

    wait_for(lambda: time.time() >= boundary, "the minute boundary", 70, every=0.5)
    for name in (every, late):
        summary = wait_for(lambda n=name: [s for s in history.last(fleet.redis, n, 0, 5)
                                           if datetime.fromisoformat(s["finished"].replace("Z", "+00:00"))
                                           .timestamp() >= boundary - 1], f"the scheduled run of {name}", 40)
        # ``every`` existed before the beats started, so a boundary crossed while they were starting
        # may already have synced it: the run at this boundary then finds its 20 rows unchanged.
        assert summary[0]["ok"] and summary[0]["inserted"] + summary[0]["unchanged"] == 20, summary
        if name == late:
            assert summary[0]["inserted"] == 20, summary
        assert sorted(e["data"]["id"] for e in sandbox.store.entries(sources[name])) == list(range(1, 21))

    time.sleep(2)  # a duplicate trigger would have been sent at the same boundary: give it time to finish
    for name in (every, late):
        runs = _sync_runs(fleet, name, boundary - 1)
        assert len(runs) == 1, runs  # one trigger for this boundary, not one per beat
        assert not runs[0]["result"].get("skipped")
    assert f"Sending due task {every}:0" in first.text()
    assert "Sending due task" not in second.text()  # the standby sends nothing
    assert f"config '{broken}' is invalid and is not scheduled" in first.text()
    assert "expected 5 fields" in first.text()

    first.kill()  # the leader dies: the standby takes over once the leadership lapses (6 s here)
    wait_for(lambda: "is the leader" in second.text(), f"the second beat to take over:\n{second.tail()}", 30)
    second.stop()
    for name in (every, late, broken):
        os.remove(os.path.join(config_dir, f"{name}.yml"))
