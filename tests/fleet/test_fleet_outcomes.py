"""Failed runs as operators see them: the sync task id resolves to FAILURE (result backend and Flower),
the config's webhook hears of the failure and of the recovery, the metrics endpoint counts both
runs, and a worker started under a taken name says so. Real redis-server, workers, Flower, sandbox.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from celery import Celery
from fleetproc import REPO, TOKEN, make_source, wait_for, write_config
from fleetproc import Fleet as Processes
from hookreceiver import Receiver
from servers import free_port

from fliplet_workers.fleet import history
from fliplet_workers.fleet.outcome import RunFailed
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.sandbox.server import SandboxServer

pytestmark = pytest.mark.integration
AUTH = ("ops", "flower-pass")


@pytest.fixture(scope="module")
def flower(processes: Processes, workers: list, celery_app: Celery) -> Iterator[str]:
    port = free_port()
    proc = processes.flower(port, env=dict(processes.env, FLOWER_BASIC_AUTH=":".join(AUTH)))
    base = f"http://127.0.0.1:{port}"

    def sees_a_sync() -> bool:
        if not proc.alive():
            raise AssertionError(f"flower exited:\n{proc.tail()}")
        try:
            requests.get(f"{base}/healthcheck", timeout=2)
        except requests.RequestException:
            return False
        probe = celery_app.send_task("fliplet.sync", args=["no-such-config"])
        probe.get(timeout=30, propagate=False)
        with contextlib.suppress(AssertionError):
            return bool(wait_for(lambda: _info(base, probe.id), "", 3))
        return False

    wait_for(sees_a_sync, "flower to receive task events", 90, every=0)
    try:
        yield base
    finally:
        proc.stop()


def _info(base: str, task_id: str) -> dict[str, Any] | None:
    answer = requests.get(f"{base}/api/task/info/{task_id}", auth=AUTH, timeout=5)
    return dict(answer.json()) if answer.status_code == 200 else None


def _config(config_dir: str, data_dir: str, sandbox: SandboxServer, rows: int, **extra: Any) -> tuple[str, int]:
    name = f"out{uuid.uuid4().hex[:8]}"
    ds = sandbox.store.create_data_source(name)
    db = os.path.join(data_dir, f"{name}.db")
    make_source(db, rows)
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=ds, database=db, **extra)
    return name, ds


@contextlib.contextmanager
def _metrics_server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "metrics", "--port", str(port)],
                            env=dict(env, FLIPLET_METRICS_BASIC_AUTH="prom:scrape-pass"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"metrics exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            requests.get(url, timeout=2)
            return True
        except requests.RequestException:
            return False

    try:
        wait_for(up, "the metrics endpoint", 30)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
        if line.startswith(name + "{"):
            inside = line[len(name) + 1:line.index("}")]
            if ",".join(sorted(inside.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}} in:\n{text}")


def test_a_failed_run_is_a_failure_then_the_recovery_is_announced_and_counted(
        flower: str, env: dict[str, str], fleet: Fleet, celery_app: Celery, sandbox: SandboxServer,
        config_dir: str, data_dir: str) -> None:
    with Receiver() as hook:
        name, ds = _config(config_dir, data_dir, sandbox, 30, batch_size=10, retries=1, retry_delay=0.1,
                           alert_webhook=hook.url)
        sandbox.faults.set(commit=["error"] * 200)  # every commit of every batch fails, every retry
        sync = celery_app.send_task("fliplet.sync", args=[name])
        with pytest.raises(RunFailed) as failed:
            sync.get(timeout=90)
        assert sync.state == "FAILURE" and celery_app.AsyncResult(sync.id).state == "FAILURE"
        summary = failed.value.summary
        assert summary["run_id"] == sync.id and summary["ok"] is False and summary["batches"] == 3
        assert summary["inserted"] == 0 and summary["errors"] and summary["retries"] >= 3
        assert f"Run {sync.id} of {name} operation 0 failed: " in str(failed.value)
        info = wait_for(lambda: (i := _info(flower, sync.id)) and i["state"] == "FAILURE" and i,
                        "flower to show the sync as failed", 30)
        assert "RunFailed" in info["exception"] and info["name"] == "fliplet.sync"
        assert requests.get(f"{flower}/api/task/info/{sync.id}", timeout=5).status_code == 401

        def finalize_failed() -> bool:  # the finalize step itself failed too
            finals = requests.get(f"{flower}/api/tasks", params={"taskname": "fliplet.finalize"}, auth=AUTH,
                                  timeout=5).json()
            return any(sync.id in (t.get("args") or "") and t["state"] == "FAILURE" for t in finals.values())

        wait_for(finalize_failed, "flower to show the finalize step as failed", 30)

        failure = wait_for(lambda: [b for b in hook.bodies if b.get("config") == name], "the failure alert", 30)[0]
        assert failure["event"] == "failed" and failure["ok"] is False and failure["run_id"] == sync.id
        assert failure["text"].startswith(":x: Fliplet sync failed: " + name)
        assert (failure["operation"], failure["inserted"], failure["batches"]) == (0, 0, 3)
        assert failure["errors"] and "seconds" in failure
        assert TOKEN not in str(failure) and "secret-path" not in str(failure)

        sandbox.faults.clear()
        again = celery_app.send_task("fliplet.sync", args=[name])
        ended = again.get(timeout=90)  # the next run succeeds: SUCCESS, with the summary as result
        assert again.state == "SUCCESS" and ended["ok"] and ended["inserted"] == 30 and ended["run_id"] == again.id
        wait_for(lambda: hook.events(name) == ["failed", "recovered"], "the recovery alert", 30)
        recovery = [b for b in hook.bodies if b.get("config") == name][1]
        assert recovery["ok"] is True and recovery["inserted"] == 30 and recovery["errors"] == []
        info = wait_for(lambda: (i := _info(flower, again.id)) and i["state"] == "SUCCESS" and i,
                        "flower to show the sync as succeeded", 30)
        assert "'inserted': 30" in info["result"]

        third = celery_app.send_task("fliplet.sync", args=[name]).get(timeout=60)  # ok after ok: no alert
        assert third["ok"] and third["unchanged"] == 30
    assert hook.events(name) == ["failed", "recovered"]
    assert sorted(e["data"]["id"] for e in sandbox.store.entries(ds)) == list(range(1, 31))

    runs = history.last(fleet.redis, name, 0, 10)
    with _metrics_server(env) as url:
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, auth=("prom", "wrong"), timeout=5).status_code == 401
        answer = requests.get(url, auth=("prom", "scrape-pass"), timeout=5)
        assert answer.status_code == 200
        text = answer.text
    at = {"config": name, "operation": "0"}
    assert _sample(text, "fliplet_runs_total", outcome="failed", **at) == 1
    assert _sample(text, "fliplet_runs_total", outcome="ok", **at) == 2
    assert _sample(text, "fliplet_rows_total", action="inserted", **at) == 30
    assert _sample(text, "fliplet_rows_total", action="unchanged", **at) == 30
    assert _sample(text, "fliplet_rows_total", action="deleted", **at) == 0
    assert _sample(text, "fliplet_commit_retries_total", **at) == sum(r["retries"] for r in runs) >= 3
    assert _sample(text, "fliplet_last_run_ok", **at) == 1
    assert _sample(text, "fliplet_last_run_duration_seconds", **at) == pytest.approx(runs[0]["seconds"], abs=0.01)
    assert _sample(text, "fliplet_last_success_timestamp_seconds", **at) > 0
    assert _sample(text, "fliplet_redis_up") == 1
    assert "gen" not in "".join(line for line in text.splitlines() if line.startswith("fliplet_"))  # no pid labels
    # Long after both ends, nothing overwrote the outcomes (the sync task returned after dispatching).
    assert celery_app.AsyncResult(sync.id).state == "FAILURE" and celery_app.AsyncResult(again.id).state == "SUCCESS"
    stored = fleet.redis.get(f"celery-task-meta-{sync.id}")
    assert stored and '"name": "fliplet.sync"' in stored and name in stored  # still says which task and config


def test_the_sync_task_reports_only_what_ended() -> None:
    """A plan is not an outcome: the sync task leaves it to finalize (Ignore keeps STARTED)."""
    from celery.exceptions import Ignore

    from fliplet_workers.fleet import tasks

    ended = {"run_id": "r", "config": "nope", "operation": 0, "ok": True, "errors": [], "dry_run": True}
    assert tasks._outcome(ended) == ended
    with pytest.raises(RunFailed, match="Run r of nope operation 0 failed: boom"):
        tasks._outcome(ended | {"ok": False, "errors": ["boom"]})
    with pytest.raises(Ignore):
        tasks._outcome({"run_id": "r", "config": "nope", "operation": 0, "dispatched": 3, "plan": {}})
    skipped = {"run_id": "r", "config": "nope", "operation": 0, "skipped": True, "reason": "run q is in progress"}
    assert tasks._outcome(skipped) == skipped
    rebuilt = RunFailed(*RunFailed.of(ended | {"ok": False, "errors": ["a", "b"]}).args)  # as Celery rebuilds it
    assert rebuilt.summary["errors"] == ["a", "b"] and str(rebuilt).endswith("failed: a (+1 more error(s))")


def test_a_run_that_cannot_start_is_a_failure_too(workers: list, celery_app: Celery, sandbox: SandboxServer,
                                                  config_dir: str, data_dir: str) -> None:
    name, _ = _config(config_dir, data_dir, sandbox, 5)
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=987654, database=os.path.join(data_dir, f"{name}.db"))
    missing = celery_app.send_task("fliplet.sync", args=[name])  # a data source that does not exist: 404
    with pytest.raises(RunFailed) as failed:
        missing.get(timeout=60)
    assert missing.state == "FAILURE" and failed.value.summary["ok"] is False and failed.value.summary["errors"]
    unknown = celery_app.send_task("fliplet.sync", args=["no-such-config-at-all"])
    with pytest.raises(RunFailed, match="there is no config named 'no-such-config-at-all'"):
        unknown.get(timeout=60)
    assert unknown.state == "FAILURE"


def test_a_worker_started_under_a_taken_name_warns(processes: Processes, workers: list) -> None:
    taken = workers[0]
    args = [str(a) for a in taken.popen.args]
    name = args[args.index("-n") + 1]  # e.g. w1@%h
    twin = processes._spawn("twin", ["worker", "-l", "info", "-P", "solo", "-n", name,
                                     "--without-mingle", "--without-gossip"])
    try:
        wait_for(lambda: "ready." in twin.text(), f"the twin worker to start:\n{twin.tail()}", 60)
        assert "Another worker named " in twin.text() and "-n worker1@%h" in twin.text()
    finally:
        twin.stop()
    assert "Another worker named" not in taken.text()  # the first one started alone


def test_flower_metrics_ask_for_the_same_credentials_as_its_pages(flower: str) -> None:
    """Flower 2 serves /metrics without its basic auth; loaded through our app, it asks for it."""
    assert requests.get(f"{flower}/metrics", timeout=5).status_code == 401
    assert requests.get(f"{flower}/metrics", auth=("ops", "wrong"), timeout=5).status_code == 401
    answer = requests.get(f"{flower}/metrics", auth=AUTH, timeout=5)
    assert answer.status_code == 200 and "flower_events_total" in answer.text
    assert requests.get(f"{flower}/api/workers", timeout=5).status_code == 401  # as before


def test_only_the_flower_command_is_patched() -> None:
    from fliplet_workers.fleet.flower_auth import serving_flower

    assert serving_flower(["celery", "-A", "fliplet_workers", "flower", "--port=5555"])
    assert not serving_flower(["celery", "-A", "fliplet_workers", "worker", "-n", "w1@%h"])
