"""Incremental reads end to end: 1M rows in SQLite, the sandbox in its own process, 1% changed.

For each verbosity (``debug``, the default a config gets when it never mentions ``log_verbosity``, then
``info``): a fresh data source and state file, the first sync of an ``incremental: true`` operation (a
full comparison: there is no watermark yet), then 1% of the rows get a newer ``updated_at`` and the
incremental run is measured: wall seconds of the whole run in a fresh child process (config load,
connections, query, lookups, commits), the requests it made by kind (counted in the child, around
the HTTP client), and its peak RSS. The agent logs to a file and to stderr, a pipe drained here.

    python bench/bench_incremental.py                    # 1M rows, debug then info
    python bench/bench_incremental.py --rows 100000 --verbosity info
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
import yaml

TOKEN = "eu--sandbox-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(path: Path, rows: int) -> None:
    """``users`` with an index on ``updated_at``, as a table read incrementally would have."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS users")
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, score INTEGER, "
                   "updated_at TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                       ((i, f"user{i}@example.org", f"User {i}", i % 97, "2024-01-01T00:00:00.000Z")
                        for i in range(1, rows + 1)))
        db.execute("CREATE INDEX users_updated_at ON users (updated_at)")


def one_run(config_path: str) -> None:
    """Child mode: run the config once as ``start`` does, counting the HTTP requests by kind."""
    from fliplet_workers import logs
    from fliplet_workers.config import load_config
    from fliplet_workers.fliplet.client import FlipletClient
    from fliplet_workers.pipeline.agent import run_config

    counts: Counter[str] = Counter()
    waited: Counter[str] = Counter()
    send = FlipletClient.request

    def counted(self: FlipletClient, method: str, path: str, **kwargs: Any) -> Any:
        kind = "lookup" if path.endswith("data/query") else "commit" if path.endswith("/commit") else \
            "download" if path.endswith("/data") and method == "GET" else "user" if path == "v1/user" else path
        counts[kind] += 1
        began = time.perf_counter()
        try:
            return send(self, method, path, **kwargs)
        finally:
            waited[kind] += time.perf_counter() - began

    FlipletClient.request = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    config = load_config(config_path)
    logs.setup(config.log_verbosity)
    try:
        summary = run_config(config)[0]
    finally:
        logs.flush()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "requests": counts, "lookup_wait": waited["lookup"],
                      **summary.to_dict()}))


def measure(config: Path, log_file: Path, state_file: Path) -> dict[str, Any]:
    env = {**os.environ, "FLIPLET_AGENT_LOG": str(log_file), "FLIPLET_AGENT_STATE": str(state_file)}
    child = subprocess.Popen([sys.executable, __file__, "--one-run", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
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


def bench(rows: int, verbosity: str, tmp: Path, url: str) -> None:
    db = tmp / f"src{rows}{verbosity}.db"
    seed(db, rows)
    ds = requests.post(url + "_sandbox/data-sources", json={"name": f"incremental {rows} {verbosity}"},
                       timeout=30, headers={"Auth-token": TOKEN}).json()["id"]
    config = tmp / f"inc{rows}{verbosity}.yml"
    settings: dict[str, Any] = {
        "auth_token": TOKEN, "api_url": url, "datasource_id": ds,
        "database_driver": "sqlite", "database_name": str(db),
        "query": "SELECT id, email, name, score, updated_at AS updatedAt FROM users",
        "primary_column": "id", "timestamp_column": "updatedAt", "batch_size": 1000, "concurrency": 4,
        "incremental": True}
    if verbosity != "debug":  # debug is the default: a config that never mentions log_verbosity
        settings["log_verbosity"] = verbosity
    config.write_text(yaml.safe_dump(settings))
    log_file, state = tmp / f"agent{rows}{verbosity}.log", tmp / f"state{rows}{verbosity}.json"
    changed = rows // 100
    steps = [("first sync (full)", None),
             (f"1% changed ({changed:,} rows), incremental",
              "UPDATE users SET name = name || ' (edited)', updated_at = '2024-06-01T00:00:00.000Z' "
              "WHERE id % 100 = 0")]
    for label, change in steps:
        if change:
            with sqlite3.connect(db) as conn:
                conn.execute(change)
        result = measure(config, log_file, state)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(result["requests"].items()))
        wait = f" (of which {result['lookup_wait']:.2f} s waiting for lookups)" if result["lookup_wait"] else ""
        print(f"{rows:>9,} rows  {verbosity:5s}  {label:34s} {result['seconds']:6.2f} s{wait}  requests: {kinds}  "
              f"peak RSS {result['peak_mb']:5.0f} MB  {result['log_lines']:>9,} log lines  (inserted "
              f"{result['inserted']:,}, updated {result['updated']:,}, unchanged {result['unchanged']:,}, "
              f"batches {result['batches']}, ok {result['ok']})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--verbosity", choices=["debug", "info"], action="append")
    parser.add_argument("--sandbox-url", help="use this sandbox (already running) instead of starting one")
    parser.add_argument("--one-run")
    args = parser.parse_args()
    if args.one_run:
        one_run(args.one_run)
        return
    port = free_port()
    sandbox = None if args.sandbox_url else subprocess.Popen(
        [sys.executable, "-m", "fliplet_workers.cli", "sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = args.sandbox_url or f"http://127.0.0.1:{port}/"
    url = url if url.endswith("/") else url + "/"
    try:
        for _ in range(100):
            try:
                requests.get(url + "_sandbox/state", headers={"Auth-token": TOKEN}, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            for rows in args.rows or [1_000_000]:
                for verbosity in args.verbosity or ["debug", "info"]:
                    bench(rows, verbosity, Path(tmp), url)
    finally:
        if sandbox is not None:
            sandbox.terminate()
            sandbox.wait(10)


if __name__ == "__main__":
    main()
