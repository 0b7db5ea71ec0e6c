"""Warn at worker start when another live worker already uses this worker's name.

Two workers started on one host without ``-n`` are both ``celery@<host>``: Flower merges them into
one, ``inspect``/``ping`` answers cannot be told apart and remote control reaches both. Celery itself
says nothing when only one other worker shares the name, so each worker asks, once it is set up and
before it consumes (so that it cannot answer itself), whether a worker of its name answers a ping.
Start several workers per host as ``-n worker1@%h``, ``-n worker2@%h``... (``worker%i@%h`` in the
systemd template unit).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import celeryd_after_setup

log = logging.getLogger("fliplet_workers.fleet")

PING_TIMEOUT = 1.0


def same_name_answers(app: Any, hostname: str, timeout: float = PING_TIMEOUT) -> int | None:
    """How many live workers answer to ``hostname`` (None if the broker cannot be asked)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            replies = app.control.ping(destination=[hostname], timeout=timeout, connection=conn) or []
    except Exception as error:  # the broker is not up yet: the worker retries it; nothing to compare
        log.debug(f"worker name check skipped: {type(error).__name__}")
        return None
    return sum(1 for reply in replies if hostname in reply)


def warn_on_duplicate_name(sender: str | None = None, instance: Any = None, **_: Any) -> None:
    if not sender or instance is None:
        return
    count = same_name_answers(instance.app, sender)
    if count:
        log.warning(f"Another worker named {sender} is already running ({count} answered a ping): Flower and "
                    f"'celery inspect' will show them as one. Give each worker its own name with -n, e.g. "
                    f"-n worker1@%h, -n worker2@%h.")


celeryd_after_setup.connect(warn_on_duplicate_name, weak=False)
