"""A Redis without persistence restarts while a run is in progress and nothing of the run runs.

``fleet:active`` is gone with the run's state, so the recovery sweep cannot learn about the run from
Redis: the leading beat remembers the runs it saw there (:class:`recovery.Remembered`) and passes
those that left it without a summary to the sweep, which ends them as lost. The first test drives the
memory and the sweep directly (real redis-server and sandbox, no Celery); the last one runs a fleet of
its own on a redis-server without persistence: real beat and worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from fleetproc import Fleet as Processes
from fleetproc import fleet_env, make_source, wait_for, write_config
from redisproc import VolatileRedis
from servers import ServerError

from fliplet_workers.fleet import flow, history, keys, recovery
from fliplet_workers.fleet.app import create_app
from fliplet_workers.fleet.beat import ConfigScheduler
from fliplet_workers.fleet.locks import Lock
from fliplet_workers.fleet.outcome import RunFailed
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.settings import FleetSettings, connect
from fliplet_workers.sandbox.server import SandboxServer


def _id() -> str:
    return uuid.uuid4().hex[:10]


def _config(config_dir: str, data_dir: str, sandbox: SandboxServer, name: str, rows: int, **extra: Any) -> int:
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(data_dir, f"{name}.db")
    make_source(db, rows)
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, **extra)
    return ds


def _ids(sandbox: SandboxServer, ds: int) -> list[int]:
    return sorted(e["data"]["id"] for e in sandbox.store.entries(ds))


class Sent:
    """Stands in for Celery: records what the planner and the sweep send."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []
        self.ended: list[dict[str, Any]] = []

    def batch(self, run_id: str, number: int, file_jobs: int, config: str, operation: int) -> None:
        self.batches.append((run_id, number))

    def sweep(self, fleet: Fleet, remembered: list[list[Any]]) -> recovery.Report:
        senders = recovery.Senders(batch=self.batch, finalize=lambda r, c, o: None, sync=lambda r, c, o: None,
                                   ended=self.ended.append)
        return recovery.sweep(fleet, senders, remembered=remembered)


def _wipe(fleet: Fleet, run_id: str, name: str) -> None:
    """What a Redis restart without persistence does to one run: its state, listing and lock are gone.
    (The session's Redis is shared by the other tests: only this run's keys go.)"""
    for key in list(fleet.redis.scan_iter(match=f"fleet:run:{run_id}*")):
        fleet.redis.delete(key)
    fleet.redis.hdel(keys.ACTIVE, run_id)
    fleet.redis.delete(keys.lock(name, 0), keys.current(name, 0))
    assert fleet.store(run_id).meta() is None


