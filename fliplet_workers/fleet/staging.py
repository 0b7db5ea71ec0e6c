"""A run's data in Redis: its metadata and its batches, staged by the planner as it cuts them.

Task messages carry ids only (run id, batch number): rows never travel through the broker, where
they would be copied into every retry and into Flower. The planner opens the run (state
``planning``), stages each batch the moment it is cut (and its commit is dispatched at once, so
commits overlap reading the source), then closes the run with the batch count. Everything expires
after ``FLIPLET_RUN_TTL`` even if the run never finishes.

:class:`StagingSink` is the fleet's sink of the pipeline (:mod:`fliplet_workers.pipeline.sinks`): the
planning task pushes through it exactly as the foreground agent pushes through its thread pool. Each
batch is staged with its file jobs, listed once here (the upload and commit tasks read them).

The run ends when every batch has reported (a set of batch numbers that reaches the batch count),
which is idempotent, unlike a counter: a commit task that runs twice (redelivered after its worker
died) adds its number once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from fliplet_workers.core.batches import Batch
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.fleet import keys
from fliplet_workers.fleet.locks import Lock
from fliplet_workers.pipeline.spec import RunSpec
from fliplet_workers.pipeline.steps.chain import Steps
from fliplet_workers.pipeline.steps.files import FileJob

#: Sends one batch's chain (its file uploads, then its commit): (run id, batch number, file jobs,
#: config name, operation). The planner calls it the moment a batch is staged.
Dispatch = Callable[[str, int, int, str, int], None]

# KEYS[1] = done set, KEYS[2] = sent hash, ARGV[1] = batch number, ARGV[2] = ttl s, ARGV[3] = now
# → {added, count}
_MARK_DONE = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'last_done', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {added, redis.call('SCARD', KEYS[1])}
"""

PLANNING, STAGED, DISPATCHED, FINALIZED = "planning", "staged", "dispatched", "finalized"


@dataclass
class RunMeta:
    run_id: str
    config: str
    operation: int
    started: float
    batches: int  # the batch count, known once the run is closed (0 while planning)
    state: str
    staged: int = 0  # batches staged so far (all of them once closed)
    plan: dict[str, int] = field(default_factory=dict)
    file_jobs: dict[int, int] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)  # why recovery ended the run early
    full: bool = False  # an incremental operation compares every row (``fliplet.sync(..., full=True)``)

    @classmethod
    def from_hash(cls, run_id: str, raw: dict[str, str]) -> RunMeta:
        return cls(
            run_id=run_id,
            config=raw["config"],
            operation=int(raw["operation"]),
            started=float(raw.get("started", 0)),
            batches=int(raw.get("batches", 0)),
            state=raw.get("state", STAGED),
            staged=int(raw.get("staged", raw.get("batches", 0))),
            plan={k: int(v) for k, v in orjson.loads(raw.get("plan", "{}")).items()},
            file_jobs={int(k): int(v) for k, v in orjson.loads(raw.get("file_jobs", "{}")).items()},
            summary=orjson.loads(raw["summary"]) if raw.get("summary") else None,
            errors=list(orjson.loads(raw["errors"])) if raw.get("errors") else [],
            full=raw.get("full") == "1",
        )


def mark_active(client: redis.Redis | redis.client.Pipeline, run_id: str, config: str, operation: int,
                since: float) -> None:
    """List the run in ``fleet:active`` (what the recovery sweep looks at) until it ends."""
    client.hset(keys.ACTIVE, run_id, orjson.dumps({"config": config, "operation": operation, "since": since}))


