"""The last run summaries of each operation, newest first, and the running totals behind the metrics.

* ``fleet:last:<config>:<op>`` (list): the last ``FLIPLET_HISTORY`` summaries, for
  ``fliplet-agent status``: capped, it never grows, and it outlives the run data, which expires.
* ``fleet:stats:<config>:<op>`` (hash): totals since the first run (runs by outcome, rows inserted,
  updated, deleted, skipped, unchanged, retries, file errors) and the last run's duration, end and
  last success, for ``fliplet-agent metrics``. Prometheus counters must never go down, which a
  capped list cannot give; the hash is updated in the same transaction as the list, so both always
  agree. It never expires (a handful of fields per operation).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import redis

from fliplet_workers.fleet import keys

#: Totals kept per operation, summed from each summary's field of the same name.
COUNTED = ("inserted", "updated", "deleted", "skipped", "unchanged", "retries", "file_errors")
OUTCOMES = ("ok", "failed", "dry_run")


def stats_key(config: str, operation: int) -> str:
    return f"{keys.PREFIX}:stats:{config}:{operation}"


def record(client: redis.Redis, config: str, operation: int, summary: dict[str, Any], keep: int) -> None:
    with client.pipeline(transaction=True) as pipe:
        add(pipe, config, operation, summary, keep)
        pipe.execute()


def outcome(summary: dict[str, Any]) -> str:
    """``failed``, ``dry_run`` (nothing was sent) or ``ok``."""
    if not summary.get("ok", not summary.get("errors")):
        return "failed"
    return "dry_run" if summary.get("dry_run") else "ok"


def add(pipe: redis.client.Pipeline, config: str, operation: int, summary: dict[str, Any], keep: int,
        now: float | None = None) -> None:
    """Queue the writes of :func:`record` on ``pipe`` (to make them part of a larger transaction)."""
    key = keys.last(config, operation)
    pipe.lpush(key, orjson.dumps(summary))
    pipe.ltrim(key, 0, max(0, keep - 1))
    stats, result = stats_key(config, operation), outcome(summary)
    moment = time.time() if now is None else now
    pipe.hincrby(stats, f"runs_{result}", 1)
    if result != "dry_run":  # a dry run sends nothing: its counts are what *would* have happened
        for name in COUNTED:
            value = int(summary.get(name) or 0)
            if value:
                pipe.hincrby(stats, name, value)
    pipe.hset(stats, "last_seconds", float(summary.get("seconds") or 0))
    pipe.hset(stats, "last_finished", moment)
    pipe.hset(stats, "last_ok", 0 if result == "failed" else 1)
    if result == "ok":
        pipe.hset(stats, "last_success", moment)


def last(client: redis.Redis, config: str, operation: int, count: int = 1) -> list[dict[str, Any]]:
    raw = client.lrange(keys.last(config, operation), 0, max(0, count - 1))
    return [dict(orjson.loads(r)) for r in raw]


def stats(client: redis.Redis) -> Iterator[tuple[str, int, dict[str, float]]]:
    """Every operation's totals: (config, operation, fields)."""
    prefix = f"{keys.PREFIX}:stats:"
    for key in sorted(str(k) for k in client.scan_iter(match=prefix + "*", count=500)):
        config, _, op = key[len(prefix):].rpartition(":")
        if not config or not op.isdigit():
            continue
        fields = {str(k): float(v) for k, v in client.hgetall(key).items()}
        yield config, int(op), fields
