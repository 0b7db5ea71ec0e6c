"""The fleet's parts in this process, against the real Redis and sandbox (no worker): fast and exact.

Registry name resolution, locks, the beat scheduler's leadership and rescans, ``status``, and the
flow's crash recovery, driven step by step.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleetproc import make_source, write_config

from fliplet_workers.errors import ConfigError
from fliplet_workers.fleet import flow, history, keys, status
from fliplet_workers.fleet.app import RECOVER_ENTRY
from fliplet_workers.fleet.beat import ConfigScheduler, CronSchedule
from fliplet_workers.fleet.locks import Lock
from fliplet_workers.fleet.registry import Registry
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.settings import FleetSettings, SettingsError
from fliplet_workers.fliplet.client import FlipletClient
from fliplet_workers.sandbox.server import SandboxServer


def _id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def local(tmp_path: Any, settings: FleetSettings) -> Fleet:
    """A fleet whose config directory is this test's own."""
    configs = tmp_path / "configs"
    configs.mkdir()
    return Fleet.create(replace(settings, config_dir=str(configs)))


def _config(fleet: Fleet, sandbox: SandboxServer, name: str, rows: int, **extra: Any) -> int:
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(fleet.settings.config_dir, f"{name}.db")
    make_source(db, rows)
    write_config(fleet.settings.config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, **extra)
    return ds


# ------------------------------------------------------------------------------------ settings


def test_settings_come_from_the_environment() -> None:
    s = FleetSettings.from_env({"FLIPLET_BROKER_URL": "redis://:pw@h:1/2", "FLIPLET_TIMEZONE": "Europe/Dublin",
                                "FLIPLET_VISIBILITY_TIMEOUT": "7200"})
    assert (s.broker_url, s.result_backend, s.redis_url) == ("redis://:pw@h:1/2",) * 3
    assert s.timezone == "Europe/Dublin" and s.visibility_timeout == 7200 and s.config_dir == "configs"
    assert FleetSettings.from_env({}).broker_url == "redis://127.0.0.1:6379/0"
    with pytest.raises(SettingsError, match="FLIPLET_TIMEZONE"):
        FleetSettings.from_env({"FLIPLET_TIMEZONE": "Mars/Olympus"})
    with pytest.raises(SettingsError, match="FLIPLET_LOCK_TTL"):
        FleetSettings.from_env({"FLIPLET_LOCK_TTL": "soon"})


def test_celery_settings_survive_a_lost_worker(settings: FleetSettings) -> None:
    from fliplet_workers.fleet.app import celery_config

    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == settings.visibility_timeout
    assert conf["beat_scheduler"] == "fliplet_workers.fleet.beat:ConfigScheduler"
    defaults = celery_config(FleetSettings.from_env({}))
    assert defaults["broker_transport_options"]["visibility_timeout"] > defaults["task_time_limit"]


# ------------------------------------------------------------------------------------ registry


def test_names_resolve_only_to_files_inside_the_config_directory(tmp_path: Any) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "users.yml").write_text("x: 1\n")
    (configs / "twin.yml").write_text("x: 1\n")
    (configs / "twin.py").write_text("x = 1\n")
    (tmp_path / "secret.yml").write_text("x: 1\n")
    (configs / "escape.yml").symlink_to(tmp_path / "secret.yml")
    registry = Registry(str(configs))
    assert registry.resolve("users") == str(configs / "users.yml")
    assert registry.resolve("users.yml") == str(configs / "users.yml")
    for bad, why in [("../secret", "not a config name"), ("/etc/passwd", "not a config name"),
                     ("sub/users", "not a config name"), ("..", "not a config name"), ("", "not a config name"),
                     (".hidden", "not a config name"), (["users"], "not a config name"), ("nope", "no config named"),
                     ("twin", "ambiguous"), ("escape", "outside the config directory")]:
        with pytest.raises(ConfigError, match=why):
            registry.resolve(bad)


def test_scan_validates_every_file_and_reports_the_invalid_ones(local: Fleet, sandbox: SandboxServer) -> None:
    _config(local, sandbox, "good", 3, frequency="*/5 * * * *")
    _config(local, sandbox, "badcron", 3, frequency="61 * * * *")
    with open(os.path.join(local.settings.config_dir, "dup.yml"), "w") as fh:
        fh.write("auth_token: x\n")
    with open(os.path.join(local.settings.config_dir, "dup.yaml"), "w") as fh:
        fh.write("auth_token: x\n")
    scan = local.registry.scan()
    assert [f.name for f in scan.valid] == ["good"]
    problems = {f.name: f.problem for f in scan.invalid}
    assert "minute value 61 is out of range 0-59" in problems["badcron"]
    assert "2 config files are named 'dup'" in problems["dup"]


