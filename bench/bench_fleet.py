"""A first sync of 100k rows through the fleet, with 1, 2 and 4 workers. Prints rows/s and speed-up.

    python bench/bench_fleet.py [--rows 100000] [--batch-size 1000] [--delay-ms 50] [--workers 1 2 4]
                                [--pool prefork|threads|solo]

Everything is real and local: a redis-server, the sandbox (in its own process, like a remote API) adding ``--delay-ms`` to
every commit like a distant API, N worker processes (``-c 1`` each) and a sqlite source. Each round
syncs into a fresh, empty data source, timed from the trigger to the recorded summary (so it includes
reading the source, fetching the remote entries, planning, staging and finalizing). It also prints
when the first commit started and how long the commits took: batches are dispatched as they are cut,
so with more than one worker the commits overlap the planning.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..", "tests", "fleet")]

from fleetproc import Fleet as Processes  # noqa: E402
from fleetproc import fleet_env, make_source, wait_for, write_config  # noqa: E402
from servers import RedisServer  # noqa: E402

from fliplet_workers.fleet import history  # noqa: E402
from fliplet_workers.fleet.app import create_app  # noqa: E402
from fliplet_workers.fleet.runtime import Fleet  # noqa: E402
from fliplet_workers.fleet.settings import FleetSettings  # noqa: E402


class RemoteSandbox:
    """The sandbox in a child process, driven through its ``/_sandbox`` endpoints, so that its request
    handling does not share this process's interpreter lock with the timing loop."""

    def __init__(self) -> None:
        import socket
        import subprocess

        import requests

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        self.http = requests.Session()
        self.http.headers["Auth-token"] = "eu--sandbox-token"  # /_sandbox/* takes the sandbox's own token
        self.proc = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "sandbox", "--port", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._up(), "the sandbox to start", 30)

    def _up(self) -> bool:
        try:
            return self.http.get(self.url + "_sandbox/state", timeout=1).ok
        except OSError:
            return False

    def create_data_source(self, name: str) -> int:
        return int(self.http.post(self.url + "_sandbox/data-sources", json={"name": name}, timeout=30).json()["id"])

    def set_commit_delay(self, ms: float) -> None:
        self.http.post(self.url + "_sandbox/faults", json={"commit_delay_ms": ms}, timeout=30).raise_for_status()

    def entry_count(self, ds: int) -> int:
        state = self.http.get(self.url + "_sandbox/state", timeout=30).json()
        return int(next(d["entries"] for d in state["dataSources"] if d["id"] == ds))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def one_round(workers: int, pool: str, args: argparse.Namespace, redis_url: str, sandbox: RemoteSandbox,
              base: str, source: str) -> tuple[float, float, dict]:
    config_dir = os.path.join(base, f"configs-{workers}-{pool}")
    os.makedirs(config_dir, exist_ok=True)
    name = f"bench{workers}"
    ds = sandbox.create_data_source(name)
    write_config(config_dir, name, api_url=sandbox.url, datasource_id=ds, database=source, batch_size=args.batch_size)
    env = fleet_env(redis_url, config_dir)
    settings = FleetSettings.from_env(env)
    fleet, app = Fleet.create(settings), create_app(settings)
    procs = Processes(env, base)
    try:
        for _ in range(workers):
            procs.worker(concurrency=1, pool=pool, wait=False)
        wait_for(lambda: all("ready." in p.text() for p in procs.procs), "the workers to start", 120)
        wall, started = time.time(), time.perf_counter()
        planned = app.send_task("fliplet.sync", args=[name]).get(timeout=1800)  # the run's summary
        summary = wait_for(lambda: history.last(fleet.redis, name, 0), "the run summary", 1800, every=0.05)[0]
        seconds = time.perf_counter() - started
        states = [fleet.batch_state(planned["run_id"], n).load() for n in range(1, planned["batches"] + 1)]
        first_commit = min(float(s["started"]) for s in states) - wall
        last_commit = max(float(s["finished"]) for s in states) - wall
    finally:
        procs.stop_all()
    entries = sandbox.entry_count(ds)
    if entries != args.rows or summary["inserted"] != args.rows:
        raise SystemExit(f"{workers} worker(s): {entries} entries, summary {summary}")
    return seconds, (first_commit, last_commit), planned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fw-bench-fleet-")
    source = os.path.join(base, "source.db")
    make_source(source, args.rows)
    print(f"{args.rows:,} rows, batches of {args.batch_size}, {args.delay_ms:g} ms added to every commit, "
          f"{os.cpu_count()} CPU(s), pool {args.pool} (-c 1 per worker process)")
    with RedisServer() as redis_server:
        sandbox = RemoteSandbox()
        sandbox.set_commit_delay(args.delay_ms)
        try:
            first = first_phase = None
            for workers in args.workers:
                seconds, (begin, end), _ = one_round(workers, args.pool, args, redis_server.url, sandbox, base,
                                                     source)
                first = first or seconds
                first_phase = first_phase or end - begin
                print(f"{workers} worker(s): {seconds:6.2f} s  {args.rows / seconds:9,.0f} rows/s  "
                      f"speed-up {first / seconds:4.2f}x   | first commit at {begin:5.2f} s, commits for "
                      f"{end - begin:5.2f} s (speed-up {first_phase / (end - begin):4.2f}x)", flush=True)
            if len(args.workers) > 1:
                print("With one worker, its only process plans the run before it can commit; with more, the "
                      "first commits start while the source is still being read.")
        finally:
            sandbox.stop()
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
