"""A run's outcome, reported where the user looks: under the id of the ``fliplet.sync`` task they sent.

The run id *is* that task's id. A sync task that fans a run out returns before the run ends, so it
stores nothing itself (it raises :class:`~celery.exceptions.Ignore` after dispatching: its state stays
STARTED, written by the worker before the task ran). The step that ends the run (finalize, or the sync
task itself for a run without batches) stores the summary under the run id: SUCCESS if the run ended
``ok``, FAILURE with a :class:`RunFailed` carrying the summary otherwise, and sends the matching
task event so that Flower's task list and API show the sync as succeeded or failed.

Order: the worker writes STARTED before the sync task runs, finalize can only start after the sync
task dispatched, and finalize records the summary in Redis (``fleet:run:<id>``) before it stores the
outcome. So a sync task redelivered after its run ended finds the summary and stores it again itself;
nothing ever overwrites a final outcome with STARTED for good.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from celery import Celery, states
from celery.utils.saferepr import saferepr

log = logging.getLogger("fliplet_workers.fleet")


class RunFailed(Exception):
    """The run ended without syncing everything it should have: its summary says why.

    ``args`` are ``(message, summary)`` so that Celery can store it as JSON and rebuild it when the
    result is read (``AsyncResult.get()`` raises it; ``.result.summary`` is the run summary).
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message, summary or {})
        self.summary: dict[str, Any] = dict(summary or {})

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def of(cls, summary: dict[str, Any]) -> RunFailed:
        errors = summary.get("errors") or []
        why = errors[0] if errors else "it did not sync everything (see its summary)"
        more = f" (+{len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        return cls(f"Run {summary.get('run_id', '?')} of {summary.get('config', '?')} operation "
                   f"{summary.get('operation', '?')} failed: {why}{more}", summary)


def is_final(result: dict[str, Any]) -> bool:
    """A run summary (the run ended), as opposed to a plan, a skip or a note."""
    return "ok" in result and "errors" in result


def failed(result: dict[str, Any]) -> bool:
    return is_final(result) and not result.get("ok")


def _sync_request(app: Celery, run_id: str, hostname: str | None) -> SimpleNamespace:
    """The sync task's name and arguments as its worker stored them with STARTED (``result_extended``),
    so that the final record still says which task and config it is."""
    known = app.backend.get_task_meta(run_id)
    return SimpleNamespace(task=known.get("name") or "fliplet.sync", args=known.get("args"),
                           kwargs=known.get("kwargs"), hostname=known.get("worker") or hostname,
                           retries=known.get("retries") or 0, delivery_info=None, children=[])


def report(app: Celery, run_id: str, result: dict[str, Any], hostname: str | None = None) -> None:
    """Store the run's final ``result`` under ``run_id`` (the sync task id) and tell Flower."""
    error = RunFailed.of(result) if failed(result) else None
    try:
        request = _sync_request(app, run_id, hostname)
        if error is not None:
            app.backend.store_result(run_id, error, states.FAILURE, traceback=None, request=request)
        else:
            app.backend.store_result(run_id, result, states.SUCCESS, request=request)
    except Exception as problem:  # the result backend is Redis: the task's autoretry covers outages
        log.error(f"Run {run_id}: its outcome could not be stored ({type(problem).__name__}: {problem}).")
        raise
    fields: dict[str, Any] = ({"exception": saferepr(error), "traceback": None} if error is not None
                              else {"result": saferepr(result), "runtime": result.get("seconds", 0)})
    try:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            dispatcher.send("task-failed" if error is not None else "task-succeeded",
                            uuid=run_id, **fields)
    except Exception as problem:  # monitoring only: the outcome is stored already
        log.warning(f"Run {run_id}: the task event for Flower could not be sent ({type(problem).__name__}).")
