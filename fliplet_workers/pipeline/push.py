"""One push operation: plan into a sink, then close the run, the same way in both agents.

:func:`push` is the whole of a push for both sinks: plan the batches into the sink, log "Nothing to
commit." when none was cut, and, when the run ends here, sum it up and close it (:func:`close_push`:
the failures, "Sync finished.", ``onSync``). The fleet's finalize step closes its runs with the same
:func:`close_push`. :func:`run_push` is the foreground's push (or dry run) with a :class:`LocalSink`.
Messages use the wording of the original agent's log table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from fliplet_workers.core.batches import Batch
from fliplet_workers.core.diff import Tally
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.logs import OperationLog
from fliplet_workers.pipeline.commit import SyncRecord
from fliplet_workers.pipeline.incremental import Candidate, begin, finish
from fliplet_workers.pipeline.plan import Progress, ProgressFactory, plan_batches
from fliplet_workers.pipeline.sinks import LocalSink, Sink
from fliplet_workers.pipeline.spec import Resources, RunSpec
from fliplet_workers.pipeline.steps.chain import Steps, open_steps

OnSync = Callable[[dict[str, Any]], Any]


@dataclass
class Pushed:
    """What :func:`push` did: the summary (final when ``ended``), the plan, the batches handed over."""

    summary: RunSummary
    tally: Tally
    handed: int
    ended: bool


def push(spec: RunSpec, res: Resources, steps: Steps, sink: Sink, *, record: SyncRecord | None = None,
         first_batch: int = 1, progress: Progress | None = None,
         on_read: Callable[[Candidate], None] | None = None) -> Pushed:
    """Plan the operation into ``sink``; end the run here when nothing was cut or the sink settled it.
    An incremental operation's watermark advances here when the run ends here ok; ``on_read`` gets
    what it would become once the source is read (the fleet keeps it for its finalize step)."""
    started = time.monotonic()
    summary = RunSummary(config=spec.config.name, operation=spec.index, dry_run=spec.dry_run)
    increment = begin(spec, res)
    if increment is not None:
        increment.on_read = on_read
    tally = plan_batches(spec, res, sink.put, decode_remote=steps.decode_remote(), first_batch=first_batch,
                         progress=progress, increment=increment)
    if sink.handed == 0 and first_batch == 1:
        res.log.info("Nothing to commit.")
        ended = True
    else:
        ended = sink.settle(summary, tally.counts())
    if ended:
        summary.add_plan(tally, sink.handed)
        summary.file_errors += len(steps.file_errors)
        summary.seconds = round(time.monotonic() - started, 3)
        close_push(res.log, summary, spec.op.on_sync, record)
        finish(spec, res, increment, summary)
    return Pushed(summary, tally, sink.handed, ended)


def close_push(log: OperationLog, summary: RunSummary, on_sync: OnSync | None = None,
               record: SyncRecord | None = None) -> None:
    """Log the end of a push and call the code config's ``onSync`` (never in a dry run)."""
    for error in summary.errors[summary.logged_errors:]:  # skipped rows were logged as they were met
        log.critical(f"Cannot sync data to Fliplet servers: {error}")
    log.info(f"Sync finished. {summary.affected} data source entries have been affected.")
    if on_sync is not None and not summary.dry_run:
        # As the original: ``commits`` is the list of entries sent ({id?, data}); our extras beside it.
        record = record or SyncRecord()
        result = {"commits": record.entries, "summary": summary.to_dict(), "responses": record.responses}
        try:
            on_sync(result)
        except Exception as error:  # the user's callback must not turn a good sync into a failure
            log.error(f"The onSync callback failed: {type(error).__name__}: {error}")


def run_push(spec: RunSpec, res: Resources, progress: ProgressFactory | None = None) -> RunSummary:
    """The foreground's push: batch steps built once, commits on this process's threads."""
    steps = open_steps(spec, res)
    try:
        if spec.dry_run:
            return dry_run(spec, res, steps)
        shown = progress() if progress else None
        record = SyncRecord() if spec.op.on_sync is not None else None
        sink = LocalSink(spec, res, steps, record=record, progress=shown)
        try:
            return push(spec, res, steps, sink, record=record, progress=shown).summary
        finally:
            sink.close()
            if shown is not None:
                shown.close()
    finally:
        steps.close()


def dry_run(spec: RunSpec, res: Resources, steps: Steps) -> RunSummary:
    """Plan every batch, keep them in memory and log them as they would be sent. Sends nothing."""
    started = time.monotonic()
    batches: list[Batch] = []
    tally = plan_batches(spec, res, batches.append, decode_remote=steps.decode_remote(),
                         increment=begin(spec, res))
    summary = RunSummary(config=spec.config.name, operation=spec.index, dry_run=True)
    summary.add_plan(tally, len(batches))
    _dump(spec, res, steps, batches)
    counts = tally.counts()
    summary.inserted, summary.updated, summary.deleted = counts["insert"], counts["update"], counts["delete"]
    for error in summary.errors[summary.logged_errors:]:  # no ``close_push`` in a dry run: say why it fails
        res.log.error(f"Dry run: the real run would fail: {error}")
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _dump(spec: RunSpec, res: Resources, steps: Steps, batches: list[Batch]) -> None:
    """Log the commits as they would be sent (encrypted, with file locations) and the deletes."""
    op = spec.op
    prepared = [steps.prepare(b) for b in batches if b.entries]
    commits = [{k: v for k, v in b.body(op.run_hooks, op.merge).items() if k != "delete"} for b in prepared]
    deletes = [entry_id for b in batches for entry_id in b.delete]
    res.log.info("Dry run mode is enabled. Here's a dump of the commit log we would have been sent to the "
                 "Fliplet API: " + orjson.dumps(commits).decode())
    res.log.info("Entries to delete: " + orjson.dumps(deletes).decode())