def test_the_beat_remembers_active_runs_and_the_sweep_ends_a_vanished_one_once(
        tmp_path: Any, settings: FleetSettings, sandbox: SandboxServer, data_dir: str) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    fleet = Fleet.create(replace(settings, config_dir=str(configs)))
    lost_name, done_name, half_name = f"wipe{_id()}", f"fine{_id()}", f"half{_id()}"
    lost_ds = _config(str(configs), data_dir, sandbox, lost_name, 12, batch_size=4)
    _config(str(configs), data_dir, sandbox, done_name, 4, batch_size=4)
    _config(str(configs), data_dir, sandbox, half_name, 4, batch_size=4)
    lost, done, half = f"lost-{_id()}", f"done-{_id()}", f"half-{_id()}"
    send = Sent()
    for run_id, name in ((lost, lost_name), (done, done_name), (half, half_name)):
        flow.start(fleet, run_id, name, dispatch=send.batch)
    flow.commit(fleet, lost, 1, lost_name, 0)  # batch 1 landed; 2 and 3 were only messages in Redis

    beat = recovery.Remembered(forget_after=settings.run_ttl)
    assert [r[0] for r in beat.vanished(fleet.redis)] == []  # all three listed: nothing to pass
    assert {lost, done, half} <= set(beat.runs)

    assert flow.commit(fleet, done, 1, done_name, 0).finalize  # `done` ends normally...
    flow.finalize(fleet, done, done_name, 0, owner="f")
    _wipe(fleet, lost, lost_name)  # ...`lost` vanishes with its listing...
    fleet.redis.hdel(keys.ACTIVE, half)  # ...and `half` lost only its listing
    passed = beat.vanished(fleet.redis)
    assert sorted(passed) == sorted([[lost, lost_name, 0], [half, half_name, 0]])
    assert done not in beat.runs  # a run that ended normally is forgotten, never passed

    restarted = recovery.Remembered(forget_after=settings.run_ttl)  # a beat restart: empty memory
    assert restarted.vanished(fleet.redis) == []  # it passes nothing (it only learns what is listed)
    assert send.sweep(fleet, []).failed == []

    for key in list(fleet.redis.scan_iter(match=f"fleet:run:{done}*")):  # `done`'s state expired since
        fleet.redis.delete(key)
    report = send.sweep(fleet, passed + [[done, done_name, 0]])  # (a race: `done` passed after it ended)
    assert report.failed == [lost] and [e["run_id"] for e in send.ended] == [lost]
    ended = send.ended[0]
    assert ended["ok"] is False and "vanished" in ended["errors"][0] and ended["config"] == lost_name
    last = history.last(fleet.redis, lost_name, 0)[0]
    assert last["run_id"] == lost and last["ok"] is False  # what `status` shows
    done_runs = history.last(fleet.redis, done_name, 0, 10)
    assert [(r["run_id"], r["ok"]) for r in done_runs] == [(done, True)]  # not reported lost
    assert half in fleet.redis.hkeys(keys.ACTIVE)  # its state is there: listed again, swept normally

    assert send.sweep(fleet, passed).failed == [] and len(send.ended) == 1  # once
    assert beat.vanished(fleet.redis) == []  # `lost` has its (failed) summary now: forgotten
    assert lost not in beat.runs and half in beat.runs
    assert recovery.sweep(fleet, recovery.Senders(send.batch, lambda *a: None, lambda *a: None, send.ended.append),
                          remembered=[["x", 1, 0], "junk", [lost], None]).failed == []  # malformed: ignored

    nxt = flow.start(fleet, f"next-{_id()}", lost_name, dispatch=send.batch)  # the next trigger converges
    nxt_id = nxt.result["run_id"]
    for number in range(1, nxt.result["dispatched"] + 1):
        flow.commit(fleet, nxt_id, number, lost_name, 0)
    summary = flow.finalize(fleet, nxt_id, lost_name, 0, owner="f")
    assert summary["ok"] and summary["inserted"] + summary["unchanged"] == 12
    assert _ids(sandbox, lost_ds) == list(range(1, 13))


def test_a_beat_that_stands_by_forgets_and_one_that_cannot_reach_redis_remembers(
        tmp_path: Any, settings: FleetSettings, celery_app: Any) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    fleet = Fleet.create(replace(settings, config_dir=str(configs)))
    beat = ConfigScheduler(app=celery_app, fleet=fleet)
    beat.leader_lock = Lock(fleet.redis, f"test:leader:{_id()}", 6000)  # not the session beats' lock
    beat.remembered.runs["r1"] = ("cfg", 0, time.time())
    assert beat.lead() and "r1" in beat.remembered.runs  # leading: kept
    beat.leader_lock = Lock(connect("redis://127.0.0.1:1/0"), beat.leader_lock.key, 6000)  # refused
    assert not beat.lead() and "r1" in beat.remembered.runs  # an outage: kept, to pass after the restart
    beat.leader_lock = Lock(fleet.redis, beat.leader_lock.key, 6000)
    fleet.redis.set(beat.leader_lock.key, "another-beat", px=6000)
    assert not beat.lead() and beat.remembered.runs == {}  # another beat leads: it has its own copy
    fleet.redis.delete(beat.leader_lock.key)


