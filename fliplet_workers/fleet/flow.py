"""The steps of one fleet run, without Celery: plan, upload a file, commit a batch, finalize.

Each step is a plain function of (fleet, ids) that reuses the foreground agent's step functions in
:mod:`fliplet_workers.run`, so both agents decide, send, retry and log alike. :mod:`.tasks` wraps
each in a Celery task of a few lines and does the dispatching; keeping Celery out of here keeps the
steps easy to read and to test.

A run, as the tasks see it::

    sync(config, op)   claim fleet:lock:<config>:<op> (or skip: a run is in progress)
      │                fetch source rows + remote entries → diff → batches (the pure core)
      │                stage batches + metadata in Redis under the run id
      ├─▶ [upload_file(run, n, i) ...] ─▶ commit(run, n)      one chain per batch, in parallel
      │                                     record outcome, add n to the done set
      └──────────────────────────────────▶ finalize(run)      sent by the commit completing the set:
                                                               summary → history, release the lock

Every step renews the operation lock; a step that finds the lock held by another run stops (that
run re-planned against the remote and covers the rows). Every step is safe to run twice, which is
what a redelivered task (late acks) does after its worker died.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fliplet_workers import extensions
from fliplet_workers.config import Config
from fliplet_workers.core.batches import Batch
from fliplet_workers.core.retry import CommitOutcome
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import AgentError, ConfigError, EncryptionError
from fliplet_workers.fleet import history
from fliplet_workers.fleet import keys as fleet_keys
from fliplet_workers.fleet.context import Fleet
from fliplet_workers.fleet.locks import kept_alive
from fliplet_workers.fleet.staging import DISPATCHED, RunMeta
from fliplet_workers.fleet.state import BatchState, outcome_from_dict, outcomes
from fliplet_workers.logs import OperationLog, for_config
from fliplet_workers.run import (
    OperationRun,
    add_outcome,
    authenticate,
    commit_batch,
    connect_client,
    connect_database,
    finish,
    plan_push,
    run_operation,
    summarise_plan,
)
from fliplet_workers.secrets import redact


class FleetError(Exception):
    """An unexpected failure of a step, with a message already scrubbed of secrets (shown in Flower)."""


@dataclass
class Started:
    """What the planning step decided: its result, and the batches the task must dispatch."""

    result: dict[str, Any]
    batches: list[int] = field(default_factory=list)
    file_jobs: dict[int, int] = field(default_factory=dict)
    finalize: bool = False


@dataclass
class Committed:
    """What a commit step did: its result, whether the run is complete, or when to try again."""

    result: dict[str, Any]
    finalize: bool = False
    retry_in: float | None = None


def worker_label() -> str:
    """Which process does a step: recorded in the batch state (and used by the tests to find it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------------ planning


def start(fleet: Fleet, run_id: str, config_name: object, operation: object = 0,
          dry_run: bool = False) -> Started:
    """Claim the operation, plan the run and stage its batches (or run it inline when there is
    nothing to fan out: dry run, pull, nothing to commit, or a failure)."""
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
    if not lock.claim(run_id):
        holder = lock.holder()
        log.info(f"Operation {index + 1} is already running (run {holder}): this trigger is skipped.")
        return Started({"run_id": run_id, "config": name, "operation": index, "skipped": True,
                        "reason": f"run {holder} is in progress"})
    meta = fleet.store(run_id).meta()
    if meta is not None:  # this very task ran before, on a worker that died: carry on
        return _resume(fleet, meta, log)
    started = time.time()
    try:
        with kept_alive([lambda: lock.renew(run_id)], fleet.renew_every, "operation lock"):
            return _plan(fleet, run_id, config, index, dry_run, started, log)
    except AgentError as error:
        log.critical(redact(error.log_text()))
        failed = RunSummary(config=name, operation=index, ok=False, errors=[redact(error.log_text())])
        return Started(_finish_inline(fleet, run_id, failed, started))
    except Exception as error:
        text = f"There was an error running your config file. {type(error).__name__}: {redact(str(error))}"
        log.critical(text)
        _finish_inline(fleet, run_id, RunSummary(config=name, operation=index, ok=False, errors=[text]), started)
        raise FleetError(text) from None


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
          log: OperationLog) -> Started:
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
        extensions.attach(run)
        plan, batches = plan_push(run)
        counts = plan.counts()
        log.info(f"Plan: {counts['insert']} to insert, {counts['update']} to update, {counts['delete']} to "
                 f"delete, {counts['unchanged']} unchanged, {counts['skipped']} skipped.")
        if plan.is_empty:
            log.info("Nothing to commit.")
            summary = RunSummary(config=config.name, operation=index)
            summarise_plan(summary, plan, batches)
            summary.seconds = round(time.time() - started, 3)
            finish(run, summary)
            return Started(_finish_inline(fleet, run_id, summary, started))
        jobs = _count_file_jobs(run, batches)
        fleet.store(run_id).stage(config.name, index, started, counts, batches, jobs)
        log.info(f"Run {run_id}: {len(batches)} batch(es) handed over to the workers.")
        return Started({"run_id": run_id, "config": config.name, "operation": index,
                        "dispatched": len(batches), "plan": counts},
                       batches=[b.number for b in batches], file_jobs=jobs)
    finally:
        client.close()
        if db is not None:
            db.close()


