"""The diff alone: N local rows against N remote entries (no change, 1% changed). Prints figures.

    python bench/bench_diff.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

from fliplet_workers.core.diff import DiffOptions, diff
from fliplet_workers.core.rows import collect_rows


def rows(n: int, changed_every: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ts = "2024-01-01T00:00:00.000Z" if not (changed_every and i % changed_every == 0) else "2024-06-01T00:00:00.000Z"
        out.append({"id": i, "email": f"user{i}@example.org", "name": f"User {i}", "score": i % 97, "updatedAt": ts})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    n = parser.parse_args().rows
    remote = [{"id": 10_000_000 + i, "dataSourceId": 1, "data": r} for i, r in enumerate(rows(n))]
    for label, every, ts in (("no change, timestamp", 0, "updatedAt"), ("1% changed, timestamp", 100, "updatedAt"),
                             ("no change, content", 0, None), ("1% changed, content", 100, None)):
        source = rows(n, every)
        started = time.perf_counter()
        local = collect_rows(source, "id")
        collected = time.perf_counter()
        plan = diff(local, iter(remote), DiffOptions(primary_column="id", timestamp_column=ts))
        done = time.perf_counter()
        print(f"{label:24s} rows={n:>9,}  collect {collected - started:6.2f}s  diff {done - collected:6.2f}s  "
              f"({n / (done - collected):,.0f} rows/s)  updates={len(plan.updates):,} unchanged={plan.unchanged:,}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB (includes the generated test data)")


if __name__ == "__main__":
    main()
