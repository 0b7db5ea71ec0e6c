"""Recovery that does not wait for the broker, runs that always end, nothing staged in clear.

The first tests drive the fleet's steps and the recovery sweep directly (real redis-server and
sandbox, no Celery), with the clock of the sweep moved forward instead of sleeping. The last ones run
a fleet of their own (its own redis-server with an append-only file, as docker-compose.yml
configures it, real Celery workers and a beat) with the product's default timings: a whole worker
killed with SIGKILL mid-run, and Redis restarted mid-run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from celery import Celery
from fleetproc import Fleet as Processes
from fleetproc import Proc, fleet_env, make_source, wait_for, write_config
from redisproc import PersistentRedis
from servers import ServerError

from fliplet_workers.fleet import flow, history, keys, recovery
from fliplet_workers.fleet.app import create_app
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.settings import FleetSettings
from fliplet_workers.sandbox.server import SandboxServer


def _id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def local(tmp_path: Any, settings: FleetSettings) -> Fleet:
    """A fleet whose config directory is this test's own, with the default recovery timings."""
    configs = tmp_path / "configs"
    configs.mkdir()
    defaults = FleetSettings()
    return Fleet.create(replace(settings, config_dir=str(configs), recover_grace=defaults.recover_grace,
                                recover_attempts=defaults.recover_attempts, planner_ttl=defaults.planner_ttl,
                                lease_ttl=defaults.lease_ttl))


def _config(fleet: Fleet, sandbox: SandboxServer, name: str, rows: int, **extra: Any) -> int:
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(fleet.settings.config_dir, f"{name}.db")
    make_source(db, rows)
    write_config(fleet.settings.config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, **extra)
    return ds


def _ids(sandbox: SandboxServer, ds: int) -> list[int]:
    return sorted(e["data"]["id"] for e in sandbox.store.entries(ds))


class WorkerDied(BaseException):
    """Like a SIGKILL mid-planning: no handler of the planner runs."""


@dataclass
class Senders:
    """Stands in for Celery: records what the planner and the sweep send."""

    batches: list[tuple[str, int]]
    finalized: list[str]
    synced: list[str]
    ended: list[dict[str, Any]]
    die_after: int | None = None

    @classmethod
    def new(cls, die_after: int | None = None) -> Senders:
        return cls([], [], [], [], die_after)

    def batch(self, run_id: str, number: int, file_jobs: int, config: str, operation: int) -> None:
        self.batches.append((run_id, number))
        if self.die_after is not None and len(self.batches) >= self.die_after:
            self.die_after = None
            raise WorkerDied

    def numbers(self, run_id: str) -> list[int]:
        return [n for r, n in self.batches if r == run_id]

    def sweep(self, fleet: Fleet, after: float = 0.0) -> recovery.Report:
        """One sweep, ``after`` seconds from now."""
        senders = recovery.Senders(batch=self.batch, finalize=lambda r, c, o: self.finalized.append(r),
                                   sync=lambda r, c, o: self.synced.append(r), ended=self.ended.append)
        return recovery.sweep(fleet, senders, now=time.time() + after)


def _commit_all(fleet: Fleet, run_id: str, name: str, numbers: list[int]) -> list[flow.Committed]:
    return [flow.commit(fleet, run_id, n, name, 0) for n in numbers]


