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

    run_forever({0: "*/15 * * * *", 1: "0 * * * *"}, run_due, now=clock, sleep=clock.sleep, max_runs=5)
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
