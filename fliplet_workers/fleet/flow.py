"""The steps of one fleet run, without Celery: plan, upload a file, commit a batch, finalize.

Each step is a module named for it, and each is a thin use of the pipeline
(:mod:`fliplet_workers.pipeline`) the foreground agent runs, so both agents decide, send, retry and
log alike; only the sink differs (the fleet stages batches in Redis for its workers). This module
lists the steps in order; :mod:`.tasks` wraps each in a Celery task of a few lines and does the
dispatching.

A run, as the tasks see it::

    sync(config, op)   planning.start: claim fleet:lock:<config>:<op> (or skip: a run is in progress);
      │                push through the pipeline into a StagingSink: index the remote entries, stream
      │                the source rows through the diff, stage each batch in Redis the moment it is
      │                cut (with its file jobs) and send its chain
      ├─▶ [upload_file(run, n, i) ...] ─▶ commit(run, n)      one chain per batch, in parallel
      │    uploads.upload                  committing.commit: commit_batch under the batch's lease,
      │                                    record the outcome, add n to the done set
      └──────────────────────────────────▶ finalize(run)      finalizing.finalize, sent by the commit
                                                               completing the set: summary → history,
                                                               close_push (onSync), release the lock

Every step renews the operation lock; a step that finds the lock held by another run stops (that
run re-planned against the remote and covers the rows). Every step is safe to run twice, which is
what a redelivered task (late acks) does after its worker died.
"""

from __future__ import annotations

from fliplet_workers.fleet.committing import Committed, commit
from fliplet_workers.fleet.finalizing import end_lost, finalize, vanished_reason
from fliplet_workers.fleet.planning import Started, operation_index, start
from fliplet_workers.fleet.staging import Dispatch, PlanningStopped
from fliplet_workers.fleet.uploads import upload
from fliplet_workers.fleet.worker import FleetError, shared_client, worker_label

__all__ = [
    "Committed",
    "Dispatch",
    "FleetError",
    "PlanningStopped",
    "Started",
    "commit",
    "end_lost",
    "finalize",
    "operation_index",
    "shared_client",
    "start",
    "upload",
    "vanished_reason",
    "worker_label",
]