def test_a_batch_whose_worker_died_is_sent_again_by_the_sweep_not_the_broker(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"lost{_id()}"
    ds = _config(local, sandbox, name, 30, batch_size=10, timeout=10)  # (the lookup's settle wait: 11 s)
    run_id = f"run-{_id()}"
    send = Senders.new()
    flow.start(local, run_id, name, dispatch=send.batch)
    assert send.numbers(run_id) == [1, 2, 3]
    _commit_all(local, run_id, name, [1])
    local.batch_state(run_id, 2).begin("deadhost:1")  # batch 2: started by a worker that died (no lease)
    # batch 3: its task sits in the dead worker's unacked messages (never started)

    assert run_id not in send.sweep(local).resent  # within the grace period: nothing yet
    report = send.sweep(local, after=local.settings.recover_grace + 1)
    assert report.resent[run_id] == [2, 3] and send.numbers(run_id) == [1, 2, 3, 2, 3]
    assert local.run_lock(name, 0).holder() == run_id  # the run is alive: its lock stays
    assert run_id not in send.sweep(local, after=local.settings.recover_grace - 1).resent  # sent just now

    done = _commit_all(local, run_id, name, [2, 3, 3])  # batch 3 also from the broker, an hour later
    assert done[1].finalize  # (the duplicate may send finalize again: it is idempotent)
    summary = flow.finalize(local, run_id, name, 0, owner="f")
    assert (summary["inserted"], summary["unchanged"], summary["ok"]) == (30, 0, True)
    assert _ids(sandbox, ds) == list(range(1, 31))
    assert run_id not in local.redis.hkeys(keys.ACTIVE)
    assert flow.start(local, f"next-{_id()}", name).result["unchanged"] == 30  # the next trigger runs


def test_a_run_nobody_finalized_is_finalized_and_its_lock_freed(local: Fleet, sandbox: SandboxServer) -> None:
    name = f"nofin{_id()}"
    _config(local, sandbox, name, 8, batch_size=4)
    run_id = f"run-{_id()}"
    send = Senders.new()
    flow.start(local, run_id, name, dispatch=send.batch)
    assert _commit_all(local, run_id, name, [1, 2])[-1].finalize  # ...and that finalize task was lost
    assert flow.start(local, f"skip-{_id()}", name).result["skipped"] is True

    assert run_id not in send.sweep(local).finalized  # the finalize just sent may still be on its way
    assert send.sweep(local, after=local.settings.recover_grace + 1).finalized == [run_id]
    summary = flow.finalize(local, run_id, name, 0, owner="recovered")
    assert summary["ok"] and summary["inserted"] == 8
    assert local.run_lock(name, 0).holder() is None
    assert flow.start(local, f"next-{_id()}", name).result["unchanged"] == 8


def test_a_dead_planner_is_resumed_and_its_summary_counts_every_row_once(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"plan{_id()}"
    ds = _config(local, sandbox, name, 50, batch_size=10)
    run_id = f"run-{_id()}"
    send = Senders.new(die_after=2)
    with pytest.raises(WorkerDied):  # batches 1 and 2 staged and sent, then the planner dies
        flow.start(local, run_id, name, dispatch=send.batch)
    local.redis.delete(keys.planner(run_id))  # its heartbeat lapses (SIGKILL: nothing released it)
    _commit_all(local, run_id, name, [1])  # batch 2's task was lost with the planner's worker

    later = local.settings.recover_grace + local.settings.planner_ttl + 1
    report = send.sweep(local, after=later)
    assert report.resent[run_id] == [2] and send.synced == []  # its staged batches land first
    _commit_all(local, run_id, name, [2])
    assert send.sweep(local, after=later).resumed == [run_id] and send.synced == [run_id]
    assert send.sweep(local, after=local.settings.planner_ttl - 1).resumed == []  # once: the sync is on its way

    resumed = flow.start(local, run_id, name, dispatch=send.batch)  # the sync task, sent again by the sweep
    assert resumed.result["dispatched"] == 5 and send.numbers(run_id)[-3:] == [3, 4, 5]
    done = _commit_all(local, run_id, name, [3, 4, 5])
    assert done[-1].finalize or resumed.finalize
    summary = flow.finalize(local, run_id, name, 0, owner="f")
    # the resumed planner found rows 1..20 on the remote: sent by this run, not "unchanged"
    assert (summary["inserted"], summary["unchanged"], summary["batches"], summary["ok"]) == (50, 0, 5, True)
    assert _ids(sandbox, ds) == list(range(1, 51))


def test_a_batch_lost_again_and_again_ends_the_run_failed_saying_why(local: Fleet, sandbox: SandboxServer) -> None:
    fleet = Fleet(replace(local.settings, recover_attempts=1), local.redis, local.registry)
    name = f"again{_id()}"
    _config(fleet, sandbox, name, 8, batch_size=4)
    run_id = f"run-{_id()}"
    send = Senders.new()
    flow.start(fleet, run_id, name, dispatch=send.batch)
    _commit_all(fleet, run_id, name, [1])
    later = fleet.settings.recover_grace + 1
    assert send.sweep(fleet, after=later).resent[run_id] == [2]  # lost once: sent again
    # ...and the task sent again is lost too
    report = send.sweep(fleet, after=2 * later)
    assert run_id in report.failed and run_id not in report.resent
    assert send.sweep(fleet, after=3 * later).finalized == [run_id]
    summary = flow.finalize(fleet, run_id, name, 0, owner="f")
    assert summary["ok"] is False and summary["inserted"] == 4
    assert any("Batch 2: its task was lost 2 times" in e for e in summary["errors"])
    assert history.last(fleet.redis, name, 0)[0]["ok"] is False
    assert fleet.run_lock(name, 0).holder() is None


def test_a_run_whose_state_vanished_ends_failed_and_the_next_one_converges(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"gone{_id()}"
    ds = _config(local, sandbox, name, 12, batch_size=4)
    run_id = f"run-{_id()}"
    flow.start(local, run_id, name, dispatch=Senders.new().batch)
    _commit_all(local, run_id, name, [1])
    for key in list(local.redis.scan_iter(match=f"fleet:run:{run_id}*")):  # Redis lost the run's data
        local.redis.delete(key)
    late = flow.commit(local, run_id, 2, name, 0)  # a commit task still in a worker's hands
    assert late.ended is not None and late.ended["ok"] is False and "vanished" in late.ended["errors"][0]
    assert flow.commit(local, run_id, 3, name, 0).ended is None  # reported once
    last = history.last(local.redis, name, 0)[0]
    assert last["run_id"] == run_id and last["ok"] is False
    assert local.run_lock(name, 0).holder() is None
    nxt = flow.start(local, f"next-{_id()}", name, dispatch=Senders.new().batch)
    _commit_all(local, nxt.result["run_id"], name, list(range(1, nxt.result["dispatched"] + 1)))
    assert flow.finalize(local, nxt.result["run_id"], name, 0, owner="f")["ok"]
    assert _ids(sandbox, ds) == list(range(1, 13))


def test_a_lock_held_by_a_run_that_never_got_going_is_freed(local: Fleet, sandbox: SandboxServer) -> None:
    name = f"stale{_id()}"
    _config(local, sandbox, name, 4)
    dead = f"dead-{_id()}"
    held_for = local.settings.recover_grace + 5  # taken that long ago, never renewed since
    local.redis.set(keys.lock(name, 0), dead, px=int((local.settings.lock_ttl - held_for) * 1000))
    assert flow.start(local, f"skip-{_id()}", name).result["skipped"] is True
    assert dead in Senders.new().sweep(local).freed
    assert flow.start(local, f"next-{_id()}", name, dispatch=Senders.new().batch).result["dispatched"] == 1


def test_encrypted_fields_are_staged_encrypted_and_staged_rows_leave_with_their_outcome(
        local: Fleet, sandbox: SandboxServer) -> None:
    from fliplet_workers.core.crypto import decrypt

    name = f"enc{_id()}"
    ds = _config(local, sandbox, name, 6, batch_size=4, encrypt={"fields": ["email"]})
    run_id = f"run-{_id()}"
    flow.start(local, run_id, name, dispatch=Senders.new().batch)
    staged = [local.redis.get(keys.batch(run_id, n)) for n in (1, 2)]
    assert all(staged) and not any("@example.org" in str(raw) for raw in staged)  # no plaintext in Redis
    emails = [e["data"]["email"] for raw in staged for e in orjson.loads(str(raw))["entries"]]
    assert len(emails) == 6 and all(v.startswith("U2FsdGVkX1") for v in emails)
    assert "User 1" in str(staged[0])  # the fields not listed stay as they are

    _commit_all(local, run_id, name, [1])
    assert local.redis.get(keys.batch(run_id, 1)) is None  # gone as soon as the batch has its outcome
    assert local.redis.get(keys.batch(run_id, 2)) is not None
    _commit_all(local, run_id, name, [2])
    assert flow.finalize(local, run_id, name, 0, owner="f")["inserted"] == 6
    keystore = next(d for d in sandbox.store.state()["dataSources"] if d.get("type") == "keystore")
    key = decrypt(sandbox.store.entries(keystore["id"])[0]["data"]["content"], f"1-{keystore['id']}")
    values = sorted(decrypt(e["data"]["email"], key) for e in sandbox.store.entries(ds))
    assert values == sorted(f"user{i}@example.org" for i in range(1, 7))  # encrypted once, not twice


# ------------------------------------------------------------------------------------ a fleet of its own


@dataclass
class Own:
    redis: PersistentRedis
    procs: Processes
    fleet: Fleet
    app: Celery
    config_dir: str
    workers: list[Proc]


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    """Redis with an append-only file, two workers (-c 2) and a beat, all with the default settings."""
    server = PersistentRedis()
    try:
        server.start()
    except ServerError as error:
        pytest.fail(f"cannot start redis-server: {error}", pytrace=False)
    config_dir = str(tmp_path_factory.mktemp("own-configs"))
    env = fleet_env(server.url, config_dir)
    for name in [k for k in env if k.startswith("FLIPLET_") and k not in ("FLIPLET_BROKER_URL", "FLIPLET_CONFIG_DIR",
                                                                          "FLIPLET_TIMEZONE", "FLIPLET_AGENT_LOG")]:
        del env[name]  # the product's defaults, whatever this shell has set
    procs = Processes(env, str(tmp_path_factory.mktemp("own-logs")))
    settings = FleetSettings.from_env(env)
    try:
        procs.beat()
        workers = [procs.worker(concurrency=2), procs.worker(concurrency=2)]
        yield Own(server, procs, Fleet.create(settings), create_app(settings), config_dir, workers)
    finally:
        procs.stop_all()
        server.stop()


def _own_config(own: Own, sandbox: SandboxServer, data_dir: str, rows: int, prefix: str,
                **extra: Any) -> tuple[str, int]:
    name = f"{prefix}{_id()}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(data_dir, f"{name}.db")
    make_source(db, rows)
    write_config(own.config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, **extra)
    return name, ds


def _in_flight(own: Own, run_id: str, numbers: range) -> tuple[int, Proc] | None:
    """A batch of the run being sent now and the worker (process group) sending it."""
    groups = {os.getpgid(w.pid): w for w in own.workers if w.alive()}
    for number in numbers:
        state = own.fleet.batch_state(run_id, number).load()
        if state.get("inflight") and "outcome" not in state:
            try:
                worker = groups.get(os.getpgid(int(state["worker"].rsplit(":", 1)[1])))
            except ProcessLookupError:
                continue
            if worker is not None:
                return number, worker
    return None


@pytest.mark.integration
def test_a_whole_worker_killed_mid_run_lands_every_row_once_within_two_minutes(
        own: Own, sandbox: SandboxServer, data_dir: str) -> None:
    assert own.fleet.settings.visibility_timeout == 3600  # the broker would give the tasks back in an hour
    name, ds = _own_config(own, sandbox, data_dir, 600, "sigkill", batch_size=10)  # 60 batches
    sandbox.faults.set(commit_delay_ms=300)
    run_id = own.app.send_task("fliplet.sync", args=[name]).id
    number, victim = wait_for(lambda: _in_flight(own, run_id, range(5, 61)), "a batch in flight", 60, every=0.02)
    victim.kill()  # SIGKILL to its process group: the worker and its pool processes, as a host dies
    killed = time.monotonic()
    own.workers.remove(victim)
    broker = own.fleet.redis
    assert broker.hlen("unacked") >= 1  # its reserved tasks stay there until the visibility timeout

    found = wait_for(lambda: history.last(own.fleet.redis, name, 0), "the run's summary", 120, every=0.5)
    took = time.monotonic() - killed
    summary = found[0]
    ids = _ids(sandbox, ds)
    assert Counter(ids).most_common(1)[0][1] == 1 and ids == list(range(1, 601))  # every row, once
    assert (summary["ok"], summary["inserted"], summary["unchanged"], summary["batches"]) == (True, 600, 0, 60)
    assert took < 120, f"recovered in {took:.0f}s"
    state = own.fleet.batch_state(run_id, number).load()
    assert int(state["starts"]) >= 2  # started by the killed worker, finished by the other one
    assert own.app.AsyncResult(run_id).get(timeout=30)["inserted"] == 600  # the sync task id says so
    assert own.fleet.run_lock(name, 0).holder() is None

    nxt = own.app.send_task("fliplet.sync", args=[name]).get(timeout=60)  # the next trigger runs normally
    assert nxt.get("skipped") is not True and (nxt["ok"], nxt["unchanged"]) == (True, 600)
    own.workers.append(own.procs.worker(concurrency=2))
    print(f"recovered {took:.1f}s after the kill (batch {number} was in flight)")


@pytest.mark.integration
def test_a_redis_restart_mid_run_with_the_append_only_file_lands_every_row_once(
        own: Own, sandbox: SandboxServer, data_dir: str) -> None:
    name, ds = _own_config(own, sandbox, data_dir, 1200, "restart", batch_size=20)  # 60 batches
    sandbox.faults.set(commit_delay_ms=300)
    run_id = own.app.send_task("fliplet.sync", args=[name]).id
    wait_for(lambda: own.fleet.store(run_id).done_count() >= 8, "some batches done", 60, every=0.05)
    restarted = time.monotonic()
    own.redis.restart()
    found = wait_for(lambda: history.last(own.fleet.redis, name, 0), "the run's summary", 150, every=0.5)
    took = time.monotonic() - restarted
    ids = _ids(sandbox, ds)
    assert Counter(ids).most_common(1)[0][1] == 1 and ids == list(range(1, 1201))  # every row, once
    assert found[0]["run_id"] == run_id and found[0]["inserted"] == 1200, found[0]
    nxt = own.app.send_task("fliplet.sync", args=[name]).get(timeout=60)
    assert nxt.get("skipped") is not True and (nxt["ok"], nxt["unchanged"]) == (True, 1200)
    print(f"run ended {took:.1f}s after the restart: {found[0]}")


@pytest.mark.integration
def test_a_redis_restart_that_loses_the_data_ends_the_run_failed_and_the_next_trigger_converges(
        own: Own, sandbox: SandboxServer, data_dir: str) -> None:
    from fliplet_workers.fleet.outcome import RunFailed

    name, ds = _own_config(own, sandbox, data_dir, 1200, "nopersist", batch_size=20)
    sandbox.faults.set(commit_delay_ms=300)
    run_id = own.app.send_task("fliplet.sync", args=[name]).id
    wait_for(lambda: own.fleet.store(run_id).done_count() >= 8, "some batches done", 60, every=0.05)
    own.redis.restart(lose_data=True)  # as a Redis without persistence comes back: empty
    found = wait_for(lambda: history.last(own.fleet.redis, name, 0), "the lost run's summary", 120, every=0.5)
    assert found[0]["run_id"] == run_id and found[0]["ok"] is False
    assert "vanished" in found[0]["errors"][0]
    lost = own.app.AsyncResult(run_id)
    with pytest.raises(RunFailed):  # the sync task id resolves to FAILURE, saying why
        lost.get(timeout=30)
    sandbox.faults.clear()
    nxt = own.app.send_task("fliplet.sync", args=[name]).get(timeout=120)  # resolves when its run ends
    assert nxt["ok"] is True and nxt["inserted"] + nxt["unchanged"] == 1200
    ids = _ids(sandbox, ds)
    assert Counter(ids).most_common(1)[0][1] == 1 and ids == list(range(1, 1201))
