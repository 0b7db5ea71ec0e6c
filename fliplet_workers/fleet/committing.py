"""The fleet's commit step (``fliplet.commit``): commit one staged batch exactly once, whichever
worker (or how many) runs it.

The commit itself is the pipeline's :func:`~fliplet_workers.pipeline.commit.commit_batch`, as in the
foreground; what this step adds is the fleet's bookkeeping around it: the batch's lease (one worker at
a time), its state in Redis (an attempt whose worker died is looked up before it is sent again), the
run's done set, and whether this commit completes the run (then finalize is sent).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fliplet_workers.core.retry import CommitOutcome
from fliplet_workers.errors import AgentError
from fliplet_workers.fleet import keys as fleet_keys
from fliplet_workers.fleet.finalizing import end_lost, vanished_reason
from fliplet_workers.fleet.locks import kept_alive
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.staging import PLANNING, RunMeta
from fliplet_workers.fleet.state import BatchState
from fliplet_workers.fleet.uploads import apply_uploads
from fliplet_workers.fleet.worker import FleetError, commit_key, shared_client, worker_label
from fliplet_workers.logs import OperationLog, for_config
from fliplet_workers.pipeline.commit import SyncRecord, commit_batch
from fliplet_workers.pipeline.spec import Resources, RunSpec
from fliplet_workers.pipeline.steps.encryption import EncryptStep
from fliplet_workers.redaction import redact


@dataclass
class Committed:
    """What a commit step did: its result, whether the run is complete, or when to try again."""

    result: dict[str, Any]
    finalize: bool = False
    retry_in: float | None = None
    ended: dict[str, Any] | None = None  # the summary of a run this step ended as lost


def commit(fleet: Fleet, run_id: str, number: int, config_name: str, operation: int) -> Committed:
    """Commit batch ``number`` of the run exactly once, whichever worker (or how many) runs this."""
    log = for_config(config_name)
    head: dict[str, Any] = {"run_id": run_id, "config": config_name, "operation": operation, "batch": number}
    store = fleet.store(run_id)
    meta = store.meta()
    if meta is None:
        log.error(f"Run {run_id}: its staged data is gone (expired or removed); batch {number} is not sent.")
        ended = end_lost(fleet, run_id, config_name, operation, vanished_reason(run_id))
        return Committed(head | {"sent": False, "reason": "the run's staged data is gone"}, ended=ended)
    state = fleet.batch_state(run_id, number)
    outcome = state.outcome()
    if outcome is None and meta.summary is not None:  # ended without it (given up): never retake its lock
        log.warning(f"Run {run_id} has ended: batch {number} is not sent; the next run covers its rows.")
        return Committed(head | {"sent": False, "reason": "the run has ended"})
    if outcome is None:
        leased = _leased_send(fleet, meta, number, state, log)
        if isinstance(leased, float):
            return Committed(head | {"sent": False, "reason": "another worker holds the batch"}, retry_in=leased)
        outcome = leased
    added, count = store.mark_done(number)
    store.drop_batch(number)  # its rows are not kept in Redis a moment longer than needed
    if not fleet.redis.exists(fleet_keys.run(run_id)):  # Redis lost the run meanwhile (restart, no AOF)
        ended = end_lost(fleet, run_id, config_name, operation, vanished_reason(run_id))
        return Committed(head | _brief(outcome), ended=ended)
    # Normally the commit that completes the set sends finalize; a redelivered one sends it again if
    # its first delivery died before doing so (finalize is idempotent). The batch count is read after
    # marking: while the planner is still cutting batches there is no last one yet (it checks itself
    # when it closes the run).
    latest = store.meta() or meta
    complete = (latest.state != PLANNING and count >= latest.batches
                and (added or not _finalized(fleet, run_id)))
    return Committed(head | _brief(outcome), finalize=complete)


def _leased_send(fleet: Fleet, meta: RunMeta, number: int, state: BatchState,
                 log: OperationLog) -> dict[str, Any] | float:
    """Send the batch under its lease, or record why it is not sent; seconds to wait when another
    worker holds the lease."""
    run_id = meta.run_id
    lock = fleet.run_lock(meta.config, meta.operation)
    if not lock.carry_on(run_id):
        holder = lock.holder() or lock.latest()
        log.warning(f"Run {run_id} no longer holds operation {meta.operation + 1} (run {holder} does): "
                    f"batch {number} is not sent; the newer run covers its rows.")
        return state.finish(CommitOutcome(committed=False, errors=[
            f"Batch {number}: not sent, the run was superseded by run {holder}."]))
    owner = f"{worker_label()}:{uuid.uuid4().hex[:8]}"
    lease = state.lease
    if not lease.acquire(owner):
        wait = max(1.0, lease.ttl_seconds())
        log.info(f"Batch {number} of run {run_id} is being committed by another worker; "
                 f"checking again in {wait:.0f} s.")
        return wait
    try:
        with kept_alive([lambda: lock.renew(run_id), lambda: lease.renew(owner)], fleet.renew_every,
                        f"lease of batch {number}"):
            return _send(fleet, meta, number, state, log)
    finally:
        lease.release(owner)


def _finalized(fleet: Fleet, run_id: str) -> bool:
    meta = fleet.store(run_id).meta()
    return meta is not None and meta.summary is not None


def _send(fleet: Fleet, meta: RunMeta, number: int, state: BatchState, log: OperationLog) -> dict[str, Any]:
    """The batch's file columns rewritten from its uploads, its file columns encrypted (the planner
    staged every other encrypted field encrypted), then :func:`commit_batch`."""
    file_errors = 0
    try:
        config = fleet.registry.load(meta.config)
        staged = fleet.store(meta.run_id).staged(number)
        if staged is None:
            raise FleetError(f"batch {number} of run {meta.run_id} is no longer staged (expired?)")
        batch, jobs = staged
        spec = RunSpec(config=config, index=meta.operation)
        client = shared_client(config)
        res = Resources(api=client, log=log)
        if spec.op.files:
            batch, file_errors = apply_uploads(fleet, spec, res, meta.run_id, batch, jobs)
        late = _file_fields(spec)
        encrypt = EncryptStep(late, commit_key(spec, client, meta.run_id)) if late else None
        unknown = state.begin(worker_label())  # before anything is sent: a death from here is "unknown"
        if unknown:
            log.warning(f"Batch {number}: an earlier attempt stopped without an answer (its worker died?); "
                        "checking the data source before sending it again.")
        # The lease was free: the earlier attempt's worker stopped renewing it at least (ttl - renewal
        # period) ago, so its last request is at least that old: the settle wait counts from then.
        quiet = max(0.0, fleet.settings.lease_ttl - fleet.renew_every) if unknown else 0.0
        record = SyncRecord() if spec.op.on_sync is not None else None  # onSync runs in finalize
        outcome = commit_batch(spec, res, batch, prepare=encrypt.apply if encrypt else None, record=record,
                               start_unknown=unknown, on_attempt=state.attempt, clock=_dated_back(quiet))
        if record is not None:  # kept with the outcome until the finalize step hands them over
            outcome.applied_entries = record.entries
    except AgentError as error:
        log.critical(redact(error.log_text()))
        outcome = CommitOutcome(committed=False, errors=[f"Batch {number}: {redact(error.log_text())}"])
    except Exception as error:  # a bug, a time limit: report it in the run's summary, keep the run going
        text = f"Batch {number}: {type(error).__name__}: {redact(str(error))}"
        log.error(text)
        outcome = CommitOutcome(committed=False, errors=[text])
    return state.finish(outcome, file_errors=file_errors)


def _file_fields(spec: RunSpec) -> tuple[str, ...]:
    """The encrypted fields that are also file columns: encrypted by the commit step."""
    enc = spec.op.encrypt
    if enc is None:
        return ()
    file_columns = {f.column for f in spec.op.files}
    return tuple(f for f in enc.fields if f in file_columns)


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
