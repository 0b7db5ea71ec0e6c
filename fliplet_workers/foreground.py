"""The foreground agent's scheduler: run each operation on its cron ``frequency``, forever.

The clock and the sleep are parameters, so the loop is tested without waiting for real minutes.
Operations due at the same minute run together, in config order, through one ``run_due`` call.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence

from fliplet_workers.schedule import next_run

Now = Callable[[], dt.datetime]
RunDue = Callable[[Sequence[int]], object]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_forever(
    frequencies: dict[int, str],
    run_due: RunDue,
    *,
    tz: str = "UTC",
    now: Now = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    max_runs: int | None = None,
) -> int:
    """Call ``run_due(indexes)`` whenever operations are due; returns after ``max_runs`` (tests)."""
    due = {index: next_run(expr, now(), tz) for index, expr in frequencies.items()}
    runs = 0
    while max_runs is None or runs < max_runs:
        soonest = min(due.values())
        delay = (soonest - now()).total_seconds()
        if delay > 0:
            sleep(min(delay, 60.0))  # wake at least every minute: the wall clock may jump
            continue
        current = now()
        ready = sorted(index for index, when in due.items() if when <= current)
        run_due(ready)
        runs += 1
        after = now()
        for index in ready:
            due[index] = next_run(frequencies[index], max(after, current), tz)
    return runs