def _resume(fleet: Fleet, meta: RunMeta, log: OperationLog) -> Started:
    head = {"run_id": meta.run_id, "config": meta.config, "operation": meta.operation}
    if meta.summary is not None:
        return Started(meta.summary)
    pending = [n for n, o in enumerate(outcomes(fleet.redis, meta.run_id, meta.batches), start=1) if o is None]
    log.warning(f"Run {meta.run_id} was interrupted after planning: sending its {len(pending)} unfinished "
                "batch(es) again.")
    return Started(head | {"dispatched": len(pending), "plan": meta.plan, "resumed": True},
                   batches=pending, file_jobs={n: meta.file_jobs.get(n, 0) for n in pending},
                   finalize=not pending)


def mark_dispatched(fleet: Fleet, run_id: str) -> None:
    fleet.store(run_id).set_state(DISPATCHED)


def _count_file_jobs(run: OperationRun, batches: list[Batch]) -> dict[int, int]:
    if not run.op.files:
        return {}
    files = _files()
    counts = {b.number: len(files.file_jobs(b, run.op)) for b in batches}
    return {n: c for n, c in counts.items() if c}


# ------------------------------------------------------------------------------------ commits


def commit(fleet: Fleet, run_id: str, number: int, config_name: str, operation: int) -> Committed:
    """Commit batch ``number`` of the run exactly once, whichever worker (or how many) runs this."""
    log = for_config(config_name)
    head: dict[str, Any] = {"run_id": run_id, "config": config_name, "operation": operation, "batch": number}
    store = fleet.store(run_id)
    meta = store.meta()
    if meta is None:
        log.error(f"Run {run_id}: its staged data is gone (expired or removed); batch {number} is not sent.")
        return Committed(head | {"sent": False, "reason": "the run's staged data is gone"})
    state = fleet.batch_state(run_id, number)
    outcome = state.outcome()
    if outcome is None:
        lock = fleet.run_lock(meta.config, meta.operation)
        if not lock.claim(run_id):
            holder = lock.holder()
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
    # Normally the commit that completes the set sends finalize; a redelivered one sends it again if
    # its first delivery died before doing so (finalize is idempotent).
    complete = count >= meta.batches and (added or not _finalized(fleet, run_id))
    return Committed(head | _brief(outcome), finalize=complete)


def _finalized(fleet: Fleet, run_id: str) -> bool:
    meta = fleet.store(run_id).meta()
    return meta is not None and meta.summary is not None


def _send(fleet: Fleet, meta: RunMeta, number: int, state: BatchState, log: OperationLog) -> dict[str, Any]:
    outcome: CommitOutcome
    try:
        config = fleet.registry.load(meta.config)
        batch = fleet.store(meta.run_id).batch(number)
        if batch is None:
            raise FleetError(f"batch {number} of run {meta.run_id} is no longer staged (expired?)")
        client = connect_client(config)
        try:
            run = OperationRun(config=config, index=meta.operation, client=client, log=log)
            extensions.attach(run)
            if run.op.files:
                batch = _apply_uploads(fleet, run, meta.run_id, batch)
                run.prepare = _encrypt_only(run)
            unknown = state.begin(worker_label())  # before anything is sent: a death from here is "unknown"
            if unknown:
                log.warning(f"Batch {number}: an earlier attempt stopped without an answer (its worker died?); "
                            "checking the data source before sending it again.")
            outcome = commit_batch(run, batch, start_unknown=unknown, on_attempt=state.attempt)
        finally:
            client.close()
    except AgentError as error:
        log.critical(redact(error.log_text()))
        outcome = CommitOutcome(committed=False, errors=[f"Batch {number}: {redact(error.log_text())}"])
    except Exception as error:  # a bug, a time limit: report it in the run's summary, keep the run going
        text = f"Batch {number}: {type(error).__name__}: {redact(str(error))}"
        log.error(text)
        outcome = CommitOutcome(committed=False, errors=[text])
    return state.finish(outcome)


def _brief(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: outcome.get(k) for k in ("committed", "inserted", "updated", "deleted", "attempts",
                                         "already_applied", "rejected_entries", "errors")}


# ------------------------------------------------------------------------------------ files


def _files() -> Any:
    """``fliplet_workers.files`` (file_jobs, upload_one, apply_file_results): imported when needed."""
    return importlib.import_module("fliplet_workers.files")


