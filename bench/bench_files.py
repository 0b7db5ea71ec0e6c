"""File sync throughput and memory: many small files and one big file, through the real sandbox.

    python bench/bench_files.py [--small 200] [--small-mb 1] [--big-mb 200]

Every scenario is a real ``run_config`` (sqlite source, YAML config, ``files:`` option) in a fresh
child process, so that its peak RSS (``ru_maxrss``) is the agent's alone: the sandbox and the HTTP
file server run in processes of their own. The sandbox is reset between scenarios, so nothing is
de-duplicated away. "no files" is the same run without the ``files`` option: the baseline that
the other peaks should stay close to, whatever the size of the files.
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
import time
from pathlib import Path
from typing import Any

import requests
import yaml

TOKEN = "eu--sandbox-token"
AUTH = {"Auth-token": TOKEN}  # the sandbox's /_sandbox/* endpoints take its own token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            out.write(chunk)
            left -= len(chunk)


def child(config_path: str) -> None:
    """Run one config and print the figures as JSON (runs in a fresh process)."""
    from fliplet_workers.config import load_config
    from fliplet_workers.logs import for_config, setup
    from fliplet_workers.pipeline.agent import run_config

    os.environ["FLIPLET_AGENT_LOG"] = "-"
    setup("info", to_terminal=False)
    config = load_config(config_path)
    started = time.perf_counter()
    summary = run_config(config, log=for_config(config.name))[0]
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "inserted": summary.inserted, "ok": summary.ok}))


def scenario(tmp: Path, sandbox: str, label: str, locations: list[str], kind: str | None, concurrency: int,
             *, reset: bool = True) -> dict[str, Any]:
    if reset:
        requests.post(sandbox + "_sandbox/reset", headers=AUTH, timeout=10).raise_for_status()
    ds = requests.post(sandbox + "_sandbox/data-sources", json={"name": label}, headers=AUTH, timeout=10).json()["id"]
    db = Path(tempfile.mkstemp(suffix=".sqlite", dir=tmp)[1])
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, pic TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)",
                         [(i + 1, f"row {i + 1}", loc) for i, loc in enumerate(locations)])
    options: dict[str, Any] = {
        "auth_token": TOKEN, "api_url": sandbox, "database_driver": "sqlite", "database_name": str(db),
        "datasource_id": ds, "query": "SELECT * FROM items", "primary_column": "id",
        "concurrency": concurrency, "timeout": 120,
    }
    if kind:
        options["files"] = [{"column": "pic", "type": kind}]
    config = db.with_suffix(".yml")
    config.write_text(yaml.safe_dump(options))
    before = requests.get(sandbox + "_sandbox/state", headers=AUTH, timeout=10).json()["media"]["files"]
    out = subprocess.run([sys.executable, __file__, "--child", str(config)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{out.stderr[-3000:]}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["uploaded"] = requests.get(sandbox + "_sandbox/state", headers=AUTH, timeout=10).json()["media"]["files"] - before
    figures["config"] = str(config)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--small-mb", type=float, default=1.0)
    parser.add_argument("--big-mb", type=int, default=200)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp_name:
        tmp = Path(tmp_name)
        files_dir = tmp / "files"
        files_dir.mkdir()
        small_size = int(args.small_mb * (1 << 20))
        for i in range(args.small):
            write_random(files_dir / f"small{i:04d}.bin", small_size)
        write_random(files_dir / "big.bin", args.big_mb << 20)

        file_port, sandbox_port = free_port(), free_port()
        procs = [
            subprocess.Popen([sys.executable, "-m", "http.server", str(file_port), "--bind", "127.0.0.1",
                              "--directory", str(files_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-c", "from fliplet_workers.sandbox import serve_forever; "
                              f"serve_forever(port={sandbox_port})"], stdout=subprocess.DEVNULL),
        ]
        try:
            files_url, sandbox = f"http://127.0.0.1:{file_port}/", f"http://127.0.0.1:{sandbox_port}/"
            wait_for(files_url)
            wait_for(sandbox)
            small_remote = [f"{files_url}small{i:04d}.bin" for i in range(args.small)]
            small_local = [str(files_dir / f"small{i:04d}.bin") for i in range(args.small)]
            small_mb = args.small * small_size / (1 << 20)
            runs: list[tuple[str, list[str], str | None, int, float]] = [
                ("no files (baseline)", small_local, None, 1, 0.0),
                (f"{args.small} x {args.small_mb:g} MB remote", small_remote, "remote", 1, small_mb),
                (f"{args.small} x {args.small_mb:g} MB remote", small_remote, "remote", 4, small_mb),
                (f"{args.small} x {args.small_mb:g} MB local", small_local, "local", 1, small_mb),
                (f"{args.small} x {args.small_mb:g} MB local", small_local, "local", 4, small_mb),
                (f"1 x {args.big_mb} MB remote", [f"{files_url}big.bin"], "remote", 1, float(args.big_mb)),
                (f"1 x {args.big_mb} MB local", [str(files_dir / "big.bin")], "local", 1, float(args.big_mb)),
            ]
            print(f"{'scenario':28s} {'conc':>4s} {'files':>6s} {'uploaded':>8s} {'seconds':>8s} {'files/s':>8s} "
                  f"{'MB/s':>7s} {'peak RSS':>9s}")
            for label, locations, kind, concurrency, megabytes in runs:
                f = scenario(tmp, sandbox, label, locations, kind, concurrency)
                count = len(locations) if kind else 0
                print(f"{label:28s} {concurrency:>4d} {count:>6d} {f['uploaded']:>8d} {f['seconds']:>8.2f} "
                      f"{count / f['seconds']:>8.1f} {megabytes / f['seconds']:>7.1f} {f['peak_mb']:>7.0f} MB",
                      flush=True)
            # A second run of the same config: unchanged rows, nothing read or uploaded.
            label = f"{args.small} x {args.small_mb:g} MB remote"
            first = scenario(tmp, sandbox, label, small_remote, "remote", 4)
            before = requests.get(sandbox + "_sandbox/state", headers=AUTH, timeout=10).json()["media"]["files"]
            again = subprocess.run([sys.executable, __file__, "--child", first["config"]], capture_output=True,
                                   text=True, check=True)
            figures = json.loads(again.stdout.strip().splitlines()[-1])
            uploaded = requests.get(sandbox + "_sandbox/state", headers=AUTH, timeout=10).json()["media"]["files"] - before
            print(f"{'second run (unchanged rows)':28s} {4:>4d} {args.small:>6d} {uploaded:>8d} "
                  f"{figures['seconds']:>8.2f} {'-':>8s} {'-':>7s} {figures['peak_mb']:>7.0f} MB")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
