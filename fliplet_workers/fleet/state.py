"""Each batch's retry state in Redis: attempts, last error, in-flight mark and outcome.

It lives in Redis rather than in the task so that whichever worker picks the batch up next (a retry,
or the redelivery of a task whose worker died, on any host) knows what happened before:

* ``outcome`` recorded → the batch is done; a second delivery only reports it.
* ``inflight`` set but no outcome → an attempt started and its worker vanished: the commit may or
  may not have been applied, so the batch is re-planned against the remote before it is re-sent
  (``commit_batch(..., start_unknown=True)``): nothing is inserted twice.
* a live ``lease`` → another worker is committing it right now: come back later.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

from fliplet_workers.core.retry import CommitOutcome
from fliplet_workers.fleet import keys
from fliplet_workers.fleet.locks import Lock

# KEYS[1] = state hash, ARGV = worker, started, ttl → previous ``inflight`` (or false)
_BEGIN = """
local previous = redis.call('HGET', KEYS[1], 'inflight')
redis.call('HSET', KEYS[1], 'inflight', '1', 'worker', ARGV[1], 'started', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'starts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return previous
"""


@dataclass
class BatchState:
    client: redis.Redis
    run_id: str
    number: int
    ttl: int
    lease_ttl_ms: int

    @property
    def key(self) -> str:
        return keys.batch_state(self.run_id, self.number)

    @property
    def lease(self) -> Lock:
        return Lock(self.client, keys.batch_lease(self.run_id, self.number), self.lease_ttl_ms)

    def load(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.client.hgetall(self.key).items()}

    def outcome(self) -> dict[str, Any] | None:
        raw = self.client.hget(self.key, "outcome")
        return None if raw is None else dict(orjson.loads(raw))

    def begin(self, worker: str) -> bool:
        """Mark an attempt as started (before anything is sent; ``starts`` counts them, ``attempts``
        counts the requests that got an answer). True if an earlier start never ended."""
        previous = self.client.eval(_BEGIN, 1, self.key, worker, f"{time.time():.3f}", self.ttl)
        return previous is not None

    def attempt(self, number: int, error: str | None) -> None:
        """``on_attempt`` callback of ``commit_with_retries``: count the attempt, keep the last error."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.key, "attempts", 1)
            if error:
                pipe.hset(self.key, "last_error", error)
            pipe.execute()

    def finish(self, outcome: CommitOutcome, file_errors: int = 0) -> dict[str, Any]:
        """Record the outcome (and how many files failed) and clear the in-flight mark, atomically."""
        data = asdict(outcome) | {"file_errors": file_errors}
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping={"outcome": orjson.dumps(data), "finished": f"{time.time():.3f}"})
            pipe.hdel(self.key, "inflight")
            pipe.expire(self.key, self.ttl)
            pipe.execute()
        return data


def outcomes(client: redis.Redis, run_id: str, count: int) -> list[dict[str, Any] | None]:
    """The recorded outcome of batches 1..count (None where there is none), in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for number in range(1, count + 1):
            pipe.hget(keys.batch_state(run_id, number), "outcome")
        raw = pipe.execute()
    return [None if r is None else dict(orjson.loads(r)) for r in raw]


def outcome_from_dict(data: dict[str, Any]) -> CommitOutcome:
    known = set(CommitOutcome.__dataclass_fields__)
    return CommitOutcome(**{k: v for k, v in data.items() if k in known})
