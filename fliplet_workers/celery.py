"""Entry point for ``celery -A fliplet_workers``: Celery looks for ``fliplet_workers.celery.app``.

A submodule rather than an attribute of the package, so that importing ``fliplet_workers`` for the
foreground agent never imports Celery.
"""

from fliplet_workers.fleet.app import app

__all__ = ["app"]
