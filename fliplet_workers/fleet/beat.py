"""Celery beat from the config directory: one entry per operation with a cron ``frequency``.

``celery -A fliplet_workers beat`` uses :class:`ConfigScheduler` (it is the app's default
``beat_scheduler``). It

* rescans the directory every ``FLIPLET_SCHEDULE_RESCAN`` seconds (stat calls only; a file is parsed
  again only when its mtime or size changed) and rebuilds the entries when a config was added, edited
  or removed: no restart;
* skips a config that fails validation, with a log line naming its first problem (``fliplet-agent
  status`` lists it too), and schedules all the others;
* evaluates each cron expression in the config's ``timezone``, else ``FLIPLET_TIMEZONE``, else the
  beat host's local time, with the same rule and code as the foreground agent
  (:func:`fliplet_workers.cron.schedule_timezone`), so both read ``frequency`` alike;
* sends nothing unless it holds the Redis leadership lock ``fleet:beat:leader`` (renewed on every
  tick, released on shutdown): a second beat started by mistake stands by and takes over within
  ``FLIPLET_BEAT_LEADER_TTL`` seconds if the leader dies. Even then a run never happens twice at once:
  each sync takes its operation's lock;
* sends the recovery sweep every ``FLIPLET_RECOVER_INTERVAL`` seconds with the runs it remembers
  from ``fleet:active`` that left it without a summary (:class:`~.recovery.Remembered`): the one copy
  of the active runs outside Redis, so a Redis that restarts empty cannot lose a run silently.

Entries live in memory: there is no schedule file to share or corrupt. A standby keeps its entries'
"last run" at the present, so that taking over does not replay boundaries the old leader handled.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import redis
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import BaseSchedule, schedstate

from fliplet_workers.cron import next_run, schedule_timezone
from fliplet_workers.fleet import keys
from fliplet_workers.fleet.locks import Lock
from fliplet_workers.fleet.recovery import Remembered
from fliplet_workers.fleet.registry import Scan
from fliplet_workers.fleet.runtime import Fleet, current

log = logging.getLogger("fliplet_workers.fleet.beat")

SYNC_TASK = "fliplet.sync"
RECOVER_TASK = "fliplet.recover"


class CronSchedule(BaseSchedule):
    """A 5-field cron expression in a time zone, as a Celery schedule."""

    def __init__(self, expr: str, tz: str, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.expr = " ".join(expr.split())
        self.tz = tz

    def next_after(self, moment: datetime) -> datetime:
        return next_run(self.expr, moment, self.tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        delta: timedelta = self.next_after(last_run_at) - self.now()
        return delta

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.now()
        due_at = self.next_after(last_run_at)
        if due_at <= now:
            return schedstate(True, max(0.0, (self.next_after(now) - now).total_seconds()))
        return schedstate(False, (due_at - now).total_seconds())

    def period(self) -> float:
        """Seconds between two runs (near now): used to expire a trigger nobody picked up in time."""
        first = self.next_after(self.now())
        return (self.next_after(first) - first).total_seconds()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CronSchedule) and (self.expr, self.tz) == (other.expr, other.tz)

    def __hash__(self) -> int:
        return hash((self.expr, self.tz))

    def __repr__(self) -> str:
        return f"<cron: {self.expr} ({self.tz})>"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.expr, self.tz, self.nowfun)


def entries_from(scan: Scan, tz: str) -> dict[str, dict[str, Any]]:
    """``{entry name: entry fields}`` for every scheduled operation of every valid config; ``tz`` is
    the fleet's zone (settings), which a config's own ``timezone`` overrides."""
    out: dict[str, dict[str, Any]] = {}
    for found in scan.valid:
        assert found.config is not None
        zone = schedule_timezone(found.config.timezone, tz)
        for index, op in enumerate(found.config.operations):
            if not op.frequency:
                continue
            schedule = CronSchedule(op.frequency, zone)
            out[f"{found.name}:{index}"] = {
                "task": SYNC_TASK, "schedule": schedule, "args": (found.name, index),
                # a trigger still queued when the next one is due is useless (the next one covers it)
                "options": {"expires": max(30.0, min(schedule.period(), 3600.0))},
            }
    return out


class ConfigScheduler(Scheduler):
    """Beat entries rebuilt from the config directory; sends only while it leads (see module doc)."""

    def __init__(self, *args: Any, fleet: Fleet | None = None, **kwargs: Any) -> None:
        self.fleet = fleet or current()
        settings = self.fleet.settings
        self.beat_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leader_lock = Lock(self.fleet.redis, keys.BEAT_LEADER, int(settings.leader_ttl * 1000))
        self.leading: bool | None = None
        self._scanned_at = float("-inf")
        self._signature: tuple[Any, ...] | None = None
        self._reported: dict[str, str] = {}
        self.remembered = Remembered(forget_after=settings.run_ttl)  # fleet:active, outside Redis
        super().__init__(*args, **kwargs)
        self.max_interval: float = min(float(self.max_interval), settings.beat_max_interval,
                                       settings.leader_ttl / 3)

    # -- schedule ------------------------------------------------------------------------------------

    def setup_schedule(self) -> None:
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)  # the recovery sweep (fleet/app.py)
        self.rescan(force=True)

    def rescan(self, force: bool = False) -> bool:
        """Rebuild the entries if the directory changed; True if it did."""
        now = time.monotonic()
        if not force and now - self._scanned_at < self.fleet.settings.schedule_rescan:
            return False
        self._scanned_at = now
        scan = self.fleet.registry.scan()
        if scan.error:
            if self._signature != ("error", scan.error):
                log.error("Beat: %s; keeping the current schedule.", scan.error)
                self._signature = ("error", scan.error)
            return False
        if scan.signature == self._signature:
            return False
        self._signature = scan.signature
        self._report_invalid(scan)
        wanted = entries_from(scan, self.fleet.settings.timezone)
        schedule = self.schedule
        for name in [n for n in schedule if n not in wanted and n.count(":") == 1]:
            del schedule[name]
        for name, fields in wanted.items():
            entry = ScheduleEntry(name=name, app=self.app, **fields)
            old = schedule.get(name)
            if old is not None and old == entry:
                continue  # unchanged: keep its last run time
            schedule[name] = entry
        self._heap = None
        log.info("Beat: schedule built from %s: %d scheduled operation(s) in %d config(s), "
                 "%d invalid config(s) skipped.", scan.directory, len(wanted), len(scan.valid), len(scan.invalid))
        return True

    def _report_invalid(self, scan: Scan) -> None:
        reported: dict[str, str] = {}
        for bad in scan.invalid:
            reported[bad.name] = bad.problem
            if self._reported.get(bad.name) != bad.problem:
                log.error("Beat: config '%s' is invalid and is not scheduled: %s", bad.name, bad.problem)
        self._reported = reported

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        """Sends a due entry (only while leading: see :meth:`tick`); the recovery sweep carries the
        runs this beat remembers that left ``fleet:active`` without a summary (see recovery.Remembered)."""
        if entry.task == RECOVER_TASK:
            try:
                entry.args = (self.remembered.vanished(self.fleet.redis),)
            except redis.RedisError:  # Redis down: the sweep cannot be sent either; keep the memory
                entry.args = ()
        return super().apply_async(entry, producer, advance, **kwargs)

    # -- leadership ----------------------------------------------------------------------------------

    def lead(self) -> bool:
        """Take or keep the leadership; log changes. A Redis outage means: do not send."""
        try:
            leading = self.leader_lock.claim(self.beat_id)
            holder = None if leading else self.leader_lock.holder()
            if not leading:  # another beat leads (not an outage: then keep it, to pass after a restart)
                self.remembered.forget_all()
        except Exception as error:  # redis down: a beat that cannot check must not send
            leading, holder = False, f"unknown ({type(error).__name__}: {error})"
        if leading != self.leading:
            if leading:
                log.info("Beat %s is the leader: it sends the scheduled syncs.", self.beat_id)
            else:
                log.warning("Beat %s stands by: beat %s leads and sends the scheduled syncs.", self.beat_id, holder)
            self.leading = leading
        return leading

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.rescan()
        if not self.lead():
            now = self.app.now()
            for entry in self.schedule.values():
                entry.last_run_at = now
            self._heap = None
            return float(self.max_interval)
        return float(super().tick(*args, **kwargs))

    def close(self) -> None:
        try:
            if self.leading:
                self.leader_lock.release(self.beat_id)
        except Exception:  # shutting down: the lock expires anyway
            pass
        super().close()

    @property
    def info(self) -> str:
        return f"    . configs -> {self.fleet.settings.config_dir} (rescan every {self.fleet.settings.schedule_rescan:g}s)"