# ------------------------------------------------------------------------------------ locks


def test_locks_are_reentrant_for_their_owner_and_safe_from_others(fleet: Fleet) -> None:
    lock = Lock(fleet.redis, f"fleet:test:{_id()}", 2000)
    assert lock.claim("run-a") and lock.claim("run-a")
    assert not lock.claim("run-b") and not lock.acquire("run-b")
    assert not lock.renew("run-b") and not lock.release("run-b")
    assert lock.holder() == "run-a" and 0 < lock.ttl_seconds() <= 2
    assert lock.renew("run-a") and lock.release("run-a")
    assert lock.holder() is None and lock.claim("run-b")
    short = Lock(fleet.redis, f"fleet:test:{_id()}", 50)  # a holder that dies: the lock expires
    assert short.acquire("dead")
    assert fleet.redis.pttl(short.key) <= 50
    fleet.redis.pexpire(short.key, 1)
    import time

    time.sleep(0.01)
    assert short.claim("alive")


# ------------------------------------------------------------------------------------ beat


def test_cron_schedule_is_due_on_its_boundaries(celery_app: Any) -> None:
    schedule = CronSchedule("*/15 * * * *", "Europe/Dublin", app=celery_app)
    fixed = datetime(2024, 7, 1, 10, 7, 30, tzinfo=UTC)  # 11:07:30 in Dublin (summer time)
    schedule.nowfun = lambda: fixed
    assert schedule.is_due(fixed - timedelta(minutes=1)) == (False, 450.0)
    due, wait = schedule.is_due(fixed - timedelta(minutes=10))  # 11:00 passed since then
    assert due and wait == 450.0
    assert schedule.period() == 900.0
    assert schedule == CronSchedule("*/15  * * * *", "Europe/Dublin")
    assert schedule != CronSchedule("*/15 * * * *", "UTC")


def _scheduler(celery_app: Any, fleet: Fleet) -> ConfigScheduler:
    return ConfigScheduler(app=celery_app, fleet=fleet)


