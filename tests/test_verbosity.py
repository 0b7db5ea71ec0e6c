"""``log_verbosity`` as in the original: ``critical`` hides only info and debug lines; errors (a
skipped row) and warnings always reach the terminal and ``fliplet-agent.log``. Real CLI processes
against the real sandbox."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer

SKIPPED = "A row is missing its primary key value from the database. Skipping"


def _run(sandbox: SandboxServer, tmp_path: Path, verbosity: str) -> tuple[str, str, int]:
    """One ``fliplet-agent start`` of a config whose source has one keyless row among good ones."""
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (None, "keyless"), (2, "b")])
    ds = sandbox.store.create_data_source(f"verbosity-{verbosity}")
    config = tmp_path / "verbose.yml"
    config.write_text(yaml.safe_dump({
        "auth_token": DEMO_TOKEN, "api_url": sandbox.url, "datasource_id": ds, "database_driver": "sqlite",
        "database_name": str(db), "query": "SELECT id, v FROM t", "primary_column": "id",
        "log_verbosity": verbosity}))
    log = tmp_path / "agent.log"
    env = {**os.environ, "FLIPLET_AGENT_LOG": str(log)}
    proc = subprocess.run([sys.executable, "-m", "fliplet_workers.cli", "start", str(config)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert len(sandbox.store.entries(ds)) == 2, proc.stderr  # the good rows were synced
    return proc.stderr, log.read_text(), proc.returncode


def test_critical_still_shows_a_skipped_rows_error(sandbox: SandboxServer, tmp_path: Path) -> None:
    terminal, logfile, _ = _run(sandbox, tmp_path, "critical")
    for text in (terminal, logfile):
        assert f"ERROR [verbose] {SKIPPED}" in text
        assert "keyless" in text  # the row details, as the table says
        # info and debug lines are what `critical` filters out
        assert "Agent started successfully" not in text
        assert " INFO " not in text and " DEBUG " not in text


@pytest.mark.parametrize(("verbosity", "info", "debug"), [("info", True, False), ("debug", True, True)])
def test_info_adds_info_and_debug_adds_everything(
    sandbox: SandboxServer, tmp_path: Path, verbosity: str, info: bool, debug: bool
) -> None:
    terminal, logfile, _ = _run(sandbox, tmp_path, verbosity)
    for text in (terminal, logfile):
        assert f"ERROR [verbose] {SKIPPED}" in text
        assert ("INFO [verbose] Agent started successfully" in text) is info
        assert (" DEBUG [verbose] " in text) is debug
