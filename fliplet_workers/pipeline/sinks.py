"""Where a push's batches go as they are cut: the one difference between the foreground agent and
the fleet.

A :class:`Sink` takes each batch the moment the planner cuts it (:meth:`Sink.put`), then, once the
source is read to the end, :meth:`Sink.settle` says whether the run ends here:

* :class:`LocalSink` (the foreground agent) commits each batch in this process on a pool of
  ``concurrency`` threads; ``settle`` waits for the last commit and adds every outcome to the
  summary: the run ends here;
* ``fliplet_workers.fleet.staging.StagingSink`` (the fleet) stages each batch in Redis and dispatches
  its Celery chain (file uploads, commit); ``settle`` closes the staged run: the workers end it, and
  its finalize step closes it with the same :func:`~fliplet_workers.pipeline.push.close_push`.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from fliplet_workers.core.batches import Batch
from fliplet_workers.core.retry import CommitOutcome
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.pipeline.commit import SyncRecord, commit_batch
from fliplet_workers.pipeline.plan import Progress
from fliplet_workers.pipeline.spec import Resources, RunSpec
from fliplet_workers.pipeline.steps.chain import Steps


class Sink(Protocol):
    """Takes a push's batches as they are cut."""

    #: Batches handed over so far.
    handed: int

    def put(self, batch: Batch) -> None:
        """Take one batch (its number follows the previous one's)."""

    def settle(self, summary: RunSummary, counts: dict[str, int]) -> bool:
        """Every batch is handed over (``counts``: the plan's). True: their outcomes are in ``summary``
        and the run ends here; False: the batches are in other hands, which end the run."""

    def close(self) -> None:
        """Release what the sink holds (also after an error: pending work is dropped)."""


class LocalSink:
    """Commit each batch in this process, ``concurrency`` at a time. At most twice that many batches
    wait, so memory stays bounded however large the source."""

    def __init__(self, spec: RunSpec, res: Resources, steps: Steps, *, record: SyncRecord | None = None,
                 progress: Progress | None = None) -> None:
        self.spec, self.res, self.steps, self.record, self.progress = spec, res, steps, record, progress
        self.workers = max(1, spec.op.concurrency)
        self.handed = 0
        self._pool = ThreadPoolExecutor(max_workers=self.workers)
        self._pending: deque[Future[CommitOutcome]] = deque()
        self._outcomes: list[CommitOutcome] = []

    def put(self, batch: Batch) -> None:
        self.handed += 1
        prepare = self.steps.prepare if self.steps.active else None
        self._pending.append(self._pool.submit(commit_batch, self.spec, self.res, batch, prepare=prepare,
                                               record=self.record))
        if self.progress is not None:
            self.progress.cut()
        self._collect(2 * self.workers)

    def settle(self, summary: RunSummary, counts: dict[str, int]) -> bool:
        self._collect(0)
        for outcome in self._outcomes:
            summary.add_outcome(outcome)
        return True

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)

    def _collect(self, wait_for: int) -> None:
        while len(self._pending) > wait_for:
            self._outcomes.append(self._pending.popleft().result())
            if self.progress is not None:
                self.progress.committed()
