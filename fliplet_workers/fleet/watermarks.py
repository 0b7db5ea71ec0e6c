"""The fleet's watermarks (incremental operations), in Redis: one key per config and operation.

``fleet:watermark:<config>:<op>`` holds the operation's :class:`~fliplet_workers.pipeline.marks.Mark`
(JSON, no expiry). A fanned-out run cannot advance it when its planning step ends, since its batches
are committed later by other workers: the planning step keeps what the watermark would become
(:class:`~fliplet_workers.pipeline.incremental.Candidate`) under ``fleet:run:<id>:watermark`` as soon
as the source is read, and the finalize step (:func:`advance`) writes it as the new watermark only
when the run's summary is ok. A run that ends inline (nothing to commit) advances it like the
foreground agent, through :class:`RedisMarks`.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from fliplet_workers.core.summary import RunSummary
from fliplet_workers.fleet import keys
from fliplet_workers.pipeline.incremental import Candidate
from fliplet_workers.pipeline.marks import Mark

__all__ = ["RedisMarks", "advance", "keep_candidate", "status"]


class RedisMarks:
    """:class:`~fliplet_workers.pipeline.marks.MarkStore` in Redis, for one config (by name: the
    fleet knows its configs by name; the data source id is kept in the mark and checked on load)."""

    def __init__(self, client: redis.Redis, config_name: str) -> None:
        self.client, self.config_name = client, config_name

    def load(self, config_path: str, index: int, datasource_id: int) -> Mark | None:
        raw = self.client.get(keys.watermark(self.config_name, index))
        mark = Mark.from_json(orjson.loads(raw)) if raw else None
        return mark if mark is not None and mark.datasource_id == datasource_id else None

    def save(self, config_path: str, index: int, mark: Mark) -> None:
        self.client.set(keys.watermark(self.config_name, index), orjson.dumps(mark.to_json()))


def keep_candidate(client: redis.Redis, run_id: str, candidate: Candidate, ttl_s: int) -> None:
    """What the run would make the watermark: kept until its finalize step knows how it ended."""
    client.set(keys.run_watermark(run_id), orjson.dumps(candidate.to_json()), ex=ttl_s)


def advance(client: redis.Redis, run_id: str, summary: RunSummary) -> Mark | None:
    """The finalize step: a run that ended ok with a kept candidate advances its operation's watermark
    (a failed run leaves it where it was). Returns the new mark, if any."""
    raw = client.get(keys.run_watermark(run_id))
    if not raw:
        return None
    client.delete(keys.run_watermark(run_id))
    if not summary.ok or summary.dry_run:
        return None
    mark = Candidate.from_json(orjson.loads(raw)).mark(summary)
    RedisMarks(client, summary.config).save("", summary.operation, mark)
    return mark


def status(client: redis.Redis, config_name: str, index: int) -> dict[str, Any] | None:
    """An operation's watermark as ``status`` shows it (None: no run has set one yet)."""
    raw = client.get(keys.watermark(config_name, index))
    if not raw:
        return None
    doc = orjson.loads(raw)
    return doc if isinstance(doc, dict) else None
