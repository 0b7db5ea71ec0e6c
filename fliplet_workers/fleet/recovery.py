"""The recovery sweep: a run's own state in Redis says what is stuck; nothing waits for the broker.

Celery gives a dead worker's unacknowledged tasks back only after the visibility timeout (an hour by
default). The run does not wait for that: its state in Redis already says which work is alive (a
renewed lease or heartbeat), done (an outcome) or waiting its turn (a message in the queue). The
sweep (``fliplet.recover``, sent by the leading beat every ``FLIPLET_RECOVER_INTERVAL`` seconds, and
safe to run by hand or twice at once) looks at every run in ``fleet:active`` and

* sends again each batch that has no outcome, no live lease, no message waiting in the queue (or
  just handed to a worker), and whose task was sent more than ``FLIPLET_RECOVER_GRACE`` seconds ago:
  the task was lost with its worker (or dropped on a broker reconnect). A batch lost
  ``FLIPLET_RECOVER_ATTEMPTS`` times gets a failed outcome that says so, so the run still ends;
* resumes a run whose planner stopped renewing its heartbeat (``fleet:run:<id>:planner``): once
  its staged batches have outcomes it sends the sync task again under the run id, which plans the
  rest; a planner that keeps dying ends the run failed with the batches it staged;
* sends finalize for a run whose batches all have outcomes but which has no summary (the commit or
  finalize task that should have ended it died);
* ends as failed, with the reason, a run whose state vanished (and frees its operation lock), and
  frees the lock of an operation whose run is over or dead;
* ends as failed a run that vanished with ``fleet:active`` itself (Redis restarted without
  persistence while nothing of the run was running): the leading beat keeps a copy of
  ``fleet:active`` outside Redis (:class:`Remembered`) and passes the remembered runs that left it
  without a summary to the sweep, which ends those that have no state left.

Every action is idempotent: a batch is committed once however many tasks carry it, finalize writes
one summary, and a resumed planner takes the planner heartbeat first.
"""

from __future__ import annotations

import ast
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from fliplet_workers.core.retry import CommitOutcome
from fliplet_workers.fleet import flow, history, keys
from fliplet_workers.fleet.locks import Lock
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.settings import connect
from fliplet_workers.fleet.staging import PLANNING, RunMeta, active, mark_active
from fliplet_workers.fleet.state import outcomes
from fliplet_workers.logs import for_config

log = logging.getLogger("fliplet_workers.fleet")

#: Celery's queue and kombu's Redis bookkeeping of delivered, unacknowledged messages.
QUEUE, UNACKED, UNACKED_INDEX = "celery", "unacked", "unacked_index"
#: At most this many remembered runs go in one sweep's argument (the others in the next sweeps).
PER_SWEEP = 50
#: The beat remembers at most this many runs (the longest unseen are forgotten first).
REMEMBER_MAX = 2000


@dataclass
class Senders:
    """How the sweep sends tasks (the Celery side lives in :mod:`.tasks`)."""

    batch: flow.Dispatch  # (run id, batch number, file jobs, config, operation)
    finalize: Callable[[str, str, int], None]  # (run id, config, operation)
    sync: Callable[[str, str, int], None]  # the sync task again, under the run id: resumes planning
    ended: Callable[[dict[str, Any]], None]  # a run the sweep ended as lost: report its summary


@dataclass
class Report:
    """What one sweep did (the task's result, shown in Flower)."""

    runs: int = 0
    resent: dict[str, list[int]] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "resent": self.resent, "resumed": self.resumed,
                "finalized": self.finalized, "failed": self.failed, "freed_locks": self.freed,
                "skipped": self.skipped}


