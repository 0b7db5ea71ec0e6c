"""The foreground scheduler: a fake clock for the cron loop, and the real CLI process for
``sync_on_init`` + a frequency (runs at start, keeps running, stops cleanly on SIGTERM)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from fliplet_workers.foreground import run_forever
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer


class FakeClock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def test_operations_run_at_their_cron_times() -> None:
    clock = FakeClock(dt.datetime(2026, 1, 1, 10, 0, 30, tzinfo=dt.UTC))
    calls: list[tuple[str, tuple[int, ...]]] = []

    def run_due(indexes: Sequence[int]) -> None:
        calls.append((clock.now.strftime("%H:%M"), tuple(indexes)))
        clock.sleep(5)  # a run takes time

    run_forever({0: "*/15 * * * *", 1: "0 * * * *"}, run_due, tz="UTC", now=clock, sleep=clock.sleep, max_runs=5)
    assert calls == [("10:15", (0,)), ("10:30", (0,)), ("10:45", (0,)), ("11:00", (0, 1)), ("11:15", (0,))]


def test_cli_syncs_on_init_then_keeps_running_until_sigterm(sandbox: SandboxServer, tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
    ds = sandbox.store.create_data_source("foreground")
    config = tmp_path / "sched.yml"
    config.write_text(yaml.safe_dump({
        "auth_token": DEMO_TOKEN, "api_url": sandbox.url, "datasource_id": ds, "database_driver": "sqlite",
        "database_name": str(db), "query": "SELECT id, v FROM t", "primary_column": "id",
        "frequency": "0 0 1 1 *", "sync_on_init": True, "log_verbosity": "info"}))
    env = {**os.environ, "FLIPLET_AGENT_LOG": str(tmp_path / "agent.log")}
    proc = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "start", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(sandbox.store.entries(ds)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        assert len(sandbox.store.entries(ds)) == 2
        log = tmp_path / "agent.log"
        while "Scheduling complete" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None  # still alive, waiting for next January
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "agent.log").read_text()
    assert "Scheduling 1 operation(s) to run with their set frequency..." in text
    assert "[sched] Sync finished. 2 data source entries have been affected." in text


def test_cron_is_read_in_the_given_zone_with_the_injected_clock() -> None:
    clock = FakeClock(dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC))  # 21:00 in Tokyo
    calls: list[dt.datetime] = []
    run_forever({0: "0 8 * * *"}, lambda _: calls.append(clock.now), tz="Asia/Tokyo", now=clock,
                sleep=clock.sleep, max_runs=2)
    assert calls == [dt.datetime(2026, 1, 1, 23, 0, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, 23, 0, tzinfo=dt.UTC)]


def test_default_zone_is_the_hosts_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIPLET_TIMEZONE", raising=False)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    clock = FakeClock(dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC))
    calls: list[dt.datetime] = []
    run_forever({0: "0 8 * * *"}, lambda _: calls.append(clock.now), now=clock, sleep=clock.sleep, max_runs=1)
    assert calls == [dt.datetime(2026, 1, 1, 23, 0, tzinfo=dt.UTC)]


@pytest.mark.parametrize(("config_zone", "fliplet_tz", "shown"), [
    (None, None, "08:00+09:00 (Asia/Tokyo)"),  # the host's local time, like the original
    (None, "America/New_York", "08:00-05:00 (America/New_York)"),  # FLIPLET_TIMEZONE beats the host
    ("Europe/London", "America/New_York", "08:00+00:00 (Europe/London)"),  # the config's timezone wins
])
def test_agent_process_schedules_eight_oclock_in_the_right_zone(
    tmp_path: Path, config_zone: str | None, fliplet_tz: str | None, shown: str
) -> None:
    """A real ``fliplet-agent start`` on a "Tokyo host" (``TZ=Asia/Tokyo``) logs when ``0 8 * * *``
    runs next; December dates, so London is on GMT and New York on EST."""
    options = {"auth_token": DEMO_TOKEN, "api_url": "http://127.0.0.1:9", "datasource_id": 1,
               "database_driver": "sqlite", "database_name": str(tmp_path / "none.db"), "query": "SELECT 1",
               "frequency": "0 8 * * *", "sync_on_init": False, "log_verbosity": "info"}
    if config_zone:
        options["timezone"] = config_zone
    config = tmp_path / "tokyo.yml"
    config.write_text(yaml.safe_dump(options))
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if k != "FLIPLET_TIMEZONE"}
    env |= {"FLIPLET_AGENT_LOG": str(log), "TZ": "Asia/Tokyo"} | ({"FLIPLET_TIMEZONE": fliplet_tz} if fliplet_tz else {})
    proc = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "start", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while (not log.exists() or "Scheduling complete" not in log.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text() if log.exists() else "agent exited"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = next(x for x in log.read_text().splitlines() if "Operation 1 (0 8 * * *) runs next at" in x)
    assert line.endswith(shown), line