def active(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every run that has not ended: run id → {config, operation, since}."""
    out: dict[str, dict[str, Any]] = {}
    for run_id, raw in client.hgetall(keys.ACTIVE).items():
        try:
            out[str(run_id)] = dict(orjson.loads(raw))
        except orjson.JSONDecodeError:
            client.hdel(keys.ACTIVE, run_id)
    return out


@dataclass
class RunStore:
    client: redis.Redis
    run_id: str
    ttl: int
    lease_ttl_ms: int = 60000

    @property
    def key(self) -> str:
        return keys.run(self.run_id)

    def meta(self) -> RunMeta | None:
        raw = self.client.hgetall(self.key)
        return RunMeta.from_hash(self.run_id, {str(k): str(v) for k, v in raw.items()}) if raw else None

    def open(self, config: str, operation: int, started: float, *, full: bool = False) -> None:
        """Start a run whose batches are about to be staged one by one."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping={"config": config, "operation": operation, "started": started,
                                         "batches": 0, "staged": 0, "state": PLANNING, "full": int(full)})
            pipe.expire(self.key, self.ttl)
            pipe.execute()

    def add_batch(self, batch: Batch, file_jobs: dict[int, int], jobs: list[FileJob] | None = None) -> None:
        """Stage one batch and its file ``jobs`` (``file_jobs``: the run's file-upload counts so far, by
        batch number)."""
        staged = batch.to_dict() | {"file_jobs": [job.to_dict() for job in jobs or ()]}
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(keys.batch(self.run_id, batch.number), orjson.dumps(staged), ex=self.ttl)
            pipe.hset(self.key, "staged", batch.number)
            pipe.hset(keys.sent(self.run_id), str(batch.number), f"{time.time():.3f}")
            pipe.expire(keys.sent(self.run_id), self.ttl)
            if batch.number in file_jobs:
                pipe.hset(self.key, "file_jobs", orjson.dumps({str(n): c for n, c in file_jobs.items()}))
            pipe.execute()

    def close(self, batches: int, plan: dict[str, int]) -> None:
        """Every batch is staged and dispatched: from now on the last one to finish ends the run."""
        self.client.hset(self.key, mapping={"batches": batches, "staged": batches, "state": DISPATCHED,
                                            "plan": orjson.dumps(plan)})

    def end_planning(self, staged: int, error: str) -> None:
        """Recovery gives up on a planner that keeps dying: the run ends with the batches it staged,
        and ``error`` in its summary."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping={"batches": staged, "staged": staged, "state": DISPATCHED,
                                         "errors": orjson.dumps([error])})
            pipe.execute()

    def done_count(self) -> int:
        return int(self.client.scard(keys.done(self.run_id)))

    def mark_redispatched(self) -> bool:
        """True the first time a resumed planner re-sends the staged batches (once is enough)."""
        return bool(self.client.hsetnx(self.key, "redispatched", 1))

    def save_inline(self, config: str, operation: int, started: float, pipe: redis.client.Pipeline) -> None:
        """Queue the metadata of a run done without batches (dry run, pull, nothing to commit, a
        failure) on ``pipe``, which also writes its summary."""
        pipe.hset(self.key, mapping={
            "config": config, "operation": operation, "started": started, "batches": 0, "state": STAGED,
        })
        pipe.expire(self.key, self.ttl)

    def batch(self, number: int) -> Batch | None:
        staged = self.staged(number)
        return None if staged is None else staged[0]

    def staged(self, number: int) -> tuple[Batch, list[FileJob]] | None:
        """Batch ``number`` as staged, with its file jobs (None once it is gone)."""
        raw = self.client.get(keys.batch(self.run_id, number))
        if raw is None:
            return None
        data = orjson.loads(raw)
        return Batch.from_dict(data), [FileJob.from_dict(job) for job in data.get("file_jobs") or ()]

    def mark_done(self, number: int) -> tuple[bool, int]:
        """Record that batch ``number`` has an outcome: (whether this call added it, how many have)."""
        added, count = self.client.eval(_MARK_DONE, 2, keys.done(self.run_id), keys.sent(self.run_id), number,
                                        self.ttl, f"{time.time():.3f}")
        return bool(added), int(count)

    @property
    def finalizing(self) -> Lock:
        """Held by the finalize step writing the summary; it lapses if that step dies (recovery then
        sends another one)."""
        return Lock(self.client, keys.finalizing(self.run_id), self.lease_ttl_ms)

    def claim_finalize(self, owner: str) -> bool:
        """True for the one finalize step allowed to write the summary (or for its redelivery)."""
        return self.finalizing.claim(owner)

    def sent_at(self) -> dict[str, float]:
        """Batch number (as text) → when its task was last sent; ``<n>:count`` → re-sends."""
        return {str(k): float(v) for k, v in self.client.hgetall(keys.sent(self.run_id)).items()}

    def mark_sent(self, numbers: list[int], what: str = "") -> None:
        """Recovery sent the tasks of ``numbers`` again (``what``: a field prefix, e.g. ``finalize``)."""
        if not numbers and not what:
            return
        now = f"{time.time():.3f}"
        with self.client.pipeline(transaction=True) as pipe:
            for number in numbers:
                pipe.hset(keys.sent(self.run_id), str(number), now)
                pipe.hincrby(keys.sent(self.run_id), f"{number}:count", 1)
            if what:
                pipe.hset(keys.sent(self.run_id), what, now)
                pipe.hincrby(keys.sent(self.run_id), f"{what}:count", 1)
            pipe.expire(keys.sent(self.run_id), self.ttl)
            pipe.execute()

    def drop_batch(self, number: int) -> None:
        """The batch has an outcome: its rows are not needed any more (its file results, URLs and
        media ids only, stay until the run expires)."""
        self.client.delete(keys.batch(self.run_id, number))

    def save_summary(self, summary: dict[str, Any], pipe: redis.client.Pipeline | None = None) -> None:
        """Mark the run finalized with its summary, and no longer active (queued on ``pipe`` when given)."""
        target = pipe or self.client
        target.hset(self.key, mapping={"state": FINALIZED, "summary": orjson.dumps(summary)})
        target.hdel(keys.ACTIVE, self.run_id)

    def drop_batches(self, count: int) -> None:
        """The rows are no longer needed once the run is finalized (the rest expires with the run)."""
        if count:
            self.client.delete(*(keys.batch(self.run_id, n) for n in range(1, count + 1)))


class PlanningStopped(Exception):
    """The planner lost its heartbeat or the run's lock (another task took over, or Redis lost the
    run's state): it must not stage or send anything more."""


