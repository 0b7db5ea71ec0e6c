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
import tempfile
from pathlib import Path

import requests
from agent_runs import AUTH, CHANGE_ONE_PERCENT, change, measure, run_once, sandbox, seed, write_config


def one_run(config_path: str) -> None:
    """Child mode: one run, its timings and peak RSS printed as JSON."""
    seconds, peak, summary = run_once(config_path)
    print(json.dumps({"seconds": seconds, "peak_mb": peak, **summary}))


STEPS = [("first sync", None), ("no-change re-run", None), ("1% changed re-run", CHANGE_ONE_PERCENT)]


def attempt(rows: int, verbosity: str, tmp: Path, url: str) -> list[dict]:
    """The three steps once, on a freshly seeded source and a new data source of an emptied sandbox."""
    requests.post(url + "_sandbox/reset", headers=AUTH, timeout=60)
    db = tmp / f"src{rows}.db"
    seed(db, rows)
    config = tmp / f"bench{rows}{verbosity}.yml"
    write_config(config, url, f"bench {rows} {verbosity}", db, verbosity)
    log_file = tmp / f"agent{rows}{verbosity}.log"
    log_file.unlink(missing_ok=True)
    results = []
    for _, sql in STEPS:
        if sql:
            change(db, sql)
        results.append(measure(__file__, config, {"FLIPLET_AGENT_LOG": str(log_file)}))
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
    with sandbox() as url, tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows or [100_000, 1_000_000]:
            for verbosity in args.verbosity or ["debug", "info"]:
                bench(rows, verbosity, Path(tmp), url, args.repeat)

if __name__ == "__main__":
    main()
