"""Commit one typed batch: the batch steps (files, encryption), then the request, with retries that
never duplicate inserts (:mod:`fliplet_workers.core.retry`).

Both sinks commit through :func:`commit_batch`: the foreground's threads and the fleet's commit task.
With an ``onSync``, what it needs is kept in a :class:`SyncRecord`: the entries the server applied
(answered, or found by the lookup after an unanswered commit) and its answers to the requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fliplet_workers.core.batches import Batch, Entry
from fliplet_workers.core.retry import CommitOutcome, commit_with_retries
from fliplet_workers.pipeline.spec import Resources, RunSpec

Prepare = Callable[[Batch], Batch]


@dataclass
class SyncRecord:
    """For ``onSync``: the entries the server applied, as sent (``{id?, data}``), and its answers."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def applied(self, entries: list[Entry]) -> None:
        wire = [e.wire() for e in entries]
        with self._lock:
            self.entries.extend(wire)

    def answered(self, response: dict[str, Any]) -> None:
        with self._lock:
            self.responses.append(response)


def commit_batch(spec: RunSpec, res: Resources, batch: Batch, *, prepare: Prepare | None = None,
                 record: SyncRecord | None = None, start_unknown: bool = False,
                 on_attempt: Callable[[int, str | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> CommitOutcome:
    """Prepare (files, encryption) and commit one batch with retries that never duplicate inserts.
    ``record`` (only with an ``onSync``) keeps what onSync receives. (``clock``: see
    ``commit_with_retries``; the fleet dates a dead worker's attempt in the past.)"""
    op, api = spec.op, res.api
    prepared = prepare(batch) if prepare is not None else batch
    body_extra = (op.run_hooks, op.merge)
    answer = record is not None

    def send(part: Batch) -> None:
        response = api.commit(op.datasource_id, part.body(*body_extra), answer=answer)
        if record is not None:
            record.answered(response)

    def find_existing(keys: list[Any]) -> list[Any]:
        assert op.primary_column is not None
        return api.find_keys(op.datasource_id, op.primary_column, keys)

    def find_updated(updates: list[dict[str, Any]]) -> list[Any]:
        assert op.primary_column is not None
        return api.find_applied_updates(op.datasource_id, op.primary_column, updates)

    def log(level: str, message: str) -> None:
        getattr(res.log, level)(message)

    keyed = op.primary_column is not None
    return commit_with_retries(prepared, send, find_existing if keyed else None, spec.policy,
                               log=log, start_unknown=start_unknown, on_attempt=on_attempt,
                               on_applied=record.applied if record is not None else None,
                               find_updated=find_updated if keyed else None, clock=clock)