def _sweeps_sent(beat_log: str) -> int:
    return beat_log.count("fliplet.recover sent.")


def _status_json(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "fliplet_workers.cli", "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


@pytest.mark.integration
def test_a_redis_without_persistence_restarted_while_nothing_runs_ends_the_run_failed_visibly(
        sandbox: SandboxServer, data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    server = VolatileRedis()
    try:
        server.start()
    except ServerError as error:
        pytest.fail(f"cannot start redis-server: {error}", pytrace=False)
    config_dir = str(tmp_path_factory.mktemp("wipe-configs"))
    env = fleet_env(server.url, config_dir)
    for var in [k for k in env if k.startswith("FLIPLET_") and k not in ("FLIPLET_BROKER_URL", "FLIPLET_CONFIG_DIR",
                                                                         "FLIPLET_TIMEZONE", "FLIPLET_AGENT_LOG")]:
        del env[var]  # the product's defaults, whatever this shell has set...
    env.update(FLIPLET_RECOVER_INTERVAL="2", FLIPLET_BEAT_MAX_INTERVAL="1")  # ...but a sweep every 2 s
    settings = FleetSettings.from_env(env)
    fleet, app = Fleet.create(settings), create_app(settings)
    procs = Processes(env, str(tmp_path_factory.mktemp("wipe-logs")))
    try:
        beat = procs.beat()
        worker = procs.worker(concurrency=2)
        name = f"volatile{_id()}"
        ds = _config(config_dir, data_dir, sandbox, name, 600, batch_size=20)  # 30 batches
        sandbox.faults.set(commit_delay_ms=300)
        run_id = app.send_task("fliplet.sync", args=[name]).id
        wait_for(lambda: fleet.store(run_id).done_count() >= 3, "some batches done", 60, every=0.05)
        assert run_id in fleet.redis.hkeys(keys.ACTIVE)
        seen = _sweeps_sent(beat.text())  # two more sweeps: the beat has read fleet:active with the run
        wait_for(lambda: _sweeps_sent(beat.text()) >= seen + 2, "two sweeps sent by the beat", 30)

        worker.stop()  # nothing of the run runs any more: its messages are only in Redis
        assert fleet.store(run_id).meta() is not None and not history.last(fleet.redis, name, 0)
        server.restart()  # no persistence: it comes back empty
        restarted = time.monotonic()
        assert fleet.redis.hlen(keys.ACTIVE) == 0 and fleet.store(run_id).meta() is None
        procs.worker(concurrency=2)

        found = wait_for(lambda: history.last(fleet.redis, name, 0), "the lost run's failed summary", 60, every=0.2)
        took = time.monotonic() - restarted
        assert found[0]["run_id"] == run_id and found[0]["ok"] is False, found[0]
        assert "vanished" in found[0]["errors"][0]
        lost = app.AsyncResult(run_id)
        wait_for(lambda: lost.state == "FAILURE", "the sync task id to be FAILURE", 30)
        with pytest.raises(RunFailed, match="vanished"):
            lost.get(timeout=10)
        code, status = _status_json(env)
        ops = next(c for c in status["configs"] if c["name"] == name)["operations"]
        assert ops[0]["last_runs"][0]["run_id"] == run_id and ops[0]["last_runs"][0]["ok"] is False
        assert code == 3 == status["exit_code"]  # a failed last run

        sandbox.faults.clear()
        nxt = app.send_task("fliplet.sync", args=[name]).get(timeout=120)  # resolves when its run ends
        assert nxt["ok"] is True and nxt["inserted"] + nxt["unchanged"] == 600, nxt
        ids = _ids(sandbox, ds)
        assert Counter(ids).most_common(1)[0][1] == 1 and ids == list(range(1, 601))  # every row, once
        assert len([r for r in history.last(fleet.redis, name, 0, 10) if r["run_id"] == run_id]) == 1  # once
        print(f"the lost run ended failed {took:.1f}s after the Redis restart")
    finally:
        procs.stop_all()
        server.stop()