@dataclass
class Queued:
    """The fleet tasks waiting in the broker, or handed to a worker within the grace period."""

    batches: set[tuple[str, int]] = field(default_factory=set)
    finalize: set[str] = field(default_factory=set)
    sync: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, fleet: Fleet, now: float) -> Queued:
        found = cls()
        if not fleet.settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
            return found  # another broker: rely on the grace period alone
        broker = connect(fleet.settings.broker_url)
        for raw in broker.lrange(QUEUE, 0, -1):
            found._add(str(raw))
        recent = [str(tag) for tag in broker.zrangebyscore(UNACKED_INDEX, now - fleet.settings.recover_grace, "+inf")]
        if recent:
            for held in broker.hmget(UNACKED, recent):
                if held is not None:
                    found._add(str(held), wrapped=True)
        return found

    def _add(self, raw: str, wrapped: bool = False) -> None:
        try:
            message = orjson.loads(raw)
            if wrapped:  # kombu keeps [message, exchange, routing key]
                message = message[0]
            headers = message.get("headers") or {}
            task = headers.get("task")
            if task == "fliplet.sync":
                self.sync.add(str(headers.get("id")))
                return
            args = ast.literal_eval(headers.get("argsrepr") or "()")
        except (orjson.JSONDecodeError, ValueError, SyntaxError, TypeError, IndexError, AttributeError):
            return  # not one of ours
        if task in ("fliplet.commit", "fliplet.upload_file") and len(args) >= 2:
            self.batches.add((str(args[0]), int(args[1])))
        elif task == "fliplet.finalize" and args:
            self.finalize.add(str(args[0]))


def sweep(fleet: Fleet, send: Senders, now: float | None = None, remembered: Iterable[Any] = ()) -> Report:
    """One pass over the active runs and the operation locks (see the module doc); ``remembered``:
    ``[run id, config, operation]`` of runs the beat saw in ``fleet:active`` that left it without a
    summary (:meth:`Remembered.vanished`)."""
    report = Report()
    guard = Lock(fleet.redis, keys.RECOVER, int(max(60.0, fleet.settings.recover_interval * 4) * 1000))
    owner = uuid.uuid4().hex
    if not guard.acquire(owner):  # another sweep is running: it does the same
        report.skipped = True
        return report
    try:
        moment = time.time() if now is None else now
        queued = Queued.read(fleet, moment)
        runs = active(fleet.redis)
        for run_id, entry in runs.items():
            report.runs += 1
            try:
                _recover_run(fleet, run_id, entry, queued, send, report, moment)
            except redis.RedisError:
                raise
            except Exception:  # one odd run must not stop the sweep for the others
                log.exception("Recovery: run %s could not be checked.", run_id)
        for run_id, config, operation in _parse(remembered):
            if run_id not in runs:
                report.runs += 1
                _recover_remembered(fleet, run_id, config, operation, send, report)
        _free_dead_locks(fleet, set(runs), report, moment)
    finally:
        guard.release(owner)
    return report


def _recover_run(fleet: Fleet, run_id: str, entry: dict[str, Any], queued: Queued, send: Senders,
                 report: Report, now: float) -> None:
    config, operation = str(entry.get("config")), int(entry.get("operation") or 0)
    settings = fleet.settings
    planner_alive = fleet.planner(run_id).holder() is not None  # read before the run: see _resume
    store = fleet.store(run_id)
    meta = store.meta()
    if meta is not None and meta.summary is not None:  # ended; the lock and the listing may linger
        fleet.redis.hdel(keys.ACTIVE, run_id)
        if fleet.run_lock(config, operation).release(run_id):
            report.freed.append(run_id)
        return
    sent = store.sent_at()
    if meta is None or meta.state == PLANNING:
        if planner_alive or (meta is None and now - float(entry.get("since") or 0) < settings.planner_ttl):
            return
        if meta is not None:
            pending = [n for n, o in enumerate(outcomes(fleet.redis, run_id, meta.staged), start=1) if o is None]
            if pending:  # the staged batches land first: the resumed planner finds their rows sent
                _resend_idle(fleet, meta, pending, queued, send, report, now, sent)
                return
        _resume_planner(fleet, run_id, config, operation, meta, queued, send, report, now, sent)
        return
    pending = [n for n, o in enumerate(outcomes(fleet.redis, run_id, meta.batches), start=1) if o is None]
    if pending:
        _resend_idle(fleet, meta, pending, queued, send, report, now, sent)
        return
    if store.finalizing.holder() is not None or run_id in queued.finalize:
        return
    if now - max(sent.get("last_done", 0.0), sent.get("finalize", 0.0)) < settings.recover_grace:
        return
    for_config(config).warning(f"Run {run_id}: every batch has an outcome but the run was not finalized "
                               "(its worker died?): finalizing it now.")
    store.mark_sent([], "finalize")
    send.finalize(run_id, config, operation)
    report.finalized.append(run_id)


