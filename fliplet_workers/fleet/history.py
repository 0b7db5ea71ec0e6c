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
    key = keys.last(config, operation)
    with client.pipeline(transaction=True) as pipe:
        pipe.lpush(key, orjson.dumps(summary))
        pipe.ltrim(key, 0, max(0, keep - 1))
        pipe.execute()


def last(client: redis.Redis, config: str, operation: int, count: int = 1) -> list[dict[str, Any]]:
    raw = client.lrange(keys.last(config, operation), 0, max(0, count - 1))
    return [dict(orjson.loads(r)) for r in raw]
