"""The diff alone: N local rows against N remote entries (no change, 1% changed). Prints figures.

The rows are normalised and judged one at a time (as they stream from a source) against an index of
the remote entries, as in a real run.

    python bench/bench_diff.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from typing import Any

from fliplet_workers.core.diff import DiffOptions, Planner, index_remote
from fliplet_workers.core.rows import gc_paused


def rows(n: int, changed_every: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ts = "2024-01-01T00:00:00.000Z" if not (changed_every and i % changed_every == 0) else "2024-06-01T00:00:00.000Z"
        out.append({"id": i, "email": f"user{i}@example.org", "name": f"User {i}", "score": i % 97, "updatedAt": ts})
    return out


def index_bytes_per_entry(n: int) -> float:
    """What the remote index keeps per entry, the entries made as they stream in (as the JSON parser
    makes them), so that everything the index holds on to is counted."""
    entries = ({"id": 10_000_000 + i, "dataSourceId": 1, "data": rows(1)[0] | {"id": i, "email": f"user{i}@example.org",
                                                                          "name": f"User {i}", "score": i % 97}}
               for i in range(n))
    tracemalloc.start()
    index = index_remote(entries, DiffOptions(primary_column="id", timestamp_column="updatedAt"))
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert index.count == n
    return size / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    n = parser.parse_args().rows
    remote = [{"id": 10_000_000 + i, "dataSourceId": 1, "data": r} for i, r in enumerate(rows(n))]
    for label, every, ts in (("no change, timestamp", 0, "updatedAt"), ("1% changed, timestamp", 100, "updatedAt"),
                             ("no change, content", 0, None), ("1% changed, content", 100, None)):
        source = rows(n, every)
        options = DiffOptions(primary_column="id", timestamp_column=ts)
        started = time.perf_counter()
        planner = Planner(index_remote(iter(remote), options), options)
        indexed = time.perf_counter()
        with gc_paused():  # as run.py does while rows stream
            for row in source:
                planner.add(row)
            planner.finish()
        done = time.perf_counter()
        tally = planner.tally
        print(f"{label:24s} rows={n:>9,}  index remote {indexed - started:5.2f}s  judge rows {done - indexed:5.2f}s  "
              f"total {done - started:5.2f}s ({n / (done - started):,.0f} rows/s)  updates={tally.update:,} "
              f"unchanged={tally.unchanged:,}")
    sample = min(n, 100_000)
    print(f"remote index: {index_bytes_per_entry(sample):,.0f} bytes per entry (5 columns, {sample:,} entries)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB (includes the generated test data)")


if __name__ == "__main__":
    main()
