"""The foreground agent's scheduler: run each operation on its cron ``frequency``, forever.

The clock and the sleep are parameters, so the loop is tested without waiting for real minutes.
Operations due at the same minute run together, in config order, through one ``run_due`` call.
Cron is read in the zone :func:`fliplet_workers.cron.schedule_timezone` picks (the config's
``timezone``, else ``FLIPLET_TIMEZONE``, else the host's local time like the original): the fleet's
beat uses the same rule.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence

from fliplet_workers.cron import next_run, schedule_timezone

Now = Callable[[], dt.datetime]
RunDue = Callable[[Sequence[int]], object]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_forever(
    frequencies: dict[int, str],
    run_due: RunDue,
    *,
    tz: str | None = None,
    now: Now = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    max_runs: int | None = None,
) -> int:
    """Call ``run_due(indexes)`` whenever operations are due; returns after ``max_runs`` (tests).

    ``tz`` None: ``FLIPLET_TIMEZONE``, else the host's local time (see :func:`schedule_timezone`).
    """
    tz = schedule_timezone(None, tz)
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


def describe_schedule(frequencies: dict[int, str], tz: str, now: dt.datetime) -> list[str]:
    """One log line per operation: its cron, the zone it is read in and when it runs next, so a user
    sees at start that ``0 8 * * *`` means 08:00 of the zone they expect."""
    return [f"Operation {index + 1} ({expr}) runs next at "
            f"{next_run(expr, now, tz).isoformat(sep=' ', timespec='minutes')} ({tz})"
            for index, expr in frequencies.items()]