def test_beat_entries_follow_the_config_directory(local: Fleet, sandbox: SandboxServer, celery_app: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    local = Fleet(replace(local.settings, schedule_rescan=0.0), local.redis, local.registry)
    _config(local, sandbox, "alpha", 2, frequency="* * * * *")
    _config(local, sandbox, "adhoc", 2)  # no frequency: not scheduled
    beat = _scheduler(celery_app, local)
    assert set(beat.schedule) == {"alpha:0", RECOVER_ENTRY}  # and the recovery sweep, always
    assert beat.schedule[RECOVER_ENTRY].task == "fliplet.recover"
    entry = beat.schedule["alpha:0"]
    assert (entry.task, entry.args) == ("fliplet.sync", ("alpha", 0))
    assert not beat.rescan()  # nothing changed

    _config(local, sandbox, "beta", 2, frequency="0 3 * * MON")  # added
    caplog.set_level(logging.ERROR, "fliplet_workers.fleet.beat")
    _config(local, sandbox, "broken", 2, frequency="* * *")  # invalid: reported, skipped
    assert beat.rescan()
    assert set(beat.schedule) == {"alpha:0", "beta:0", RECOVER_ENTRY}
    assert beat.schedule["alpha:0"] is entry  # untouched entries keep their last run
    assert "config 'broken' is invalid and is not scheduled: " in caplog.text
    assert "expected 5 fields" in caplog.text

    _config(local, sandbox, "alpha", 2, frequency="*/10 * * * *", batch_size=7)  # edited
    os.remove(os.path.join(local.settings.config_dir, "beta.yml"))  # removed
    assert beat.rescan()
    assert set(beat.schedule) == {"alpha:0", RECOVER_ENTRY}
    assert beat.schedule["alpha:0"].schedule.expr == "*/10 * * * *"
    beat.close()


def test_only_the_leading_beat_sends(local: Fleet, sandbox: SandboxServer, celery_app: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    leader_key = f"fleet:test:leader:{_id()}"
    monkeypatch.setattr(keys, "BEAT_LEADER", leader_key)
    _config(local, sandbox, "every", 2, frequency="* * * * *")
    sent: list[tuple[str, str]] = []
    first, second = _scheduler(celery_app, local), _scheduler(celery_app, local)
    for beat in (first, second):
        monkeypatch.setattr(beat, "apply_entry", lambda entry, producer=None, b=beat: sent.append((b.beat_id, entry.name)))
        for entry in beat.schedule.values():  # a boundary has passed since the last run
            entry.last_run_at = entry.default_now() - timedelta(minutes=2)
        beat._heap = None
    first.tick()
    second.tick()
    first.tick()
    assert first.leading and not second.leading
    assert [s for s in sent if s[1] != RECOVER_ENTRY] == [(first.beat_id, "every:0")]
    assert all(beat_id == first.beat_id for beat_id, _ in sent)  # the recovery sweep too: leader only
    sent[:] = [s for s in sent if s[1] != RECOVER_ENTRY]
    first.close()  # the leader stops: the standby takes over, without replaying the old boundary
    second.tick()
    second.tick()
    assert second.leading and [s for s in sent if s[1] != RECOVER_ENTRY] == [(first.beat_id, "every:0")]
    second.close()


# ------------------------------------------------------------------------------------ status


def test_status_lists_configs_next_runs_last_runs_and_invalid_configs(local: Fleet, sandbox: SandboxServer) -> None:
    name = f"st{_id()}"
    _config(local, sandbox, name, 2, frequency="30 2 * * *")
    _config(local, sandbox, "broken", 2, frequency="99 * * * *")
    history.record(local.redis, name, 0, {"run_id": "r1", "inserted": 5, "updated": 1, "deleted": 0,
                                          "unchanged": 2, "skipped": 0, "errors": [], "seconds": 1.5,
                                          "ok": True, "finished": "2024-01-01T00:00:00Z"}, 20)
    out = io.StringIO()
    code = status.print_status(local.settings.config_dir, out=out, settings=local.settings,
                               now=lambda: datetime(2024, 1, 1, 12, 0, tzinfo=UTC))
    text = out.getvalue()
    assert code == 2  # an invalid config
    assert f"{name} operation 0 (push to data source" in text
    assert "'30 2 * * *', next run 2024-01-02 02:30 UTC" in text
    assert "ok: inserted 5, updated 1, deleted 0, unchanged 2, skipped 0, errors 0 in 1.5s (run r1)" in text
    assert "Invalid configs (1)" in text and "broken: " in text and "minute value 99" in text
    assert "eu--sandbox-token" not in text

    gone = replace(local.settings, redis_url="redis://127.0.0.1:1/0")
    out = io.StringIO()
    os.remove(os.path.join(local.settings.config_dir, "broken.yml"))
    assert status.print_status(None, out=out, settings=gone) == 1
    assert "is not reachable" in out.getvalue() and f"{name} operation 0" in out.getvalue()


# ------------------------------------------------------------------------------------ the flow


class Sent:
    """Stands in for the Celery dispatch: records the batches the planner sends, in order."""

    def __init__(self, die_after: int | None = None) -> None:
        self.numbers: list[int] = []
        self.die_after = die_after

    def __call__(self, run_id: str, number: int, file_jobs: int, config: str, operation: int) -> None:
        self.numbers.append(number)
        if self.die_after is not None and len(self.numbers) >= self.die_after:
            raise WorkerDied


class WorkerDied(BaseException):
    """Like a SIGKILL mid-planning: no handler of the planner runs (``except Exception`` skips it)."""


def _run_steps(fleet: Fleet, run_id: str, started: flow.Started, numbers: list[int]) -> list[flow.Committed]:
    config, op = started.result["config"], started.result["operation"]
    return [flow.commit(fleet, run_id, n, config, op) for n in numbers]


def test_a_batch_whose_worker_died_mid_commit_is_replanned_not_duplicated(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"crash{_id()}"
    ds = _config(local, sandbox, name, 25, batch_size=10)
    run_id = f"run-{_id()}"
    sent = Sent()
    started = flow.start(local, run_id, name, dispatch=sent)
    assert sent.numbers == [1, 2, 3] and started.result["dispatched"] == 3 and not started.finalize
    assert local.run_lock(name, 0).holder() == run_id
    assert flow.start(local, f"other-{_id()}", name).result["skipped"] is True  # one run at a time

    # A worker marks batch 2 in flight, sends it, the server applies it, and the worker dies.
    state = local.batch_state(run_id, 2)
    state.begin("deadhost:1")
    batch = local.store(run_id).batch(2)
    assert batch is not None
    client = FlipletClient("eu--sandbox-token", sandbox.url)
    client.commit(ds, batch.body((), False))
    client.close()

    done = _run_steps(local, run_id, started, sent.numbers)
    assert [d.finalize for d in done] == [False, False, True]
    assert done[1].result["already_applied"] == 10 and done[1].result["inserted"] == 10
    assert local.batch_state(run_id, 2).load().get("attempts", "0") == "0"  # nothing had to be re-sent
    again = flow.commit(local, run_id, 2, name, 0)  # a redelivered commit only reports
    assert again.result["already_applied"] == 10 and again.finalize  # (finalize is sent again, idempotent)

    summary = flow.finalize(local, run_id, name, 0, owner="t1")
    assert (summary["inserted"], summary["batches"], summary["ok"], summary["errors"]) == (25, 3, True, [])
    assert flow.finalize(local, run_id, name, 0, owner="t2") == summary
    keys_seen = sorted(e["data"]["id"] for e in sandbox.store.entries(ds))
    assert keys_seen == list(range(1, 26))  # every row exactly once
    assert local.run_lock(name, 0).holder() is None
    assert local.store(run_id).batch(1) is None  # staged rows dropped
    assert history.last(local.redis, name, 0)[0]["run_id"] == run_id

    rerun = flow.start(local, f"again-{_id()}", name)  # nothing changed: done inline
    assert rerun.batches == [] and rerun.result["unchanged"] == 25 and rerun.result["inserted"] == 0


def test_a_superseded_run_stops_sending(local: Fleet, sandbox: SandboxServer) -> None:
    name = f"sup{_id()}"
    ds = _config(local, sandbox, name, 12, batch_size=5)
    run_id = f"run-{_id()}"
    sent = Sent()
    started = flow.start(local, run_id, name, dispatch=sent)
    local.redis.set(keys.lock(name, 0), "newer-run")  # the lock lapsed and a newer run took it
    done = _run_steps(local, run_id, started, sent.numbers)
    assert all(d.result["committed"] is False for d in done) and done[-1].finalize
    summary = flow.finalize(local, run_id, name, 0, owner="t")
    assert not summary["ok"] and "superseded by run newer-run" in summary["errors"][0]
    assert sandbox.store.entries(ds) == []
    assert local.run_lock(name, 0).holder() == "newer-run"  # not released by the old run


def test_a_redelivered_sync_resumes_its_run(local: Fleet, sandbox: SandboxServer) -> None:
    name = f"res{_id()}"
    ds = _config(local, sandbox, name, 9, batch_size=4)
    run_id = f"run-{_id()}"
    sent = Sent()
    flow.start(local, run_id, name, dispatch=sent)
    flow.commit(local, run_id, 1, name, 0)
    again = flow.start(local, run_id, name)  # same task id: its worker died after planning
    assert again.batches == [2, 3] and again.result["resumed"] is True
    _run_steps(local, run_id, again, again.batches)
    assert flow.finalize(local, run_id, name, 0, owner="t")["inserted"] == 9
    assert len(sandbox.store.entries(ds)) == 9 and sent.numbers == [1, 2, 3]


def test_a_sync_that_died_while_planning_waits_for_its_staged_batches_then_plans_the_rest(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"mid{_id()}"
    ds = _config(local, sandbox, name, 9, batch_size=4)
    run_id = f"run-{_id()}"
    with pytest.raises(WorkerDied):  # batch 1 is staged and sent, then the planner's worker dies
        flow.start(local, run_id, name, dispatch=Sent(die_after=1))
    meta = local.store(run_id).meta()
    assert meta is not None and meta.state == "planning" and meta.staged == 1

    resent = Sent()
    waiting = flow.start(local, run_id, name, dispatch=resent)  # the sync task, delivered again
    assert waiting.retry_in is not None and resent.numbers == [1]  # batch 1 sent again, once
    assert flow.start(local, run_id, name, dispatch=resent).retry_in is not None and resent.numbers == [1]
    first = flow.commit(local, run_id, 1, name, 0)
    assert first.result["inserted"] == 4 and not first.finalize  # no last batch while planning

    rest = flow.start(local, run_id, name, dispatch=resent)  # batch 1 has its outcome: plan the rest
    assert resent.numbers == [1, 2, 3] and rest.result["dispatched"] == 3 and not rest.finalize
    done = _run_steps(local, run_id, rest, [2, 3])
    assert done[-1].finalize
    summary = flow.finalize(local, run_id, name, 0, owner="t")
    assert (summary["inserted"], summary["batches"], summary["ok"]) == (9, 3, True)
    assert _ids(sandbox, ds) == list(range(1, 10))  # every row exactly once


def test_bad_names_and_operations_are_refused(local: Fleet, sandbox: SandboxServer) -> None:
    _config(local, sandbox, "one", 1)
    assert "not a config name" in flow.start(local, "r", "../one").result["errors"][0]
    assert "operation 3 does not exist" in flow.start(local, "r", "one", 3).result["errors"][0]
    assert flow.start(local, "r", "one", True).result["ok"] is False


def test_a_run_whose_lock_lapsed_continues_only_if_no_newer_run_started(
        local: Fleet, sandbox: SandboxServer) -> None:
    name = f"lapse{_id()}"
    ds = _config(local, sandbox, name, 8, batch_size=4)
    old = f"old-{_id()}"
    old_sent = Sent()
    started = flow.start(local, old, name, dispatch=old_sent)
    local.redis.delete(keys.lock(name, 0))  # the lock lapsed (its holders were gone for too long)...
    assert flow.commit(local, old, 1, name, 0).result["committed"] is True  # ...no newer run: carry on
    assert local.run_lock(name, 0).holder() == old

    local.redis.delete(keys.lock(name, 0))  # lapsed again, and this time a newer run starts and ends
    newer_sent = Sent()
    newer = flow.start(local, f"new-{_id()}", name, dispatch=newer_sent)
    _run_steps(local, newer.result["run_id"], newer, newer_sent.numbers)
    flow.finalize(local, newer.result["run_id"], name, 0, owner="n")
    assert local.run_lock(name, 0).holder() is None
    late = flow.commit(local, old, 2, name, 0)  # the old run's batch 2, redelivered late: not sent
    assert late.result["committed"] is False and "superseded" in late.result["errors"][0]
    assert flow.start(local, old, name).result["skipped"] is True  # nor is its planner resumed
    assert _ids(sandbox, ds) == list(range(1, 9)) and old_sent.numbers == [1, 2] and started.result["dispatched"] == 2
    # The superseded run is still listed active: the recovery sweep would end it. Other tests sweep this
    # Redis and count what they find, so it is taken off the list here.
    local.redis.hdel(keys.ACTIVE, old)


def _ids(sandbox: SandboxServer, ds: int) -> list[int]:
    return sorted(e["data"]["id"] for e in sandbox.store.entries(ds))


def test_encrypted_fields_through_the_fleet_steps_with_the_keystore(local: Fleet, sandbox: SandboxServer) -> None:
    """The planner creates the keystore key (as the foreground agent does); commit steps encrypt with it;
    a second run compares plaintext and sends nothing."""
    from fliplet_workers.core.crypto import decrypt

    name = f"enc{_id()}"
    ds = _config(local, sandbox, name, 6, batch_size=4, encrypt={"fields": ["email"]})
    run_id = f"run-{_id()}"
    sent = Sent()
    started = flow.start(local, run_id, name, dispatch=sent)
    assert sent.numbers == [1, 2]
    _run_steps(local, run_id, started, sent.numbers)
    assert flow.finalize(local, run_id, name, 0, owner="t")["inserted"] == 6

    keystore = [d for d in sandbox.store.state()["dataSources"] if d.get("type") == "keystore"]
    assert len(keystore) == 1 and keystore[0]["entries"] == 1  # one key, created by the planner
    stored = sandbox.store.entries(keystore[0]["id"])[0]["data"]["content"]
    key = decrypt(stored, f"1-{keystore[0]['id']}")  # the default salt: <organization id>-<keystore id>
    entries = sandbox.store.entries(ds)
    assert all(e["data"]["email"].startswith("U2FsdGVkX1") for e in entries)
    assert sorted(decrypt(e["data"]["email"], key) for e in entries) == sorted(
        f"user{i}@example.org" for i in range(1, 7))

    again = flow.start(local, f"again-{_id()}", name, dispatch=Sent())
    assert again.result["unchanged"] == 6 and again.result["inserted"] == 0  # plaintext compared
