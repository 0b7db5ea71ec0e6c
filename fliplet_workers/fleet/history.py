"""The last run summaries of each operation, newest first, for ``fliplet-agent status``.

A capped list per operation (``FLIPLET_HISTORY`` entries): it never grows, and it outlives the run
data, which expires.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from fliplet_workers.fleet import keys


def record(client: redis.Redis, config: str, operation: int, summary: dict[str, Any], keep: int) -> None:
    with client.pipeline(transaction=True) as pipe:
        add(pipe, config, operation, summary, keep)
        pipe.execute()


def add(pipe: redis.client.Pipeline, config: str, operation: int, summary: dict[str, Any], keep: int) -> None:
    """Queue the writes of :func:`record` on ``pipe`` (to make them part of a larger transaction)."""
    key = keys.last(config, operation)
    pipe.lpush(key, orjson.dumps(summary))
    pipe.ltrim(key, 0, max(0, keep - 1))


def last(client: redis.Redis, config: str, operation: int, count: int = 1) -> list[dict[str, Any]]:
    raw = client.lrange(keys.last(config, operation), 0, max(0, count - 1))
    return [dict(orjson.loads(r)) for r in raw]
