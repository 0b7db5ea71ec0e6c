"""The fleet's Celery tasks: thin wrappers around :mod:`.flow` that add only the dispatching.

Names and arguments are what an operator sees in Flower and types in ``celery call``: config names,
operation indexes, run ids and batch numbers, never a token or a row.

* ``fliplet.sync(config_name, operation=0, dry_run=False)`` plans a run and fans it out; its result
  is the plan (``dispatched``) or, when it ran inline, the run summary.
* ``fliplet.upload_file(run_id, batch_number, job_index, config_name, operation)``
* ``fliplet.commit(run_id, batch_number, config_name, operation)``
* ``fliplet.finalize(run_id, config_name, operation)``: its result is the run summary.

Every task acknowledges late and is re-queued if its worker dies; a lost Redis connection is retried
with backoff.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import chain

import fliplet_workers.sources.sql  # noqa: F401 - see below
from fliplet_workers.fleet import flow
from fliplet_workers.fleet.app import app
from fliplet_workers.fleet.context import current

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


@app.task(name="fliplet.sync", track_started=True, **_COMMON)
def sync(self: Any, config_name: str, operation: int = 0, dry_run: bool = False) -> dict[str, Any]:
    """Run operation ``operation`` of the config file named ``config_name`` now."""
    started = flow.start(current(), self.request.id, config_name, operation, dry_run, dispatch=send_batch)
    if started.retry_in is not None:  # a resumed run waits for the batches its first delivery staged
        raise self.retry(countdown=started.retry_in, max_retries=BUSY_RETRIES)
    for number in started.batches:  # a resumed run's unfinished batches
        send_batch(self.request.id, number, started.file_jobs.get(number, 0), started.result["config"],
                   started.result["operation"])
    if started.finalize:
        finalize.apply_async((self.request.id, started.result["config"], started.result["operation"]))
    return started.result


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
    if done.retry_in is not None:
        raise self.retry(countdown=done.retry_in, max_retries=BUSY_RETRIES)
    if done.finalize:
        finalize.apply_async((run_id, config_name, operation))
    return done.result


@app.task(name="fliplet.finalize", track_started=True, **_COMMON)
def finalize(self: Any, run_id: str, config_name: str, operation: int) -> dict[str, Any]:
    """The run's summary: inserted, updated, deleted, unchanged, skipped, errors, seconds, batches."""
    return flow.finalize(current(), run_id, config_name, operation, owner=self.request.id)