def _recover_remembered(fleet: Fleet, run_id: str, config: str, operation: int, send: Senders,
                        report: Report) -> None:
    """A run the beat remembers from ``fleet:active`` that is no longer listed there. With a summary it
    ended (nothing to do); with no state at all Redis lost it (a restart without persistence): it
    ends failed, once; with state but unlisted (a partial loss) it is listed again for the next sweep."""
    meta = fleet.store(run_id).meta()
    if meta is None:
        recent = history.last(fleet.redis, config, operation, fleet.settings.history)
        if any(r.get("run_id") == run_id for r in recent):  # ended, and its state expired since
            return
        ended = flow.end_lost(fleet, run_id, config, operation, flow.vanished_reason(run_id))
        if ended is not None:
            send.ended(ended)
            report.failed.append(run_id)
    elif meta.summary is None:
        mark_active(fleet.redis, run_id, meta.config, meta.operation, meta.started)


def _parse(remembered: Iterable[Any]) -> list[tuple[str, str, int]]:
    """The sweep's argument (sent by the beat, or typed by hand): malformed items are ignored."""
    out: list[tuple[str, str, int]] = []
    for item in list(remembered or ())[:PER_SWEEP]:
        try:
            run_id, config, operation = item
            if isinstance(run_id, str) and run_id and isinstance(config, str) and config:
                out.append((run_id, config, int(operation)))
        except (TypeError, ValueError):
            continue
    return out


@dataclass
class Remembered:
    """The leading beat's copy of ``fleet:active``, kept outside Redis.

    Without persistence a Redis restart loses ``fleet:active`` with the runs it lists; a run none of
    whose steps runs afterwards would then vanish without a word. The beat sends every sweep, so it
    reads ``fleet:active`` first and remembers run id, config and operation (no secrets). A remembered
    run that left the listing with a summary ended (normally, or already as lost): it is forgotten. One
    that left it without a summary goes in the sweep's argument until a summary appears (the sweep
    ends it as lost) or ``forget_after`` seconds (the run ttl: its state would have expired anyway).
    A beat restart starts with an empty memory: it only passes fewer runs, never a wrong one.
    """

    forget_after: float
    runs: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # id → config, op, last seen

    def vanished(self, client: redis.Redis, now: float | None = None) -> list[list[Any]]:
        """Update the memory from ``fleet:active``; the remembered runs that left it without a summary."""
        moment = time.time() if now is None else now
        listed = active(client)
        for run_id, entry in listed.items():
            self.runs[run_id] = (str(entry.get("config")), int(entry.get("operation") or 0), moment)
        gone = [run_id for run_id in self.runs if run_id not in listed]
        with client.pipeline(transaction=False) as pipe:
            for run_id in gone:
                pipe.hexists(keys.run(run_id), "summary")
            ended = pipe.execute() if gone else []
        for run_id, done in zip(gone, ended, strict=True):
            if done or moment - self.runs[run_id][2] > self.forget_after:
                del self.runs[run_id]
        for run_id in sorted(self.runs, key=lambda r: self.runs[r][2])[:max(0, len(self.runs) - REMEMBER_MAX)]:
            del self.runs[run_id]
        newest = sorted((r for r in self.runs if r not in listed), key=lambda r: -self.runs[r][2])
        return [[run_id, *self.runs[run_id][:2]] for run_id in newest[:PER_SWEEP]]

    def forget_all(self) -> None:
        """Another beat leads: it keeps its own copy; this one would only grow stale."""
        self.runs.clear()


