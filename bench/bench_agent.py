"""The foreground agent end to end against the sandbox (in its own process), on a SQLite source.

For each size and each verbosity: first sync, no-change re-run, 1%-changed re-run — wall seconds,
rows/s, the log lines written and the agent's peak RSS (each run is a fresh child process, so the
figure is that run's own peak). Each step's figure is the best of ``--repeat`` attempts (3), each
on a freshly seeded source and an emptied sandbox: the machine is shared, and other work only ever
adds time.

The agent logs as a user's would: ``debug`` is the config's default (its config never mentions
``log_verbosity``), ``info`` is set explicitly; both write every line to a log file and to stderr,
which is a pipe here (drained by this process), so the cost of logging is part of every figure.

    python bench/bench_agent.py                       # 100k and 1M rows, debug then info
    python bench/bench_agent.py --rows 100000         # one size
    python bench/bench_agent.py --verbosity debug     # one verbosity
    python bench/bench_agent.py --repeat 1            # one attempt (default: the best of 3)
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
from pathlib import Path

import requests
import yaml

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS users")
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, score INTEGER, updated_at TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                       ((i, f"user{i}@example.org", f"User {i}", i % 97, "2024-01-01T00:00:00.000Z")
                        for i in range(1, rows + 1)))


def one_run(config_path: str) -> None:
    """Child mode: run the config once as ``fliplet-workers start`` does (logging set up from the
    config's ``log_verbosity``, to stderr and the log file), print timings and peak RSS as JSON."""
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, **summary.to_dict()}))


def measure(config: Path, log_file: Path) -> dict:
    """One run in a child process; its stderr is a pipe that a thread drains (counting lines)."""
    child = subprocess.Popen([sys.executable, __file__, "--one-run", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "FLIPLET_AGENT_LOG": str(log_file)})
    assert child.stdout is not None and child.stderr is not None
    lines = [0]

    def drain(stream: object) -> None:
        while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
            lines[0] += chunk.count(b"\n")

    drainer = threading.Thread(target=drain, args=(child.stderr,), daemon=True)
    drainer.start()
    out = child.stdout.read().decode()
    if child.wait() != 0:
        raise SystemExit(f"the agent failed (exit code {child.returncode})")
    drainer.join()
    return {**json.loads(out.strip().splitlines()[-1]), "log_lines": lines[0]}


STEPS = [("first sync", None),
         ("no-change re-run", None),
         ("1% changed re-run", "UPDATE users SET name = name || ' (edited)', "
                               "updated_at = '2024-06-01T00:00:00.000Z' WHERE id % 100 = 0")]


def attempt(rows: int, verbosity: str, tmp: Path, url: str) -> list[dict]:
    """The three steps once, on a freshly seeded source and a new data source of an emptied sandbox."""
    requests.post(url + "_sandbox/reset", headers={"Auth-token": "eu--sandbox-token"}, timeout=60)
    db = tmp / f"src{rows}.db"
    seed(db, rows)
    ds = requests.post(url + "_sandbox/data-sources", json={"name": f"bench {rows} {verbosity}"}, timeout=30,
                       headers={"Auth-token": "eu--sandbox-token"}).json()["id"]
    config = tmp / f"bench{rows}{verbosity}.yml"
    settings = {
        "auth_token": "eu--sandbox-token", "api_url": url, "datasource_id": ds,
        "database_driver": "sqlite", "database_name": str(db),
        "query": "SELECT id, email, name, score, updated_at AS updatedAt FROM users",
        "primary_column": "id", "timestamp_column": "updatedAt", "batch_size": 1000,
        "concurrency": 4}
    if verbosity != "debug":  # debug is the default: a config that never mentions log_verbosity
        settings["log_verbosity"] = verbosity
    config.write_text(yaml.safe_dump(settings))
    log_file = tmp / f"agent{rows}{verbosity}.log"
    log_file.unlink(missing_ok=True)
    results = []
    for _, change in STEPS:
        if change:
            with sqlite3.connect(db) as conn:
                conn.execute(change)
        results.append(measure(config, log_file))
    return results


def bench(rows: int, verbosity: str, tmp: Path, url: str, repeat: int) -> None:
    """Each step's best wall time of ``repeat`` attempts (other work on the machine only ever adds
    time), with that attempt's figures."""
    best: list[dict] = []
    for _ in range(repeat):
        results = attempt(rows, verbosity, tmp, url)
        best = results if not best else [min(b, r, key=lambda x: x["seconds"]) for b, r in zip(best, results, strict=True)]
    for (label, _), result in zip(STEPS, best, strict=True):
        print(f"{rows:>9,} rows  {verbosity:5s}  {label:18s} {result['seconds']:7.2f} s  "
              f"{rows / result['seconds']:>10,.0f} rows/s  {result['log_lines']:>9,} log lines  "
              f"peak RSS {result['peak_mb']:6.0f} MB  (inserted {result['inserted']:,}, updated "
              f"{result['updated']:,}, unchanged {result['unchanged']:,}, batches {result['batches']}; "
              f"best of {repeat})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--verbosity", choices=["debug", "info"], action="append",
                        help="log_verbosity of the runs (default: debug, then info)")
    parser.add_argument("--repeat", type=int, default=3, help="attempts per size and verbosity; the best is shown")
    parser.add_argument("--one-run")
    args = parser.parse_args()
    if args.one_run:
        one_run(args.one_run)
        return
    port = free_port()
    sandbox = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "sandbox", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                requests.get(url + "_sandbox/state", headers={"Auth-token": "eu--sandbox-token"}, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            for rows in args.rows or [100_000, 1_000_000]:
                for verbosity in args.verbosity or ["debug", "info"]:
                    bench(rows, verbosity, Path(tmp), url, args.repeat)
    finally:
        sandbox.terminate()
        sandbox.wait(10)


if __name__ == "__main__":
    main()
