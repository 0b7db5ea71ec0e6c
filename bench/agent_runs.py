"""What the end-to-end agent benchmarks share: the sandbox in its own process, a seeded SQLite
source, a config as a user's would read, and one agent run in a fresh child process.

Why a child process per run: each figure is that run's own wall time and peak RSS, and the agent
logs as a user's does, to a log file and to stderr, which is a pipe here that a thread drains
(counting lines), so the cost of logging is part of every figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
import yaml

TOKEN = "eu--sandbox-token"
AUTH = {"Auth-token": TOKEN}
QUERY = "SELECT id, email, name, score, updated_at AS updatedAt FROM users"
#: Every hundredth row gets a new name and a newer timestamp: "1% changed".
CHANGE_ONE_PERCENT = ("UPDATE users SET name = name || ' (edited)', updated_at = '2024-06-01T00:00:00.000Z' "
                      "WHERE id % 100 = 0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sandbox(url: str | None = None) -> Iterator[str]:
    """The sandbox's URL: ``url`` if one is running already, else a sandbox started in its own
    process for the length of the block."""
    proc = None
    if url is None:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "sandbox", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"
    url = url if url.endswith("/") else url + "/"
    try:
        for _ in range(100):
            try:
                requests.get(url + "_sandbox/state", headers=AUTH, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield url
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


def seed(path: Path, rows: int, *, index: bool = False) -> None:
    """A ``users`` table of ``rows`` rows (``index``: on ``updated_at``, as a table read incrementally has)."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS users")
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, score INTEGER, updated_at TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                       ((i, f"user{i}@example.org", f"User {i}", i % 97, "2024-01-01T00:00:00.000Z")
                        for i in range(1, rows + 1)))
        if index:
            db.execute("CREATE INDEX users_updated_at ON users (updated_at)")


def change(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql)


def write_config(path: Path, url: str, name: str, db: Path, verbosity: str, **extra: Any) -> None:
    """A config pushing ``db``'s users into a new data source ``name`` of the sandbox. ``debug`` is
    the default verbosity: a config at ``debug`` never mentions ``log_verbosity``, as a user's."""
    ds = requests.post(url + "_sandbox/data-sources", json={"name": name}, timeout=30, headers=AUTH).json()["id"]
    settings: dict[str, Any] = {
        "auth_token": TOKEN, "api_url": url, "datasource_id": ds, "database_driver": "sqlite",
        "database_name": str(db), "query": QUERY, "primary_column": "id", "timestamp_column": "updatedAt",
        "batch_size": 1000, "concurrency": 4, **extra}
    if verbosity != "debug":
        settings["log_verbosity"] = verbosity
    path.write_text(yaml.safe_dump(settings))


def measure(script: str, config: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """``script --one-run config`` in a child process (its last stdout line is its figures as JSON),
    with ``env`` added to the environment; adds the number of lines it logged to stderr."""
    child = subprocess.Popen([sys.executable, script, "--one-run", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, **env})
    assert child.stdout is not None and child.stderr is not None
    lines = [0]

    def drain(stream: Any) -> None:
        while chunk := stream.read1(1 << 16):
            lines[0] += chunk.count(b"\n")

    drainer = threading.Thread(target=drain, args=(child.stderr,), daemon=True)
    drainer.start()
    out = child.stdout.read().decode()
    if child.wait() != 0:
        raise SystemExit(f"the agent failed (exit code {child.returncode})")
    drainer.join()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return {**result, "log_lines": lines[0]}


def run_once(config_path: str) -> tuple[float, float, dict[str, Any]]:
    """Child mode: run the config once as ``fliplet-agent start`` does (logging set up from its
    ``log_verbosity``, to stderr and the log file): wall seconds, peak RSS in MB, the summary."""
    import resource

    from fliplet_workers import logs
    from fliplet_workers.config import load_config
    from fliplet_workers.pipeline.agent import run_config

    started = time.perf_counter()
    config = load_config(config_path)
    logs.setup(config.log_verbosity)
    try:
        summary = run_config(config)[0]
    finally:
        logs.flush()
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, summary.to_dict()