def _resend_idle(fleet: Fleet, meta: RunMeta, pending: list[int], queued: Queued, send: Senders,
                 report: Report, now: float, sent: dict[str, float]) -> None:
    """Send again the pending batches whose task is nowhere (no lease, not queued, sent long ago)."""
    settings = fleet.settings
    with fleet.redis.pipeline(transaction=False) as pipe:
        for number in pending:
            pipe.exists(keys.batch_lease(meta.run_id, number))
        leased = pipe.execute()
    idle = [n for n, held in zip(pending, leased, strict=True)
            if not held and (meta.run_id, n) not in queued.batches
            and now - sent.get(str(n), 0.0) >= settings.recover_grace]
    if not idle:
        return
    log_ = for_config(meta.config)
    given_up = [n for n in idle if sent.get(f"{n}:count", 0.0) >= settings.recover_attempts]
    for number in given_up:
        reason = (f"Batch {number}: its task was lost {settings.recover_attempts + 1} times (workers dying or the "
                  "broker losing it); it was not sent. The next run sends its rows.")
        log_.error(reason)
        fleet.batch_state(meta.run_id, number).finish(CommitOutcome(committed=False, errors=[reason]))
        fleet.store(meta.run_id).mark_done(number)
    again = [n for n in idle if n not in given_up]
    if again:
        fleet.run_lock(meta.config, meta.operation).carry_on(meta.run_id)  # the run is alive again
        log_.warning(f"Run {meta.run_id}: batch(es) {_numbers(again)} lost their task (a worker died, or the "
                     "broker dropped it): sending them again.")
        fleet.store(meta.run_id).mark_sent(again)
        for number in again:
            send.batch(meta.run_id, number, meta.file_jobs.get(number, 0), meta.config, meta.operation)
        report.resent[meta.run_id] = again
    if given_up:
        report.failed.append(meta.run_id)


def _resume_planner(fleet: Fleet, run_id: str, config: str, operation: int, meta: RunMeta | None,
                    queued: Queued, send: Senders, report: Report, now: float, sent: dict[str, float]) -> None:
    settings = fleet.settings
    if run_id in queued.sync or now - sent.get("resume", 0.0) < max(settings.recover_grace, settings.planner_ttl):
        return
    lock = fleet.run_lock(config, operation)
    tries = int(sent.get("resume:count", 0.0))
    superseded = not lock.carry_on(run_id)
    if tries >= settings.recover_attempts or superseded:
        why = (f"superseded by run {lock.holder() or lock.latest()}" if superseded
               else f"its planner died {tries + 1} times")
        if meta is None:
            ended = flow.end_lost(fleet, run_id, config, operation,
                                  f"Run {run_id} ended before staging anything: {why}. The next run sends the rows.")
            if ended is not None:
                send.ended(ended)
        else:
            error = (f"Run {run_id}: planning stopped after batch {meta.staged} ({why}); the rows after it were "
                     "not sent. The next run sends them.")
            for_config(config).error(error)
            fleet.store(run_id).end_planning(meta.staged, error)
            fleet.store(run_id).mark_sent([], "finalize")
            send.finalize(run_id, config, operation)
        report.failed.append(run_id)
        return
    for_config(config).warning(f"Run {run_id}: its planner stopped showing signs of life: resuming it.")
    fleet.store(run_id).mark_sent([], "resume")
    send.sync(run_id, config, operation)
    report.resumed.append(run_id)


def _free_dead_locks(fleet: Fleet, listed: set[str], report: Report, now: float) -> None:
    """Operation locks held by a run that is over, or dead and unknown to ``fleet:active`` (a run from
    before an upgrade, or whose listing was lost): free them, or list the run so it is recovered."""
    prefix = keys.lock("", 0).rsplit(":", 2)[0] + ":"
    for key in fleet.redis.scan_iter(match=prefix + "*", count=500):
        config, _, op = str(key)[len(prefix):].rpartition(":")
        holder = fleet.redis.get(key)
        if holder is None or holder in listed or not op.isdigit():
            continue
        run_id, operation = str(holder), int(op)
        lock = fleet.run_lock(config, operation)
        if fleet.planner(run_id).holder() is not None:
            continue
        meta = fleet.store(run_id).meta()
        if meta is not None and meta.summary is None:
            mark_active(fleet.redis, run_id, config, operation, meta.started)  # recovered next sweep
            continue
        held_for = fleet.settings.lock_ttl - lock.ttl_seconds()
        if (meta is not None or held_for >= fleet.settings.recover_grace) and lock.release(run_id):
            for_config(config).warning(f"Operation {operation + 1}: freed the lock of run {run_id}, which "
                                       "is over or dead.")
            report.freed.append(run_id)


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:20])
    return shown + (f" and {len(numbers) - 20} more" if len(numbers) > 20 else "")
