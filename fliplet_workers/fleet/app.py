"""The Celery app (``celery -A fliplet_workers ...``), configured from the environment.

The production settings follow from one rule: a sync must survive the loss of the process running
it. Hence late acks (a task is acknowledged when it ends, not when it starts), re-queue when a pool
process dies, a prefetch of one (a busy worker does not sit on tasks another worker could run), time
limits, and a Redis visibility timeout longer than the longest task (a message not acknowledged in
that time goes back to the queue: that is how the tasks of a worker whose host died are run
elsewhere).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from fliplet_workers.fleet.settings import FleetSettings, current
from fliplet_workers.logs import RedactFilter

SCHEDULER = "fliplet_workers.fleet.beat:ConfigScheduler"
RECOVER_ENTRY = "fliplet-recover"

log = logging.getLogger("fliplet_workers.fleet")


def celery_config(settings: FleetSettings) -> dict[str, Any]:
    """Celery settings for ``settings`` (a plain dict, so it can be read and tested)."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for the unacknowledged messages of dead workers this often (kombu's default is a
            # scan every 100 s, too slow when the visibility timeout is short).
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
        },
        "timezone": settings.timezone,
        "enable_utc": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # A task is acknowledged when it ends; one whose worker dies runs again elsewhere.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A lost broker connection (a Redis restart) must not kill the running steps: they finish, and
        # their messages, which cannot be acknowledged any more, come back as harmless duplicates (every
        # step is idempotent). Killing them cost a lease + settle wait each, and their rejected
        # messages were lost ("reject requeue=False"); the recovery sweep covers whatever is lost.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Flower: events for every task, arguments and results kept with the result.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_extended": True,
        "result_expires": int(settings.run_ttl),
        "beat_scheduler": SCHEDULER,
        # The recovery sweep (see fleet/recovery.py): the leading beat sends it; a sweep nobody ran
        # before the next one is due is useless.
        "beat_schedule": {RECOVER_ENTRY: {"task": "fliplet.recover", "schedule": settings.recover_interval,
                                          "options": {"expires": settings.recover_interval}}},
        # Ride out a short broker outage (a Redis restart) when sending a task instead of failing.
        "task_publish_retry_policy": {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5,
                                      "interval_max": 2},
        "beat_max_loop_interval": settings.beat_max_interval,
    }


def create_app(settings: FleetSettings | None = None) -> Celery:
    settings = settings or current()
    if settings.visibility_timeout <= settings.task_time_limit:
        log.warning(
            "FLIPLET_VISIBILITY_TIMEOUT (%gs) is not longer than FLIPLET_TASK_TIME_LIMIT (%gs): a task still "
            "running after the visibility timeout is handed to a second worker as well.",
            settings.visibility_timeout, settings.task_time_limit)
    celery_app = Celery("fliplet_workers", include=["fliplet_workers.fleet.tasks"])
    celery_app.conf.update(celery_config(settings))
    return celery_app


def _redact_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    """Scrub registered secrets from every line the worker writes (Celery installs the handlers)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())


after_setup_logger.connect(_redact_handlers, weak=False)
after_setup_task_logger.connect(_redact_handlers, weak=False)

import fliplet_workers.fleet.names  # noqa: E402, F401 - warns at worker start if its name is taken

app = create_app()
from fliplet_workers.fleet import flower_auth  # noqa: E402

flower_auth.install()  # Flower's /metrics asks for the same credentials as its pages
