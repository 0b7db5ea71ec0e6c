"""The fleet as operators run it: real redis-server, two real Celery worker processes, Flower, the
sandbox, and ``celery call`` from a shell. Every wait is a bounded poll.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from typing import Any

import pytest
import requests
from celery import Celery
from fleetproc import Fleet as Processes
from fleetproc import make_source, wait_for, write_config
from servers import free_port

from fliplet_workers.fleet import history, keys
from fliplet_workers.fleet.outcome import RunFailed
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.sandbox.server import SandboxServer

pytestmark = pytest.mark.integration


def _config(config_dir: str, data_dir: str, sandbox: SandboxServer, rows: int, prefix: str, **extra: Any) -> tuple[str, int]:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(data_dir, f"{name}.db")
    make_source(db, rows)
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, **extra)
    return name, ds


def _ids(sandbox: SandboxServer, ds: int) -> list[int]:
    return sorted(e["data"]["id"] for e in sandbox.store.entries(ds))


def _summary(fleet: Fleet, name: str, timeout: float = 60) -> dict[str, Any]:
    found = wait_for(lambda: history.last(fleet.redis, name, 0), f"a run summary of {name}", timeout)
    return dict(found[0])


def test_an_adhoc_celery_call_lands_its_rows(workers: list, processes: Processes, fleet: Fleet, celery_app: Celery,
                                             sandbox: SandboxServer, config_dir: str, data_dir: str) -> None:
    name, ds = _config(config_dir, data_dir, sandbox, 250, "adhoc", batch_size=40)
    task_id = processes.call("fliplet.sync", [name])
    ended = celery_app.AsyncResult(task_id).get(timeout=60)  # the sync task id resolves to the run's end
    assert (ended["inserted"], ended["batches"], ended["ok"], ended["run_id"]) == (250, 7, True, task_id)
    summary = _summary(fleet, name)
    assert (summary["inserted"], summary["batches"], summary["ok"], summary["run_id"]) == (250, 7, True, task_id)
    assert _ids(sandbox, ds) == list(range(1, 251))

    again = celery_app.AsyncResult(processes.call("fliplet.sync", [name])).get(timeout=60)
    assert (again["inserted"], again["unchanged"], again["batches"]) == (0, 250, 0)  # inline: nothing to commit

    dry_name, dry_ds = _config(config_dir, data_dir, sandbox, 30, "dry")
    dry = celery_app.AsyncResult(processes.call("fliplet.sync", [dry_name], {"dry_run": True})).get(timeout=60)
    assert dry["dry_run"] is True and dry["inserted"] == 30 and sandbox.store.entries(dry_ds) == []

    refused = celery_app.AsyncResult(processes.call("fliplet.sync", ["../" + name]))
    with pytest.raises(RunFailed) as failed:  # a failed run is a FAILURE
        refused.get(timeout=60)
    assert refused.state == "FAILURE" and "is not a config name" in failed.value.summary["errors"][0]


def test_two_triggers_of_one_operation_give_one_run(workers: list, fleet: Fleet, celery_app: Celery,
                                                    sandbox: SandboxServer, config_dir: str, data_dir: str) -> None:
    name, ds = _config(config_dir, data_dir, sandbox, 120, "twice", batch_size=20)
    sandbox.faults.set(data_delay_ms=800, commit_delay_ms=150)  # a run long enough to overlap
    first = celery_app.send_task("fliplet.sync", args=[name])
    second = celery_app.send_task("fliplet.sync", args=[name])
    results = [first.get(timeout=60), second.get(timeout=60)]
    assert sorted(bool(r.get("skipped")) for r in results) == [False, True]
    skipped = next(r for r in results if r.get("skipped"))
    ran = next(r for r in results if not r.get("skipped"))
    assert skipped["reason"] == f"run {ran['run_id']} is in progress"
    summary = _summary(fleet, name)
    assert summary["inserted"] == 120 and summary["run_id"] == ran["run_id"]
    assert len(history.last(fleet.redis, name, 0, 10)) == 1
    assert _ids(sandbox, ds) == list(range(1, 121))


def test_flower_lists_the_finished_syncs_with_their_summaries(
        workers: list, processes: Processes, fleet: Fleet, celery_app: Celery, sandbox: SandboxServer,
        config_dir: str, data_dir: str) -> None:
    port = free_port()
    env = dict(processes.env, FLOWER_BASIC_AUTH="ops:flower-pass")
    flower = processes.flower(port, env=env)
    base = f"http://127.0.0.1:{port}"
    auth = ("ops", "flower-pass")

    def up() -> bool:
        try:
            return requests.get(f"{base}/healthcheck", timeout=2).status_code == 200
        except requests.RequestException:
            if not flower.alive():
                raise AssertionError(f"flower exited:\n{flower.tail()}") from None
            return False

    wait_for(up, f"flower on port {port}", 60)
    assert requests.get(f"{base}/api/tasks", timeout=5).status_code == 401  # basic auth is on

    def tasks(name: str) -> dict[str, Any]:
        answer = requests.get(f"{base}/api/tasks", params={"taskname": name}, auth=auth, timeout=5)
        answer.raise_for_status()
        return dict(answer.json())

    # Flower sees the events sent after it subscribed: warm up until it sees a sync at all.
    def sees_a_sync() -> bool:
        probe = celery_app.send_task("fliplet.sync", args=["no-such-config"])
        probe.get(timeout=30, propagate=False)  # an unknown config: a FAILURE
        return wait_or_false(lambda: probe.id in tasks("fliplet.sync"), 3)

    wait_for(sees_a_sync, "flower to receive task events", 60, every=0)

    name, ds = _config(config_dir, data_dir, sandbox, 60, "flower", batch_size=25)
    sync = celery_app.send_task("fliplet.sync", args=[name])
    run_id = sync.get(timeout=60)["run_id"]
    summary = _summary(fleet, name)

    def finished() -> dict[str, Any] | None:
        listed = tasks("fliplet.finalize")
        done = [t for t in listed.values() if run_id in (t.get("args") or "") and t.get("state") == "SUCCESS"]
        return done[0] if done else None

    final = wait_for(finished, "flower to list the finalize task", 30)
    assert name in final["args"] and "'inserted': 60" in final["result"] and "'seconds': " in final["result"]
    syncs = tasks("fliplet.sync")
    assert syncs[sync.id]["state"] == "SUCCESS" and name in syncs[sync.id]["args"]
    assert f"'run_id': '{run_id}'" in syncs[sync.id]["result"]
    commits = [t for t in tasks("fliplet.commit").values() if run_id in (t.get("args") or "")]
    assert len(commits) == 3 and all(name in t["args"] for t in commits)
    everything = requests.get(f"{base}/api/tasks", auth=auth, timeout=5).text
    assert "eu--sandbox-token" not in everything  # no secret in any argument or result
    assert summary["inserted"] == 60 and _ids(sandbox, ds) == list(range(1, 61))
    flower.stop()


def wait_or_false(check: Any, timeout: float) -> bool:
    try:
        wait_for(check, "", timeout)
        return True
    except AssertionError:
        return False


def test_a_worker_killed_mid_run_leaves_every_row_exactly_once(
        workers: list, processes: Processes, fleet: Fleet, celery_app: Celery, sandbox: SandboxServer,
        config_dir: str, data_dir: str) -> None:
    name, ds = _config(config_dir, data_dir, sandbox, 300, "kill", batch_size=10)
    sandbox.faults.set(commit_delay_ms=400)  # the server applies a commit 0.4 s after receiving it
    run_id = celery_app.send_task("fliplet.sync", args=[name]).id  # the run id (it ends after the kill)
    pgids = {os.getpgid(w.pid): w for w in workers if w.alive()}

    def busy_worker() -> tuple[int, Any] | None:
        """A batch of the run in flight (sent, no answer yet) and the worker process sending it."""
        for number in range(3, 31):
            state = fleet.batch_state(run_id, number).load()
            if state.get("inflight") and "outcome" not in state:
                pid = int(state["worker"].rsplit(":", 1)[1])
                try:
                    worker = pgids.get(os.getpgid(pid))
                except ProcessLookupError:
                    continue
                if worker is not None:
                    return number, worker
        return None

    number, victim = wait_for(busy_worker, "a batch in flight", 60, every=0.02)
    victim.kill()  # SIGKILL to the whole worker, as if its host died mid-commit
    assert not victim.alive()
    workers.remove(victim)

    summary = _summary(fleet, name, timeout=120)  # the other worker gets the task back after the timeout
    ids = _ids(sandbox, ds)
    assert Counter(ids).most_common(1)[0][1] == 1 and ids == list(range(1, 301))  # every row, once
    assert summary["ok"] and summary["inserted"] == 300 and summary["errors"] == []
    state = fleet.batch_state(run_id, number).load()
    assert "outcome" in state and "inflight" not in state
    assert int(state["starts"]) >= 2  # started by the killed worker, finished by the other one
    assert fleet.redis.get(keys.lock(name, 0)) is None
    workers.append(processes.worker())  # later tests find two workers again


def test_files_are_uploaded_by_their_own_tasks_before_their_batch_is_committed(
        workers: list, fleet: Fleet, celery_app: Celery, sandbox: SandboxServer, config_dir: str,
        data_dir: str, tmp_path: Any) -> None:
    import sqlite3

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in (2, 5, 9):
        (photos / f"p{i}.png").write_bytes(b"\x89PNG fake image " + bytes([i]) * 50)
    name = f"files{uuid.uuid4().hex[:8]}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(data_dir, f"{name}.db")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, photo TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?, ?)",
                         [(i, f"u{i}@example.org", f"p{i}.png" if i in (2, 5, 9) else ("missing.png" if i == 7 else ""))
                          for i in range(1, 11)])
    conn.close()
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, batch_size=4,
                 query="SELECT id, email, photo FROM users",
                 files=[{"column": "photo", "type": "local", "directory": str(photos)}])
    run_id = celery_app.send_task("fliplet.sync", args=[name]).get(timeout=60)["run_id"]
    summary = _summary(fleet, name)
    assert summary["inserted"] == 10 and summary["file_errors"] == 1 and summary["batches"] == 3
    rows = {e["data"]["id"]: e["data"] for e in sandbox.store.entries(ds)}
    assert sorted(rows) == list(range(1, 11))
    for i in (2, 5, 9):
        assert rows[i]["photo"].startswith(sandbox.url) and rows[i]["photo"].endswith(f"{i}-p{i}.png")
        assert isinstance(rows[i]["photoMediaFileId"], int)
    assert "photo" not in rows[7]  # the missing file: the row is synced without the column
    uploads = [k for k in fleet.redis.scan_iter(f"fleet:run:{run_id}:batch:*:file:*")]
    assert len(uploads) == 4  # one upload task per file named (3 found, 1 missing), results kept
