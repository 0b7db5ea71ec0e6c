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
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent_runs import CHANGE_ONE_PERCENT, change, measure, run_once, sandbox, seed, write_config


def one_run(config_path: str) -> None:
    """Child mode: run the config once as ``start`` does, counting the HTTP requests by kind."""
    from fliplet_workers.fliplet.client import FlipletClient

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
    seconds, peak, summary = run_once(config_path)
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "requests": counts, "lookup_wait": waited["lookup"],
                      **summary}))


def bench(rows: int, verbosity: str, tmp: Path, url: str) -> None:
    db = tmp / f"src{rows}{verbosity}.db"
    seed(db, rows, index=True)
    config = tmp / f"inc{rows}{verbosity}.yml"
    write_config(config, url, f"incremental {rows} {verbosity}", db, verbosity, incremental=True)
    log_file, state = tmp / f"agent{rows}{verbosity}.log", tmp / f"state{rows}{verbosity}.json"
    changed = rows // 100
    steps = [("first sync (full)", None),
             (f"1% changed ({changed:,} rows), incremental", CHANGE_ONE_PERCENT)]
    for label, sql in steps:
        if sql:
            change(db, sql)
        result = measure(__file__, config, {"FLIPLET_AGENT_LOG": str(log_file), "FLIPLET_AGENT_STATE": str(state)})
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
    with sandbox(args.sandbox_url) as url, tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows or [1_000_000]:
            for verbosity in args.verbosity or ["debug", "info"]:
                bench(rows, verbosity, Path(tmp), url)

if __name__ == "__main__":
    main()
