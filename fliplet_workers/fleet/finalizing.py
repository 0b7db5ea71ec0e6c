"""The last step of a fleet run: sum the batches' outcomes into the run's summary and close the run.

The summary is summed by the same rules as the foreground's (``RunSummary.add_outcome`` and
``fail_plan``) and the run is closed by the same :func:`~fliplet_workers.pipeline.push.close_push`
(the failures, "Sync finished.", ``onSync``). No API client is built: closing a run sends nothing.
Also here: how a run ends when it cannot finish normally (its state vanished from Redis, or it ended
without batches), since every ending writes the summary and its history entry the same way.
"""

from __future__ import annotations

import time
from typing import Any

from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import ConfigError
from fliplet_workers.fleet import history, watermarks
from fliplet_workers.fleet import keys as fleet_keys
from fliplet_workers.fleet.locks import kept_alive
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.staging import RunMeta
from fliplet_workers.fleet.state import outcome_from_dict, outcomes
from fliplet_workers.logs import for_config
from fliplet_workers.pipeline.commit import SyncRecord
from fliplet_workers.pipeline.push import OnSync, close_push


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
    summary, record = _sum_up(fleet, meta)
    on_sync = _on_sync(fleet, meta)
    log = for_config(meta.config)
    if on_sync is None:
        close_push(log, summary)
    else:  # an onSync may take a while: keep the claim, or recovery would send a second finalize
        with kept_alive([lambda: store.finalizing.renew(owner)], fleet.renew_every, "finalize claim"):
            close_push(log, summary, on_sync, record)
    result = record_summary(fleet, run_id, summary)
    store.drop_batches(meta.batches)
    fleet.redis.delete(fleet_keys.sent(run_id), fleet_keys.planner(run_id), fleet_keys.resume(run_id))
    return result


def _sum_up(fleet: Fleet, meta: RunMeta) -> tuple[RunSummary, SyncRecord]:
    """The run's summary from its batches' recorded outcomes and its plan's counts, and what onSync gets."""
    summary = RunSummary(config=meta.config, operation=meta.operation, batches=meta.batches,
                         unchanged=meta.plan.get("unchanged", 0), skipped=meta.plan.get("skipped", 0))
    record = SyncRecord()  # for onSync: the entries each batch's commit step kept
    for number, outcome in enumerate(outcomes(fleet.redis, meta.run_id, meta.batches), start=1):
        if outcome is None:
            summary.ok = False
            summary.errors.append(f"Batch {number}: no outcome was recorded.")
        else:
            summary.add_outcome(outcome_from_dict(outcome))
            record.entries.extend(outcome.get("applied_entries") or [])
            summary.file_errors += int(outcome.get("file_errors") or 0)
    summary.fail_plan(meta.plan, rows_listed=False)  # deletions held back by the guard, rows skipped
    if meta.errors:  # recorded by the recovery sweep (a planner that kept dying)
        summary.ok = False
        summary.errors.extend(meta.errors)
    summary.seconds = round(time.time() - meta.started, 3)
    return summary, record


def _on_sync(fleet: Fleet, meta: RunMeta) -> OnSync | None:
    """The operation's ``onSync``, if its config still loads (it may have changed or vanished)."""
    try:
        config = fleet.registry.load(meta.config)
    except ConfigError:
        return None
    if not 0 <= meta.operation < len(config.operations):
        return None
    return config.operations[meta.operation].on_sync


def vanished_reason(run_id: str) -> str:
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
    return finish_inline(fleet, run_id, summary, time.time())


def finish_inline(fleet: Fleet, run_id: str, summary: RunSummary, started: float) -> dict[str, Any]:
    """Record the summary of a run that ended without batches (dry run, pull, nothing to commit, a failure)."""
    if not summary.seconds:
        summary.seconds = round(time.time() - started, 3)
    return record_summary(fleet, run_id, summary, inline_started=started)


def record_summary(fleet: Fleet, run_id: str, summary: RunSummary,
                   inline_started: float | None = None) -> dict[str, Any]:
    """The summary and its history entry, written at once; the operation lock released."""
    result = {"run_id": run_id, **summary.to_dict(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    store = fleet.store(run_id)
    with fleet.redis.pipeline(transaction=True) as pipe:
        if inline_started is not None:  # a run without batches: its metadata too
            store.save_inline(summary.config, summary.operation, inline_started, pipe)
        store.save_summary(result, pipe)
        history.add(pipe, summary.config, summary.operation, result, fleet.settings.history)
        pipe.execute()
    watermarks.advance(fleet.redis, run_id, summary)  # incremental operations: only when the run ended ok
    fleet.run_lock(summary.config, summary.operation).release(run_id)
    return result
