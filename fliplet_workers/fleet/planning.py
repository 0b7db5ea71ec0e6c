"""The fleet's planning step (``fliplet.sync``): claim the operation, then push through the pipeline
with a :class:`~fliplet_workers.fleet.staging.StagingSink`.

The push is the foreground's own :func:`~fliplet_workers.pipeline.push.push`; only the sink differs
(each batch is staged in Redis and its chain dispatched the moment it is cut, so the first commits
start while the source is still being read). What this step adds is the fleet's: one run per
operation at a time (the operation lock), a heartbeat while planning, and picking up a run whose
planning task died (:func:`_resume`). What it does not fan out (dry run, pull, nothing to commit, a
failure) it ends inline, exactly as the foreground agent does.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from fliplet_workers.config import Config
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import AgentError, ConfigError
from fliplet_workers.fleet import keys as fleet_keys
from fliplet_workers.fleet.finalizing import finish_inline
from fliplet_workers.fleet.locks import Lock, kept_alive
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.staging import (
    PLANNING,
    Dispatch,
    PlanningStopped,
    RunMeta,
    StagingSink,
    mark_active,
)
from fliplet_workers.fleet.state import outcomes
from fliplet_workers.fleet.watermarks import RedisMarks, keep_candidate
from fliplet_workers.fleet.worker import FleetError, worker_label
from fliplet_workers.logs import OperationLog, for_config
from fliplet_workers.pipeline.agent import run_operation
from fliplet_workers.pipeline.commit import SyncRecord
from fliplet_workers.pipeline.connect import authenticate, connect_client, connect_database
from fliplet_workers.pipeline.push import push
from fliplet_workers.pipeline.spec import Resources, RunSpec
from fliplet_workers.pipeline.steps.chain import open_steps
from fliplet_workers.redaction import redact


@dataclass
class Started:
    """What the planning step did: its result, batches still to dispatch (a resumed run), whether the
    run is already complete, or when to look again (a resumed run waiting for its staged batches)."""

    result: dict[str, Any]
    batches: list[int] = field(default_factory=list)
    file_jobs: dict[int, int] = field(default_factory=dict)
    finalize: bool = False
    retry_in: float | None = None


def start(fleet: Fleet, run_id: str, config_name: object, operation: object = 0,
          dry_run: bool = False, dispatch: Dispatch | None = None, full: bool = False) -> Started:
    """Claim the operation, plan the run, staging and dispatching each batch as it is cut (or run it
    inline when there is nothing to fan out: dry run, pull, nothing to commit, or a failure).
    ``full``: an incremental operation compares every row this time (kept with the run, so that a
    planner that takes over a dead one's run does the same)."""
    send: Dispatch = dispatch or _no_dispatch
    head = {"run_id": run_id, "config": str(config_name), "operation": operation}
    log = for_config(str(config_name))
    try:
        config = fleet.registry.load(config_name)
        index = operation_index(config, operation)
    except ConfigError as error:
        log.critical(error.log_text())
        return Started(head | {"ok": False, "errors": [error.log_text()]})
    name, log = config.name, for_config(config.name)
    lock = fleet.run_lock(name, index)
    if fleet.redis.exists(fleet_keys.lost(run_id)):  # recovery ended this run as failed: it stays ended
        log.warning(f"Run {run_id} was ended as failed by the recovery sweep: this delivery does nothing.")
        return Started({"run_id": run_id, "config": name, "operation": index, "skipped": True,
                        "reason": "the run was ended as failed by the recovery sweep"})
    meta = fleet.store(run_id).meta()
    if meta is not None and meta.summary is not None:  # the run ended: report it, never retake its lock
        return Started(meta.summary)
    if meta is not None:  # this very task ran before, on a worker that died: carry on
        if not lock.carry_on(run_id):
            return Started(_superseded(run_id, name, index, lock.holder() or lock.latest(), log))
        return _resume(fleet, meta, config, send, log)
    if not lock.start(run_id):
        holder = lock.holder()
        log.info(f"Operation {index + 1} is already running (run {holder}): this trigger is skipped.")
        return Started({"run_id": run_id, "config": name, "operation": index, "skipped": True,
                        "reason": f"run {holder} is in progress"})
    return _claimed(fleet, run_id, RunSpec(config, index, dry_run or config.is_dry_run, full), send, log)


def _claimed(fleet: Fleet, run_id: str, spec: RunSpec, send: Dispatch, log: OperationLog) -> Started:
    """The operation is this run's: plan it under the planner's heartbeat, ending it inline on a failure."""
    name, index = spec.config.name, spec.index
    planner, owner = fleet.planner(run_id), _owner()
    if not planner.acquire(owner):  # a copy of this task (sent again by recovery) plans it already
        return Started({"run_id": run_id, "config": name, "operation": index, "waiting": 0,
                        "note": "another task is planning this run"})
    started = time.time()
    mark_active(fleet.redis, run_id, name, index, started)
    lock = fleet.run_lock(name, index)
    try:
        with kept_alive([lambda: lock.renew(run_id), lambda: planner.renew(owner)], fleet.renew_every,
                        "operation lock") as lost:
            return _plan(fleet, run_id, spec, started, log, send, lost=lost)
    except PlanningStopped as stop:
        return Started(_stopped(fleet, run_id, name, index, started, stop, log))
    except AgentError as error:
        log.critical(redact(error.log_text()))
        failed = RunSummary(config=name, operation=index, ok=False, errors=[redact(error.log_text())])
        return Started(finish_inline(fleet, run_id, failed, started))
    except Exception as error:
        text = f"There was an error running your config file. {type(error).__name__}: {redact(str(error))}"
        log.critical(text)
        finish_inline(fleet, run_id, RunSummary(config=name, operation=index, ok=False, errors=[text]), started)
        raise FleetError(text) from None
    finally:
        _release(planner, owner)


def _owner() -> str:
    return f"{worker_label()}:{uuid.uuid4().hex[:8]}"


def _release(lock: Lock, owner: str) -> None:
    with contextlib.suppress(redis.RedisError):  # it expires anyway
        lock.release(owner)


def _stopped(fleet: Fleet, run_id: str, name: str, index: int, started: float, stop: PlanningStopped,
             log: OperationLog) -> dict[str, Any]:
    """A planner that lost its heartbeat: if the run's state is gone from Redis the run failed (say
    so); otherwise another task carries the run on and this one just stops."""
    raw = fleet.redis.hgetall(fleet_keys.run(run_id))
    if raw.get("config"):
        log.warning(f"Run {run_id}: this planner stops, another task carries the run on ({stop}).")
        return {"run_id": run_id, "config": name, "operation": index, "waiting": 0, "note": str(stop)}
    text = (f"Run {run_id}: its state in Redis vanished while it was being planned (Redis restarted without "
            "persistence, or the data was removed); the rows it staged may be lost. The next run sends what is "
            "missing.")
    log.critical(text)
    fleet.redis.delete(fleet_keys.run(run_id))
    return finish_inline(fleet, run_id, RunSummary(config=name, operation=index, ok=False, errors=[text]), started)


def _superseded(run_id: str, name: str, index: int, other: str | None, log: OperationLog) -> dict[str, Any]:
    log.warning(f"Run {run_id} was superseded by run {other} of operation {index + 1}: it stops here.")
    return {"run_id": run_id, "config": name, "operation": index, "skipped": True,
            "reason": f"superseded by run {other}"}


def operation_index(config: Config, operation: object) -> int:
    """The 0-based index of an operation, checked (task arguments come from anyone who can send one)."""
    if isinstance(operation, str) and operation.strip().isdigit():
        operation = int(operation)
    if isinstance(operation, bool) or not isinstance(operation, int) or \
            not 0 <= operation < len(config.operations):
        raise ConfigError(config.path, [
            f"operation {operation!r} does not exist: the config has {len(config.operations)} operation(s), "
            f"numbered from 0"])
    return operation


def _plan(fleet: Fleet, run_id: str, spec: RunSpec, started: float,
          log: OperationLog, send: Dispatch, first_batch: int = 1, lost: threading.Event | None = None) -> Started:
    """Open what the run needs and push it (``first_batch`` > 1 continues a resumed run; ``lost`` is
    set when the planner's heartbeat or lock was taken: it then stops at once)."""
    config, index, op = spec.config, spec.index, spec.op
    log.info(f"Running operation {index + 1} of {len(config.operations)}: {op.label}")
    client = connect_client(config, log)
    db = None
    try:
        db = connect_database(config, log)
        authenticate(client, log)
        res = Resources(api=client, log=log, db=db, marks=RedisMarks(fleet.redis, config.name))
        if spec.dry_run or op.type == "pull":  # nothing to fan out: exactly the foreground agent's run
            return Started(finish_inline(fleet, run_id, run_operation(spec, res), started))
        return _push(fleet, run_id, spec, res, started, send, first_batch, lost)
    finally:
        client.close()
        if db is not None:
            db.close()


def _push(fleet: Fleet, run_id: str, spec: RunSpec, res: Resources, started: float, send: Dispatch,
          first_batch: int, lost: threading.Event | None) -> Started:
    """The pipeline's push into a :class:`StagingSink`; the run ends here only if nothing was cut."""
    store = fleet.store(run_id)
    if first_batch == 1:
        store.open(spec.config.name, spec.index, started, full=spec.full)
    resumed = store.meta() if first_batch > 1 else None
    steps = open_steps(spec, res)
    record = SyncRecord() if spec.op.on_sync is not None else None
    sink = StagingSink(store, spec, steps, send, lost=lost, first_batch=first_batch,
                       file_jobs=resumed.file_jobs if resumed is not None else None,
                       sent_before=lambda count: _sent_before(fleet, run_id, count))
    try:
        pushed = push(spec, res, steps, sink, record=record, first_batch=first_batch,
                      on_read=lambda candidate: keep_candidate(fleet.redis, run_id, candidate,
                                                               fleet.settings.run_ttl_s))
    finally:
        steps.close()
    if pushed.ended:  # nothing to commit: closed by ``push`` like the foreground's
        return Started(finish_inline(fleet, run_id, pushed.summary, started))
    res.log.info(f"Run {run_id}: {sink.last} batch(es) handed over to the workers.")
    # A commit that ended before the close could not know it was the last: check here (both may
    # send finalize, which is idempotent).
    return Started({"run_id": run_id, "config": spec.config.name, "operation": spec.index,
                    "dispatched": sink.last, "plan": sink.counts},
                   finalize=store.done_count() >= sink.last)


def _sent_before(fleet: Fleet, run_id: str, count: int) -> int:
    """Rows inserted or updated by batches 1..count (those a resumed planner finds unchanged)."""
    return sum(int(o.get("inserted") or 0) + int(o.get("updated") or 0)
               for o in outcomes(fleet.redis, run_id, count) if o is not None)


def _resume(fleet: Fleet, meta: RunMeta, config: Config, send: Dispatch, log: OperationLog) -> Started:
    """The sync task of this run was delivered again: its worker died. Pick up where it stopped."""
    head = {"run_id": meta.run_id, "config": meta.config, "operation": meta.operation}
    if meta.state == PLANNING and fleet.planner(meta.run_id).holder() is not None:
        return Started(head | {"waiting": 0, "note": "another task is planning this run"})
    known = meta.batches if meta.state != PLANNING else meta.staged
    pending = [n for n, o in enumerate(outcomes(fleet.redis, meta.run_id, known), start=1) if o is None]
    if meta.state != PLANNING:
        log.warning(f"Run {meta.run_id} was interrupted after planning: sending its {len(pending)} unfinished "
                    "batch(es) again.")
        return Started(head | {"dispatched": len(pending), "plan": meta.plan, "resumed": True},
                       batches=pending, file_jobs={n: meta.file_jobs.get(n, 0) for n in pending},
                       finalize=not pending)
    # Interrupted while planning: the staged batches may be on their way. Send them again once (a
    # batch is committed once however many tasks carry it), wait until each has an outcome, then
    # plan the rest: the rows they carried are on the remote by then, so nothing is sent twice.
    if pending:
        if fleet.store(meta.run_id).mark_redispatched():
            log.warning(f"Run {meta.run_id} was interrupted while planning: sending its {len(pending)} staged "
                        "batch(es) again before planning the rest.")
            for number in pending:
                send(meta.run_id, number, meta.file_jobs.get(number, 0), meta.config, meta.operation)
        return Started(head | {"waiting": len(pending)}, retry_in=2.0)
    return _replan(fleet, meta, config, send, log)


def _replan(fleet: Fleet, meta: RunMeta, config: Config, send: Dispatch, log: OperationLog) -> Started:
    """Plan the rest of a run whose planner died, after the batches it staged."""
    head = {"run_id": meta.run_id, "config": meta.config, "operation": meta.operation}
    planner, owner = fleet.planner(meta.run_id), _owner()
    if not planner.acquire(owner):
        return Started(head | {"waiting": 0, "note": "another task is planning this run"})
    log.warning(f"Run {meta.run_id} was interrupted while planning: planning the rest after batch {meta.staged}.")
    lock = fleet.run_lock(meta.config, meta.operation)
    try:
        with kept_alive([lambda: lock.renew(meta.run_id), lambda: planner.renew(owner)], fleet.renew_every,
                        "operation lock") as lost:
            spec = RunSpec(config, meta.operation, full=meta.full)
            return _plan(fleet, meta.run_id, spec, meta.started, log, send, first_batch=meta.staged + 1, lost=lost)
    except PlanningStopped as stop:
        return Started(_stopped(fleet, meta.run_id, meta.config, meta.operation, meta.started, stop, log))
    finally:
        _release(planner, owner)


def _no_dispatch(run_id: str, number: int, file_jobs: int, config: str, operation: int) -> None:
    raise FleetError("the planner was given no way to dispatch its batches")
