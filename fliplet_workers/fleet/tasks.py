"""The fleet's Celery tasks: thin wrappers around :mod:`.flow` that add only the dispatching.

Names and arguments are what an operator sees in Flower and types in ``celery call``: config names,
operation indexes, run ids and batch numbers, never a token or a row.

* ``fliplet.sync(config_name, operation=0, dry_run=False, full=False)`` plans a run and fans it out. Its task id is
  the run id, and it resolves when the run ends: SUCCESS with the run summary, or FAILURE with a
  :class:`~.outcome.RunFailed` carrying the summary (a skipped trigger: SUCCESS, ``skipped: true``).
* ``fliplet.upload_file(run_id, batch_number, job_index, config_name, operation)``
* ``fliplet.commit(run_id, batch_number, config_name, operation)``
* ``fliplet.finalize(run_id, config_name, operation)``: its result is the run summary; it stores the
  outcome under the run id and fails itself when the run failed.
* ``fliplet.recover(remembered=())``: the recovery sweep (:mod:`.recovery`), sent by the leading beat
  every ``FLIPLET_RECOVER_INTERVAL`` seconds with the runs it remembers from ``fleet:active`` that left
  it without a summary (``[run id, config, operation]``); safe to call by hand at any time.

Every task acknowledges late and is re-queued if its worker dies; a lost Redis connection is retried
with backoff.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import chain
from celery.exceptions import Ignore

import fliplet_workers.sources.sql  # noqa: F401 - see below
from fliplet_workers import alerts
from fliplet_workers.fleet import flow, outcome, recovery
from fliplet_workers.fleet.app import app
from fliplet_workers.fleet.runtime import current

# The worker imports this module before it forks its pool processes: importing the SQL layer
# (SQLAlchemy) here, once, spares every pool process ~0.2 s at its first sync.

_COMMON: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (redis.ConnectionError, redis.TimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 5,
}
#: How many times a commit comes back to a batch another worker is still committing.
BUSY_RETRIES = 100


@app.task(name="fliplet.sync", track_started=True, throws=(outcome.RunFailed,), **_COMMON)
def sync(self: Any, config_name: str, operation: int = 0, dry_run: bool = False, full: bool = False) -> dict[str, Any]:
    """Run operation ``operation`` of the config file named ``config_name`` now (``full``: an
    incremental operation compares every row, as ``start --full``)."""
    try:
        started = flow.start(current(), self.request.id, config_name, operation, dry_run, dispatch=send_batch,
                             full=full is True)
    except flow.FleetError:  # a bug while planning: the run ended failed (its summary is recorded)
        meta = current().store(self.request.id).meta()
        if meta is not None and meta.summary is not None:
            run_ended(meta.summary)
        raise
    if started.retry_in is not None:  # a resumed run waits for the batches its first delivery staged
        raise self.retry(countdown=started.retry_in, max_retries=BUSY_RETRIES)
    for number in started.batches:  # a resumed run's unfinished batches
        send_batch(self.request.id, number, started.file_jobs.get(number, 0), started.result["config"],
                   started.result["operation"])
    if started.finalize:
        finalize.apply_async((self.request.id, started.result["config"], started.result["operation"]))
    return _outcome(started.result)


def _outcome(result: dict[str, Any]) -> dict[str, Any]:
    """The sync task's own result: a run that ended here is reported (FAILURE if not ok, see
    :mod:`.outcome`); a run handed to the workers stores nothing now: finalize stores its summary
    under this task's id when the run ends."""
    if outcome.is_final(result):
        run_ended(result)
        if outcome.failed(result):
            raise outcome.RunFailed.of(result)
        return result
    if "dispatched" in result or "waiting" in result:
        raise Ignore()  # keep STARTED; finalize may even have stored the outcome already
    return result  # a skipped trigger (the operation is running) or a superseded run


def send_batch(run_id: str, number: int, file_jobs: int, config: str, operation: int) -> None:
    """One chain per batch: its file uploads, then its commit. Batches run in parallel."""
    steps = [upload_file.si(run_id, number, job, config, operation) for job in range(file_jobs)]
    steps.append(commit.si(run_id, number, config, operation))
    (chain(*steps) if len(steps) > 1 else steps[0]).apply_async()


@app.task(name="fliplet.upload_file", ignore_result=True, **_COMMON)
def upload_file(self: Any, run_id: str, batch_number: int, job_index: int, config_name: str,
                operation: int) -> dict[str, Any]:
    return flow.upload(current(), run_id, batch_number, job_index, config_name, operation)


@app.task(name="fliplet.commit", ignore_result=True, **_COMMON)  # results: in Redis state + Flower events
def commit(self: Any, run_id: str, batch_number: int, config_name: str, operation: int) -> dict[str, Any]:
    done = flow.commit(current(), run_id, batch_number, config_name, operation)
    if done.ended is not None:  # the run's state vanished: it ended failed, say so where users look
        _report_ended(done.ended)
    if done.retry_in is not None:
        raise self.retry(countdown=done.retry_in, max_retries=BUSY_RETRIES)
    if done.finalize:
        finalize.apply_async((run_id, config_name, operation))
    return done.result


@app.task(name="fliplet.finalize", track_started=True, throws=(outcome.RunFailed,), **_COMMON)
def finalize(self: Any, run_id: str, config_name: str, operation: int) -> dict[str, Any]:
    """The run's summary: inserted, updated, deleted, unchanged, skipped, errors, seconds, batches.
    Stored under the run id (the sync task's id) too; the step fails if the run failed."""
    result = flow.finalize(current(), run_id, config_name, operation, owner=self.request.id)
    if outcome.is_final(result):
        announce(run_id, result, self.request.hostname)
        if outcome.failed(result):
            raise outcome.RunFailed.of(result)
    return result


def announce(run_id: str, result: dict[str, Any], hostname: str | None = None) -> None:
    """What every step that ends a run outside the sync task itself must call (finalize, a recovery
    step): the outcome under the run id (SUCCESS, or FAILURE with RunFailed; a Flower event), alerts."""
    outcome.report(app, run_id, result, hostname)
    run_ended(result)


@app.task(name="fliplet.recover", bind=True, acks_late=True, autoretry_for=(redis.ConnectionError, redis.TimeoutError),
          retry_backoff=True, max_retries=3)
def recover(self: Any, remembered: list[Any] | None = None) -> dict[str, Any]:
    """Re-send what dead workers lost, resume dead planners, finalize and free what is stuck; end as
    lost the runs the beat remembers (``[run id, config, operation]``) whose state vanished."""
    return recovery.sweep(current(), SENDERS, remembered=remembered or ()).to_dict()


def _send_finalize(run_id: str, config: str, operation: int) -> None:
    finalize.apply_async((run_id, config, operation))


def _send_sync(run_id: str, config: str, operation: int) -> None:
    sync.apply_async((config, operation), task_id=run_id)  # same id: it resumes the run


def _report_ended(result: dict[str, Any]) -> None:
    """A run ended as lost (by a commit or the recovery sweep): its outcome under the sync task id."""
    outcome.report(app, str(result["run_id"]), result)
    run_ended(result)


SENDERS = recovery.Senders(batch=send_batch, finalize=_send_finalize, sync=_send_sync, ended=_report_ended)


def run_ended(result: dict[str, Any]) -> None:
    """Alerts (a failed run, the next run that recovers): never fails the task."""
    alerts.fleet_run_ended(current(), result)