def upload(fleet: Fleet, run_id: str, number: int, job: int, config_name: str, operation: int) -> dict[str, Any]:
    """Upload file ``job`` of batch ``number`` and keep the result for the commit step (once)."""
    head = {"run_id": run_id, "config": config_name, "operation": operation, "batch": number, "job": job}
    key = fleet_keys.file_result(run_id, number, job)
    if fleet.redis.exists(key):
        return head | {"uploaded": True, "again": False}
    log = for_config(config_name)
    store = fleet.store(run_id)
    meta, batch = store.meta(), store.batch(number)
    if meta is None or batch is None:
        return head | {"uploaded": False, "reason": "the run's staged data is gone"}
    lock = fleet.run_lock(meta.config, meta.operation)
    if not lock.claim(run_id):
        return head | {"uploaded": False, "reason": "the run was superseded"}
    try:
        config = fleet.registry.load(meta.config)
        client = connect_client(config)
        try:
            run = OperationRun(config=config, index=meta.operation, client=client, log=log)
            extensions.attach(run)
            files = _files()
            result = files.upload_one(run, files.file_jobs(batch, run.op)[job])
        finally:
            client.close()
    except Exception as error:  # the commit step uploads whatever is missing itself
        log.error(f"Batch {number}: file {job + 1} could not be uploaded: {type(error).__name__}: "
                  f"{redact(str(error))}")
        return head | {"uploaded": False, "reason": redact(str(error))}
    fleet.redis.set(key, _dump_result(result), ex=fleet.settings.run_ttl_s)
    return head | {"uploaded": True}


def _apply_uploads(fleet: Fleet, run: OperationRun, run_id: str, batch: Batch) -> Batch:
    """Rewrite the batch's file columns from the uploads done by the upload steps (any missing one
    is uploaded here)."""
    files = _files()
    jobs = files.file_jobs(batch, run.op)
    raw = fleet.redis.mget([fleet_keys.file_result(run_id, batch.number, i) for i in range(len(jobs))]) if jobs else []
    results = [files.upload_one(run, job) if data is None else _load_result(files, data)
               for job, data in zip(jobs, raw, strict=True)]
    prepared: Batch = files.apply_file_results(batch, jobs, results)
    return prepared


def _encrypt_only(run: OperationRun) -> Callable[[Batch], Batch] | None:
    """The files are uploaded already: prepare a batch with encryption alone."""
    encrypt_only = getattr(extensions, "encrypt_only", None)
    if encrypt_only is not None:
        return lambda batch: encrypt_only(run, batch)
    if run.op.encrypt is not None:
        raise EncryptionError("this version cannot encrypt a batch whose files the fleet uploaded "
                              "(extensions.encrypt_only is missing)")
    return None


def _dump_result(result: Any) -> bytes:
    import orjson

    data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) and not isinstance(result, type) \
        else result.to_dict()
    return orjson.dumps(data)


def _load_result(files: Any, raw: str | bytes) -> Any:
    import orjson

    data = orjson.loads(raw)
    factory = getattr(files.FileResult, "from_dict", None)
    return factory(data) if factory is not None else files.FileResult(**data)


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
    for number, outcome in enumerate(outcomes(fleet.redis, run_id, meta.batches), start=1):
        if outcome is None:
            summary.ok = False
            summary.errors.append(f"Batch {number}: no outcome was recorded.")
        else:
            add_outcome(summary, outcome_from_dict(outcome))
    summary.seconds = round(time.time() - meta.started, 3)
    log = for_config(meta.config)
    try:
        config = fleet.registry.load(meta.config)
        client = connect_client(config)
        try:
            finish(OperationRun(config=config, index=meta.operation, client=client, log=log), summary)
        finally:
            client.close()
    except ConfigError:  # the file changed or vanished meanwhile: log the end all the same
        for error in summary.errors:
            log.critical(f"Cannot sync data to Fliplet servers: {error}")
        log.info(f"Sync finished. {summary.affected} data source entries have been affected.")
    result = _record(fleet, run_id, summary)
    store.drop_batches(meta.batches)
    return result


def _finish_inline(fleet: Fleet, run_id: str, summary: RunSummary, started: float) -> dict[str, Any]:
    if not summary.seconds:
        summary.seconds = round(time.time() - started, 3)
    fleet.store(run_id).save_inline(summary.config, summary.operation, started)
    return _record(fleet, run_id, summary)


def _as_result(run_id: str, summary: RunSummary) -> dict[str, Any]:
    return {"run_id": run_id, **summary.to_dict(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _record(fleet: Fleet, run_id: str, summary: RunSummary) -> dict[str, Any]:
    result = _as_result(run_id, summary)
    fleet.store(run_id).save_summary(result)
    history.record(fleet.redis, summary.config, summary.operation, result, fleet.settings.history)
    fleet.run_lock(summary.config, summary.operation).release(run_id)
    return result