class StagingSink:
    """The fleet's sink: stage each batch in Redis the moment it is cut and dispatch its chain.

    Staged batches carry ``encrypt.fields`` already encrypted (file columns excepted: their value is a
    file name until the upload step rewrites it; the commit step encrypts those), so that no plaintext
    of an encrypted field reaches Redis or its AOF. ``lost`` is set when the planner's heartbeat or
    lock was taken: it then stops at once (:class:`PlanningStopped`).
    """

    def __init__(self, store: RunStore, spec: RunSpec, steps: Steps, send: Dispatch, *,
                 lost: threading.Event | None = None, first_batch: int = 1,
                 file_jobs: dict[int, int] | None = None, sent_before: Callable[[int], int] | None = None) -> None:
        self.store, self.spec, self.send, self.lost = store, spec, send, lost
        self.files = steps.files
        file_columns = {f.column for f in spec.op.files}
        self.encrypt = steps.encrypt.only(lambda f: f not in file_columns) if steps.encrypt else None
        self.first_batch = first_batch
        self.file_jobs = dict(file_jobs or {})
        self.sent_before = sent_before
        self.handed = 0
        self.last = first_batch - 1
        self.counts: dict[str, int] = {}

    def put(self, batch: Batch) -> None:
        self._check()
        jobs = self.files.jobs(batch) if self.files is not None else []
        if jobs:
            self.file_jobs[batch.number] = len(jobs)
        staged = self.encrypt.apply(batch) if self.encrypt is not None and self.encrypt.key else batch
        self.store.add_batch(staged, self.file_jobs, jobs)
        self.send(self.store.run_id, batch.number, len(jobs), self.spec.config.name, self.spec.index)
        self.handed += 1
        self.last = batch.number

    def settle(self, summary: RunSummary, counts: dict[str, int]) -> bool:
        """Close the staged run: from now on the last batch to finish ends it (never here)."""
        self._check()
        if self.first_batch > 1 and self.sent_before is not None:
            # rows the first planner sent look unchanged to this one: count them once
            counts["unchanged"] = max(0, counts.get("unchanged", 0) - self.sent_before(self.first_batch - 1))
        self.store.close(self.last, counts)
        self.counts = counts
        return False

    def close(self) -> None:
        """Nothing to release: what is staged stays for the workers."""

    def _check(self) -> None:
        if self.lost is not None and self.lost.is_set():
            raise PlanningStopped("the planner's heartbeat or the operation lock was lost")
