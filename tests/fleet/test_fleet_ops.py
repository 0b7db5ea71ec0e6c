"""``status`` without the secrets and as JSON, alert delivery, and the foreground agent's alerts.

Real redis-server and sandbox (and, for the worker list, the session's real workers); webhooks go to
a receiver on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from dataclasses import replace
from typing import Any

import pytest
from fleetproc import make_source, wait_for, write_config
from hookreceiver import Receiver
from servers import free_port

from fliplet_workers import alerts, cli
from fliplet_workers.config import load_config
from fliplet_workers.fleet import history, status
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.settings import FleetSettings
from fliplet_workers.redaction import register
from fliplet_workers.sandbox.server import SandboxServer


@pytest.fixture
def local(tmp_path: Any, settings: FleetSettings) -> Fleet:
    configs = tmp_path / "configs"
    configs.mkdir()
    return Fleet.create(replace(settings, config_dir=str(configs)))


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _status(fleet: Fleet) -> tuple[int, dict[str, Any], str]:
    out, text = io.StringIO(), io.StringIO()
    code = status.print_status(None, out=out, settings=fleet.settings, as_json=True, ping_timeout=0.5)
    again = status.print_status(None, out=text, settings=fleet.settings, ping_timeout=0.5)
    assert code == again  # one truth, two renderings
    return code, json.loads(out.getvalue()), text.getvalue()


# ------------------------------------------------------------------------------------ status


def test_status_without_the_secrets_says_what_a_config_needs(local: Fleet, sandbox: SandboxServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("F2_TOKEN_UNSET", raising=False)
    monkeypatch.delenv("F2_PASSWORD_UNSET", raising=False)
    name = _name("env")
    db = os.path.join(local.settings.config_dir, f"{name}.db")
    make_source(db, 3)
    write_config(local.settings.config_dir, name, api_url=sandbox.url, datasource_id=1, database=db,
                 frequency="0 3 * * *")
    path = os.path.join(local.settings.config_dir, f"{name}.yml")
    with open(path, encoding="utf-8") as fh:
        text = fh.read().replace("eu--sandbox-token", "${F2_TOKEN_UNSET}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "database_password: ${F2_PASSWORD_UNSET}\n")

    code, report, shown = _status(local)
    assert code == 0  # not invalid: the workers have the variables
    entry = next(c for c in report["configs"] if c["name"] == name)
    assert entry["state"] == "needs_env" and entry["needs"] == ["F2_PASSWORD_UNSET", "F2_TOKEN_UNSET"]
    assert f"{name}: needs F2_PASSWORD_UNSET, F2_TOKEN_UNSET" in shown and "Invalid configs" not in shown

    # The same file with a real mistake besides is invalid (exit 2), whatever the environment.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("batch_size: -4\n")
    code, report, shown = _status(local)
    entry = next(c for c in report["configs"] if c["name"] == name)
    assert code == 2 and entry["state"] == "invalid" and any("batch_size" in p for p in entry["problems"])
    assert "Invalid configs (1)" in shown

    monkeypatch.setenv("F2_TOKEN_UNSET", "eu--sandbox-token")
    monkeypatch.setenv("F2_PASSWORD_UNSET", "pw-for-the-source")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "database_password: ${F2_PASSWORD_UNSET}\n")
    code, report, shown = _status(local)
    entry = next(c for c in report["configs"] if c["name"] == name)
    assert code == 0 and entry["state"] == "ok" and entry["operations"][0]["frequency"] == "0 3 * * *"
    assert "pw-for-the-source" not in shown and "eu--sandbox-token" not in shown


def test_status_json_lists_workers_queue_and_a_failed_last_run(local: Fleet, sandbox: SandboxServer,
                                                               workers: list) -> None:
    name = _name("stj")
    db = os.path.join(local.settings.config_dir, f"{name}.db")
    make_source(db, 2)
    write_config(local.settings.config_dir, name, api_url=sandbox.url, datasource_id=1, database=db)
    history.record(local.redis, name, 0, {"run_id": "r-ok", "ok": True, "errors": [], "inserted": 2}, 20)
    code, report, shown = _status(local)
    names = [str(w.popen.args[w.popen.args.index("-n") + 1]).replace("%h", "") for w in workers]
    assert code == 0 and report["exit_code"] == 0
    assert all(any(n.startswith(prefix) for n in report["workers"]) for prefix in names)  # w1@host, w2@host
    assert set(report["queue"]) == {"waiting", "unacked"} and report["queue"]["waiting"] >= 0
    assert f"Workers answering: {len(report['workers'])}" in shown and "Queue: " in shown
    op = next(c for c in report["configs"] if c["name"] == name)["operations"][0]
    assert op["last_runs"][0]["run_id"] == "r-ok" and op["running"] is None

    history.record(local.redis, name, 0, {"run_id": "r-bad", "ok": False, "errors": ["Batch 1: refused"]}, 20)
    code, report, shown = _status(local)
    assert code == 3 == report["exit_code"]  # the last run failed
    assert f"Last run failed: {name} operation 0" in shown and "FAILED" in shown

    gone = replace(local.settings, redis_url="redis://127.0.0.1:1/0", broker_url="redis://127.0.0.1:1/0")
    out = io.StringIO()
    assert status.print_status(None, out=out, settings=gone, as_json=True) == 1  # Redis unreachable wins over 3
    report = json.loads(out.getvalue())
    assert report["redis"]["reachable"] is False and report["workers"] is None and report["queue"] is None


# ------------------------------------------------------------------------------------ alerts


def test_an_alert_is_retried_redacted_and_never_logs_its_url(caplog: pytest.LogCaptureFixture) -> None:
    register("s3cr3t-db-password")
    summary = {"config": "users", "operation": 1, "ok": False, "inserted": 0, "updated": 0, "deleted": 0,
               "errors": ["Cannot connect: password s3cr3t-db-password refused"], "seconds": 0.5, "run_id": "r1"}
    with Receiver(fail_first=2) as hook:
        assert alerts.notify([hook.url], summary, None, backoff=0.01) == "failed"
        assert hook.requests == 3 and len(hook.bodies) == 1  # two 500s, then delivered
    body = hook.bodies[0]
    assert body["errors"] == ["Cannot connect: password *** refused"] and "s3cr3t" not in json.dumps(body)
    assert body["text"].startswith(":x: Fliplet sync failed: users operation 1 (1 error(s))")
    assert alerts.event_for({"ok": True}, None) is None and alerts.event_for({"ok": True}, True) is None
    assert alerts.event_for({"ok": True}, False) == "recovered"
    assert alerts.event_for({"ok": False, "dry_run": True}, True) is None

    closed = f"http://127.0.0.1:{free_port()}/hook-with-secret-token-xyz"
    with caplog.at_level(logging.ERROR, logger="fliplet_workers.alerts"):
        assert alerts.deliver(closed, alerts.payload(summary, "failed"), attempts=2, timeout=1, backoff=0.01) is False
    assert "could not be delivered" in caplog.text and "secret-token-xyz" not in caplog.text
    assert "127.0.0.1" not in caplog.text


def test_the_foreground_agent_alerts_a_failure_then_the_recovery(
        tmp_path: Any, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    log_file = tmp_path / "logs" / "fliplet-agent.log"
    log_file.parent.mkdir()
    monkeypatch.setenv("FLIPLET_AGENT_LOG", str(log_file))
    monkeypatch.delenv(alerts.ENV, raising=False)
    monkeypatch.setattr(alerts, "_memory", None)
    name = _name("fg")
    ds = sandbox.store.create_data_source(name)
    db = str(tmp_path / "source.db")
    make_source(db, 12)
    with Receiver() as hook:
        path = write_config(str(tmp_path), name, api_url=sandbox.url, datasource_id=987654, database=db,
                            alert_webhook=hook.url)  # a data source that does not exist: the run fails
        assert cli._run_once(load_config(path), False) is False
        wait_for(lambda: hook.events(name) == ["failed"], "the failure alert", 10)
        assert hook.bodies[0]["ok"] is False and hook.bodies[0]["errors"]
        state = tmp_path / "logs" / "fliplet-agent.alerts.json"
        assert json.loads(state.read_text()) == {alerts.OutcomeMemory.key(path, 0): False}

        monkeypatch.setattr(alerts, "_memory", None)  # a new process (one-shot runs from cron): the file remembers
        write_config(str(tmp_path), name, api_url=sandbox.url, datasource_id=ds, database=db, alert_webhook=hook.url)
        assert cli._run_once(load_config(path), False) is True
        assert hook.events(name) == ["failed", "recovered"]
        assert hook.bodies[1]["ok"] is True and hook.bodies[1]["inserted"] == 12

        assert cli._run_once(load_config(path), False) is True  # ok after ok: nothing to say
        assert cli._run_once(load_config(path), True) is True  # a dry run never alerts
        assert hook.events(name) == ["failed", "recovered"]
    assert "eu--sandbox-token" not in json.dumps(hook.bodies)
    assert "You don't have access to the dataSource (987654)" in caplog.text  # the run's own log lines...
    assert hook.url.split("/hooks/")[1] not in caplog.text  # ...and never the webhook's URL


def test_the_foreground_scheduler_remembers_outcomes_without_a_log_file(
        tmp_path: Any, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPLET_AGENT_LOG", "-")
    monkeypatch.setattr(alerts, "_memory", None)
    name = _name("fgm")
    ds = sandbox.store.create_data_source(name)
    db = str(tmp_path / "source.db")
    make_source(db, 3)
    with Receiver() as hook:
        monkeypatch.setenv(alerts.ENV, hook.url)  # the host-wide webhook, no per-config one
        path = write_config(str(tmp_path), name, api_url=sandbox.url, datasource_id=ds, database=db)
        config = load_config(path)
        sandbox.faults.set(commit=["error"] * 20)
        try:
            first = cli._run_once(config, False)
        finally:
            sandbox.faults.clear()
        assert first is False and cli._run_once(config, False) is True  # two ticks of one scheduler
        assert hook.events(name) == ["failed", "recovered"]


def test_metrics_refuse_to_serve_without_credentials_unless_told(env: dict[str, str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from fliplet_workers.fleet import metrics

    bare = {k: v for k, v in env.items() if k != metrics.AUTH_ENV}
    assert metrics.serve(free_port(), environ=bare) == 2
    assert "Set FLIPLET_METRICS_BASIC_AUTH=user:password" in capsys.readouterr().out
    assert metrics.serve(free_port(), environ=dict(bare, FLIPLET_METRICS_BASIC_AUTH="no-colon")) == 2
    assert metrics.parse_basic_auth("a:b, c:d:e") == [("a", "b"), ("c", "d:e")]
