"""Put Flower's ``/metrics`` behind the same authentication as the rest of Flower.

Flower 2 serves ``/metrics`` without checking ``FLOWER_BASIC_AUTH`` (its other pages and ``/api``
check it), so anyone who reaches Flower's port reads the task counters. When this app is loaded by
``celery -A fliplet_workers flower``, the handler's ``get`` is wrapped in Tornado's
``authenticated``, which runs Flower's own check (basic auth or OAuth; with neither configured it
lets everyone in, as the other pages do). Nothing happens in workers, beat or the CLI.
"""

from __future__ import annotations

import sys
from typing import Any


def serving_flower(argv: list[str]) -> bool:
    """Whether this process is ``celery … flower`` (the subcommand is a bare word after the options)."""
    return "flower" in argv[1:]


def protect_metrics() -> bool:
    """Wrap Flower's metrics handler once; returns whether it is now protected."""
    try:
        from flower.views.monitor import Metrics
        from tornado.web import authenticated
    except ImportError:  # Flower not installed: nothing to protect
        return False
    get: Any = Metrics.get
    if not getattr(get, "_fliplet_authenticated", False):
        wrapped: Any = authenticated(get)
        wrapped._fliplet_authenticated = True
        Metrics.get = wrapped
    return True


def install() -> None:
    if serving_flower(sys.argv):
        protect_metrics()
