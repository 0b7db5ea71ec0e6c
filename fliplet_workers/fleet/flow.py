"""The steps of one fleet run, without Celery: plan, upload a file, commit a batch, finalize.

Each step is a plain function of (fleet, ids) that reuses the foreground agent's step functions in
:mod:`fliplet_workers.run`, so both agents decide, send, retry and log alike. :mod:`.tasks` wraps
each in a Celery task of a few lines and does the dispatching; keeping Celery out of here keeps the
steps easy to read and to test.

A run, as the tasks see it::

    sync(config, op)   claim fleet:lock:<config>:<op> (or skip: a run is in progress)
      │                index the remote entries; stream the source rows through the diff (the
      │                pure core); stage each batch in Redis the moment it is cut and send it
      ├─▶ [upload_file(run, n, i) ...] ─▶ commit(run, n)      one chain per batch, in parallel
      │                                     record outcome, add n to the done set
      └──────────────────────────────────▶ finalize(run)      sent by the commit completing the set:
                                                               summary → history, release the lock

Every step renews the operation lock; a step that finds the lock held by another run stops (that
run re-planned against the remote and covers the rows). Every step is safe to run twice, which is
what a redelivered task (late acks) does after its worker died.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from fliplet_workers import encryption, extensions, files
from fliplet_workers.config import Config
from fliplet_workers.core.batches import Batch
from fliplet_workers.core.retry import CommitOutcome
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import AgentError, ConfigError
from fliplet_workers.fleet import history
from fliplet_workers.fleet import keys as fleet_keys
from fliplet_workers.fleet.context import Fleet
from fliplet_workers.fleet.locks import Lock, kept_alive
from fliplet_workers.fleet.staging import PLANNING, RunMeta, mark_active
from fliplet_workers.fleet.state import BatchState, outcome_from_dict, outcomes
from fliplet_workers.fliplet.client import FlipletClient
from fliplet_workers.logs import OperationLog, for_config
from fliplet_workers.run import (
    OperationRun,
    add_outcome,
    authenticate,
    commit_batch,
    connect_client,
    connect_database,
    fail_plan,
    finish,
    run_operation,
    stream_push,
    summarise_plan,
)
from fliplet_workers.secrets import redact


class FleetError(Exception):
    """An unexpected failure of a step, with a message already scrubbed of secrets (shown in Flower)."""


#: Sends one batch's chain (its file uploads, then its commit): (run id, batch number, file jobs,
#: config name, operation). The planner calls it the moment a batch is staged.
Dispatch = Callable[[str, int, int, str, int], None]


@dataclass
class Started:
    """What the planning step did: its result, batches still to dispatch (a resumed run), whether the
    run is already complete, or when to look again (a resumed run waiting for its staged batches)."""

    result: dict[str, Any]
    batches: list[int] = field(default_factory=list)
    file_jobs: dict[int, int] = field(default_factory=dict)
    finalize: bool = False
    retry_in: float | None = None


@dataclass
class Committed:
    """What a commit step did: its result, whether the run is complete, or when to try again."""

    result: dict[str, Any]
    finalize: bool = False
    retry_in: float | None = None
    ended: dict[str, Any] | None = None  # the summary of a run this step ended as lost


_local = threading.local()


def shared_client(config: Config) -> FlipletClient:
    """One API client per config and thread, kept from task to task so that its HTTP connections
    stay open (a commit task then costs no TCP or TLS handshake). A changed token, URL or CA bundle
    gets a new client."""
    clients: dict[str, tuple[tuple[Any, ...], FlipletClient]] = _local.__dict__.setdefault("clients", {})
    token = hashlib.sha256(str.__str__(config.auth_token).encode()).hexdigest()
    wanted = (token, config.api_url, config.ca_bundle, config.timeout)
    known = clients.get(config.path)
    if known is not None and known[0] == wanted:
        return known[1]
    if known is not None:
        known[1].close()
    client = connect_client(config)
    clients[config.path] = (wanted, client)
    return client


def worker_label() -> str:
    """Which process does a step: recorded in the batch state (and used by the tests to find it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------------ planning


def start(fleet: Fleet, run_id: str, config_name: object, operation: object = 0,
          dry_run: bool = False, dispatch: Dispatch | None = None) -> Started:
    """Claim the operation, plan the run, staging and dispatching each batch as it is cut (or run it
    inline when there is nothing to fan out: dry run, pull, nothing to commit, or a failure)."""
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
    planner, owner = fleet.planner(run_id), _owner()
    if not planner.acquire(owner):  # a copy of this task (sent again by recovery) plans it already
        return Started({"run_id": run_id, "config": name, "operation": index, "waiting": 0,
                        "note": "another task is planning this run"})
    started = time.time()
    mark_active(fleet.redis, run_id, name, index, started)
    try:
        with kept_alive([lambda: lock.renew(run_id), lambda: planner.renew(owner)], fleet.renew_every,
                        "operation lock") as lost:
            return _plan(fleet, run_id, config, index, dry_run, started, log, send, lost=lost)
    except PlanningStopped as stop:
        return Started(_stopped(fleet, run_id, name, index, started, stop, log))
    except AgentError as error:
        log.critical(redact(error.log_text()))
        failed = RunSummary(config=name, operation=index, ok=False, errors=[redact(error.log_text())])
        return Started(_finish_inline(fleet, run_id, failed, started))
    except Exception as error:
        text = f"There was an error running your config file. {type(error).__name__}: {redact(str(error))}"
        log.critical(text)
        _finish_inline(fleet, run_id, RunSummary(config=name, operation=index, ok=False, errors=[text]), started)
        raise FleetError(text) from None
    finally:
        _release(planner, owner)


class PlanningStopped(Exception):
    """The planner lost its heartbeat or the run's lock (another task took over, or Redis lost the
    run's state): it must not stage or send anything more."""


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
    return _finish_inline(fleet, run_id, RunSummary(config=name, operation=index, ok=False, errors=[text]), started)


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


def _plan(fleet: Fleet, run_id: str, config: Config, index: int, dry_run: bool, started: float,
          log: OperationLog, send: Dispatch, first_batch: int = 1, lost: threading.Event | None = None) -> Started:
    """Plan the run, staging and dispatching each batch the moment it is cut: the first commits
    start while the source is still being read. ``first_batch`` > 1 continues a resumed run.
    ``lost`` is set when the planner's heartbeat or lock was taken: it then stops at once."""
    op = config.operations[index]
    log.info(f"Running operation {index + 1} of {len(config.operations)}: {op.label}")
    client = connect_client(config, log)
    db = None
    try:
        db = connect_database(config, log)
        authenticate(client, log)
        run = OperationRun(config=config, index=index, client=client, log=log,
                           dry_run=dry_run or config.is_dry_run, db=db)
        if run.dry_run or op.type == "pull":  # nothing to fan out: exactly the foreground agent's run
            return Started(_finish_inline(fleet, run_id, run_operation(run), started))
        store = fleet.store(run_id)
        if first_batch == 1:
            store.open(config.name, index, started)
        resumed = store.meta() if first_batch > 1 else None
        jobs: dict[int, int] = dict(resumed.file_jobs) if resumed is not None else {}
        last = first_batch - 1

        def stage_and_send(batch: Batch) -> None:
            nonlocal last
            if lost is not None and lost.is_set():
                raise PlanningStopped("the planner's heartbeat or the operation lock was lost")
            count = len(files.file_jobs(batch, op)) if op.files else 0
            if count:
                jobs[batch.number] = count
            store.add_batch(staged_form(run, batch), jobs)
            send(run_id, batch.number, count, config.name, index)
            last = batch.number

        extensions.attach(run)
        try:
            tally = stream_push(run, stage_and_send, first_batch=first_batch)
        finally:
            extensions.detach(run)
        if last == 0:
            log.info("Nothing to commit.")
            summary = RunSummary(config=config.name, operation=index)
            summarise_plan(summary, tally, 0)
            summary.seconds = round(time.time() - started, 3)
            finish(run, summary)
            return Started(_finish_inline(fleet, run_id, summary, started))
        if lost is not None and lost.is_set():
            raise PlanningStopped("the planner's heartbeat or the operation lock was lost")
        counts = tally.counts()
        if first_batch > 1:  # rows the first planner sent look unchanged to this one: count them once
            counts["unchanged"] = max(0, counts.get("unchanged", 0) - _sent_before(fleet, run_id, first_batch - 1))
        store.close(last, counts)
        log.info(f"Run {run_id}: {last} batch(es) handed over to the workers.")
        # A commit that ended before the close could not know it was the last: check here (both may
        # send finalize, which is idempotent).
        return Started({"run_id": run_id, "config": config.name, "operation": index,
                        "dispatched": last, "plan": counts},
                       finalize=store.done_count() >= last)
    finally:
        client.close()
        if db is not None:
            db.close()


def staged_form(run: OperationRun, batch: Batch) -> Batch:
    """The batch as it is staged in Redis: with ``encrypt.fields`` already encrypted (file columns
    excepted: their value is a file name until the upload step rewrites it; the commit step encrypts
    those), so that no plaintext of an encrypted field reaches Redis or its AOF."""
    enc = run.op.encrypt
    if enc is None:
        return batch
    file_columns = {f.column for f in run.op.files}
    fields = [f for f in enc.fields if f not in file_columns]
    key = encryption.key_for(run)
    if not fields or key is None:
        return batch
    return encryption.encrypt_batch(batch, fields, key)


def _file_fields(op: Any) -> list[str]:
    """The encrypted fields that are also file columns: encrypted by the commit step."""
    if op.encrypt is None:
        return []
    file_columns = {f.column for f in op.files}
    return [f for f in op.encrypt.fields if f in file_columns]


def _sent_before(fleet: Fleet, run_id: str, count: int) -> int:
    """Rows inserted or updated by batches 1..count (those a resumed planner finds unchanged)."""
    return sum(int(o.get("inserted") or 0) + int(o.get("updated") or 0)
               for o in outcomes(fleet.redis, run_id, count) if o is not None)


def _resume(fleet: Fleet, meta: RunMeta, config: Config, send: Dispatch, log: OperationLog) -> Started:
    """The sync task of this run was delivered again: its worker died. Pick up where it stopped."""
    head = {"run_id": meta.run_id, "config": meta.config, "operation": meta.operation}
    if meta.summary is not None:
        return Started(meta.summary)
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
    planner, owner = fleet.planner(meta.run_id), _owner()
    if not planner.acquire(owner):
        return Started(head | {"waiting": 0, "note": "another task is planning this run"})
    log.warning(f"Run {meta.run_id} was interrupted while planning: planning the rest after batch {meta.staged}.")
    lock = fleet.run_lock(meta.config, meta.operation)
    try:
        with kept_alive([lambda: lock.renew(meta.run_id), lambda: planner.renew(owner)], fleet.renew_every,
                        "operation lock") as lost:
            return _plan(fleet, meta.run_id, config, meta.operation, False, meta.started, log, send,
                         first_batch=meta.staged + 1, lost=lost)
    except PlanningStopped as stop:
        return Started(_stopped(fleet, meta.run_id, meta.config, meta.operation, meta.started, stop, log))
    finally:
        _release(planner, owner)


def _no_dispatch(run_id: str, number: int, file_jobs: int, config: str, operation: int) -> None:
    raise FleetError("the planner was given no way to dispatch its batches")


# ------------------------------------------------------------------------------------ commits


def commit(fleet: Fleet, run_id: str, number: int, config_name: str, operation: int) -> Committed:
    """Commit batch ``number`` of the run exactly once, whichever worker (or how many) runs this."""
    log = for_config(config_name)
    head: dict[str, Any] = {"run_id": run_id, "config": config_name, "operation": operation, "batch": number}
    store = fleet.store(run_id)
    meta = store.meta()
    if meta is None:
        log.error(f"Run {run_id}: its staged data is gone (expired or removed); batch {number} is not sent.")
        ended = end_lost(fleet, run_id, config_name, operation, _vanished(run_id))
        return Committed(head | {"sent": False, "reason": "the run's staged data is gone"}, ended=ended)
    state = fleet.batch_state(run_id, number)
    outcome = state.outcome()
    if outcome is None and meta.summary is not None:  # ended without it (given up): never retake its lock
        log.warning(f"Run {run_id} has ended: batch {number} is not sent; the next run covers its rows.")
        return Committed(head | {"sent": False, "reason": "the run has ended"})
    if outcome is None:
        lock = fleet.run_lock(meta.config, meta.operation)
        if not lock.carry_on(run_id):
            holder = lock.holder() or lock.latest()
            log.warning(f"Run {run_id} no longer holds operation {meta.operation + 1} (run {holder} does): "
                        f"batch {number} is not sent; the newer run covers its rows.")
            outcome = state.finish(CommitOutcome(committed=False, errors=[
                f"Batch {number}: not sent, the run was superseded by run {holder}."]))
        else:
            owner = f"{worker_label()}:{uuid.uuid4().hex[:8]}"
            lease = state.lease
            if not lease.acquire(owner):
                wait = max(1.0, lease.ttl_seconds())
                log.info(f"Batch {number} of run {run_id} is being committed by another worker; "
                         f"checking again in {wait:.0f} s.")
                return Committed(head | {"sent": False, "reason": "another worker holds the batch"}, retry_in=wait)
            try:
                with kept_alive([lambda: lock.renew(run_id), lambda: lease.renew(owner)], fleet.renew_every,
                                f"lease of batch {number}"):
                    outcome = _send(fleet, meta, number, state, log)
            finally:
                lease.release(owner)
    added, count = store.mark_done(number)
    store.drop_batch(number)  # its rows are not kept in Redis a moment longer than needed
    if not fleet.redis.exists(fleet_keys.run(run_id)):  # Redis lost the run meanwhile (restart, no AOF)
        ended = end_lost(fleet, run_id, config_name, operation, _vanished(run_id))
        return Committed(head | _brief(outcome), ended=ended)
    # Normally the commit that completes the set sends finalize; a redelivered one sends it again if
    # its first delivery died before doing so (finalize is idempotent). The batch count is read after
    # marking: while the planner is still cutting batches there is no last one yet (it checks itself
    # when it closes the run).
    latest = store.meta() or meta
    complete = (latest.state != PLANNING and count >= latest.batches
                and (added or not _finalized(fleet, run_id)))
    return Committed(head | _brief(outcome), finalize=complete)


def _finalized(fleet: Fleet, run_id: str) -> bool:
    meta = fleet.store(run_id).meta()
    return meta is not None and meta.summary is not None


def _send(fleet: Fleet, meta: RunMeta, number: int, state: BatchState, log: OperationLog) -> dict[str, Any]:
    outcome: CommitOutcome
    file_errors = 0
    try:
        config = fleet.registry.load(meta.config)
        batch = fleet.store(meta.run_id).batch(number)
        if batch is None:
            raise FleetError(f"batch {number} of run {meta.run_id} is no longer staged (expired?)")
        client = shared_client(config)
        # Not ``extensions.attach``: the planner did the checks and created the encryption key; the
        # files were uploaded by the upload steps, so a batch only needs its file columns rewritten
        # and its fields encrypted.
        run = OperationRun(config=config, index=meta.operation, client=client, log=log)
        try:
            if run.op.files:
                batch, file_errors = _apply_uploads(fleet, run, meta.run_id, batch)
            late = _file_fields(run.op)  # the planner staged every other encrypted field encrypted
            if late:
                key = encryption.key_for(run)
                run.prepare = (lambda part: encryption.encrypt_batch(part, late, key)) if key else None
            unknown = state.begin(worker_label())  # before anything is sent: a death from here is "unknown"
            if unknown:
                log.warning(f"Batch {number}: an earlier attempt stopped without an answer (its worker died?); "
                            "checking the data source before sending it again.")
            # The lease was free: the earlier attempt's worker stopped renewing it at least (ttl - renewal
            # period) ago, so its last request is at least that old: the settle wait counts from then.
            quiet = max(0.0, fleet.settings.lease_ttl - fleet.renew_every) if unknown else 0.0
            outcome = commit_batch(run, batch, start_unknown=unknown, on_attempt=state.attempt,
                                   clock=_dated_back(quiet))
            if run.op.on_sync is not None:  # onSync runs in finalize: keep its entries with the outcome
                outcome.applied_entries = run.committed_entries
        finally:
            extensions.detach(run)
    except AgentError as error:
        log.critical(redact(error.log_text()))
        outcome = CommitOutcome(committed=False, errors=[f"Batch {number}: {redact(error.log_text())}"])
    except Exception as error:  # a bug, a time limit: report it in the run's summary, keep the run going
        text = f"Batch {number}: {type(error).__name__}: {redact(str(error))}"
        log.error(text)
        outcome = CommitOutcome(committed=False, errors=[text])
    return state.finish(outcome, file_errors=file_errors)


def _dated_back(seconds: float) -> Callable[[], float]:
    """A monotonic clock whose first reading is ``seconds`` in the past: ``commit_with_retries`` takes
    that first reading as the moment the earlier attempt's outcome became unknown; every later
    reading (a new timeout in this step) is the true time, so those get the full settle wait."""
    first = [True]

    def clock() -> float:
        if first[0]:
            first[0] = False
            return time.monotonic() - seconds
        return time.monotonic()

    return clock


def _brief(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: outcome.get(k) for k in ("committed", "inserted", "updated", "deleted", "attempts",
                                         "already_applied", "rejected_entries", "file_errors", "errors")}


# ------------------------------------------------------------------------------------ files


def upload(fleet: Fleet, run_id: str, number: int, job: int, config_name: str, operation: int) -> dict[str, Any]:
    """Upload file ``job`` of batch ``number`` and keep the result for the commit step (once)."""
    head = {"run_id": run_id, "config": config_name, "operation": operation, "batch": number, "job": job}
    key = fleet_keys.file_result(run_id, number, job)
    if fleet.redis.exists(key):
        return head | {"uploaded": True, "again": True}
    log = for_config(config_name)
    store = fleet.store(run_id)
    meta, batch = store.meta(), store.batch(number)
    if meta is None or batch is None:
        return head | {"uploaded": False, "reason": "the run's staged data is gone"}
    lock = fleet.run_lock(meta.config, meta.operation)
    if not lock.carry_on(run_id):
        return head | {"uploaded": False, "reason": "the run was superseded"}
    try:
        config = fleet.registry.load(meta.config)
        run = OperationRun(config=config, index=meta.operation, client=shared_client(config), log=log)
        try:
            result = files.upload_one(run, files.file_jobs(batch, run.op)[job])
        finally:
            extensions.detach(run)
    except Exception as error:  # not kept: the commit step uploads whatever is missing itself
        log.error(f"Batch {number}: file {job + 1} could not be uploaded: {type(error).__name__}: "
                  f"{redact(str(error))}")
        return head | {"uploaded": False, "reason": redact(str(error))}
    fleet.redis.set(key, orjson.dumps(result.to_dict()), ex=fleet.settings.run_ttl_s)
    return head | {"uploaded": result.ok, "error": result.error}


def _apply_uploads(fleet: Fleet, run: OperationRun, run_id: str, batch: Batch) -> tuple[Batch, int]:
    """The batch with its file columns rewritten from the upload steps' results (a missing result is
    uploaded here), and how many files failed."""
    jobs = files.file_jobs(batch, run.op)
    if not jobs:
        return batch, 0
    raw = fleet.redis.mget([fleet_keys.file_result(run_id, batch.number, i) for i in range(len(jobs))])
    results = [files.upload_one(run, job) if data is None else files.FileResult.from_dict(orjson.loads(data))
               for job, data in zip(jobs, raw, strict=True)]
    return files.apply_file_results(batch, jobs, results, run.log), sum(1 for r in results if not r.ok)


# ------------------------------------------------------------------------------------ the end


def finalize(fleet: Fleet, run_id: str, config_name: str, operation: int, owner: str) -> dict[str, Any]:
    """Sum the batches' outcomes into the run's summary, keep it, release the lock, drop the rows."""
    store = fleet.store(run_id)
    meta = store.meta()
    if meta is None:
        return {"run_id": run_id, "config": config_name, "operation": operation, "ok": False,
                "errors": ["the run's data is gone (expired or removed)"]}
    if meta.summary is not None:
        return meta.summary
    if not store.claim_finalize(owner):
        return {"run_id": run_id, "config": meta.config, "operation": meta.operation,
                "note": "another finalize step is writing this run's summary"}
    summary = RunSummary(config=meta.config, operation=meta.operation, batches=meta.batches,
                         unchanged=meta.plan.get("unchanged", 0), skipped=meta.plan.get("skipped", 0))
    applied: list[dict[str, Any]] = []  # for onSync: the entries each batch's commit step kept
    for number, outcome in enumerate(outcomes(fleet.redis, run_id, meta.batches), start=1):
        if outcome is None:
            summary.ok = False
            summary.errors.append(f"Batch {number}: no outcome was recorded.")
        else:
            add_outcome(summary, outcome_from_dict(outcome))
            applied.extend(outcome.get("applied_entries") or [])
            summary.file_errors += int(outcome.get("file_errors") or 0)
    fail_plan(summary, meta.plan, rows_listed=False)  # deletions held back by the guard, rows skipped
    if meta.errors:  # recorded by the recovery sweep (a planner that kept dying)
        summary.ok = False
        summary.errors.extend(meta.errors)
    summary.seconds = round(time.time() - meta.started, 3)
    log = for_config(meta.config)
    try:
        config = fleet.registry.load(meta.config)
        client = connect_client(config)
        # an onSync may take a while: keep the claim, or recovery would send a second finalize
        with kept_alive([lambda: store.finalizing.renew(owner)], fleet.renew_every, "finalize claim"):
            try:
                finish(OperationRun(config=config, index=meta.operation, client=client, log=log,
                                    committed_entries=applied), summary)
            finally:
                client.close()
    except ConfigError:  # the file changed or vanished meanwhile: log the end all the same
        for error in summary.errors:
            log.critical(f"Cannot sync data to Fliplet servers: {error}")
        log.info(f"Sync finished. {summary.affected} data source entries have been affected.")
    result = _record(fleet, run_id, summary)
    store.drop_batches(meta.batches)
    fleet.redis.delete(fleet_keys.sent(run_id), fleet_keys.planner(run_id), fleet_keys.resume(run_id))
    return result


def _vanished(run_id: str) -> str:
    return (f"Run {run_id}: its state in Redis vanished before it ended (Redis restarted without persistence, "
            "or the data expired or was removed); its rows may be partly sent. The next run sends what is "
            "missing.")


def end_lost(fleet: Fleet, run_id: str, config: str, operation: int, reason: str) -> dict[str, Any] | None:
    """End a run whose state is gone as failed, saying why: once (the first caller records it), with
    its summary in the history and the operation lock released. None if it was recorded already."""
    if not fleet.redis.set(fleet_keys.lost(run_id), 1, nx=True, ex=fleet.settings.run_ttl_s):
        return None
    for_config(config).critical(f"Cannot sync data to Fliplet servers: {reason}")
    summary = RunSummary(config=config, operation=operation, ok=False, errors=[reason])
    return _finish_inline(fleet, run_id, summary, time.time())


def _finish_inline(fleet: Fleet, run_id: str, summary: RunSummary, started: float) -> dict[str, Any]:
    if not summary.seconds:
        summary.seconds = round(time.time() - started, 3)
    return _record(fleet, run_id, summary, inline_started=started)


def _as_result(run_id: str, summary: RunSummary) -> dict[str, Any]:
    return {"run_id": run_id, **summary.to_dict(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _record(fleet: Fleet, run_id: str, summary: RunSummary, inline_started: float | None = None) -> dict[str, Any]:
    result = _as_result(run_id, summary)
    store = fleet.store(run_id)
    with fleet.redis.pipeline(transaction=True) as pipe:  # the summary and its history entry, at once
        if inline_started is not None:  # a run without batches: its metadata too
            store.save_inline(summary.config, summary.operation, inline_started, pipe)
        store.save_summary(result, pipe)
        history.add(pipe, summary.config, summary.operation, result, fleet.settings.history)
        pipe.execute()
    fleet.run_lock(summary.config, summary.operation).release(run_id)
    return result
