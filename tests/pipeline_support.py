"""A push operation against the in-memory API (:class:`~fliplet_workers.fliplet.memory.MemoryApi`):
no server, no database, no sockets, so a pipeline test runs in milliseconds."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fliplet_workers.config.model import Config, Operation
from fliplet_workers.fliplet.memory import MemoryApi
from fliplet_workers.logs import OperationLog
from fliplet_workers.pipeline.spec import Resources, RunSpec
from fliplet_workers.redaction import Secret
from fliplet_workers.sandbox import DEMO_TOKEN, Store


class Lines(logging.Handler):
    """Keeps every log line's message (with its ``[name]`` prefix)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


@dataclass
class MemoryWorld:
    """A data source in a fresh store, the rows the source function returns, and the run's spec."""

    store: Store
    api: MemoryApi
    ds: int
    rows: list[dict[str, Any]]
    lines: Lines
    log: OperationLog
    options: dict[str, Any] = field(default_factory=dict)

    def spec(self, dry_run: bool = False, **options: Any) -> RunSpec:
        op = Operation(type="push", datasource_id=self.ds, source=lambda ctx: list(self.rows), primary_column="id",
                       batch_size=2, concurrency=2)
        op = replace(op, **(self.options | options))
        config = Config(name="mem", path=f"/nonexistent/mem-{self.ds}.py", auth_token=Secret(DEMO_TOKEN),
                        operations=(op,), retry_delay=0.001, timeout=0.05)
        return RunSpec(config=config, index=0, dry_run=dry_run)

    def res(self) -> Resources:
        return Resources(api=self.api, log=self.log)

    def entries(self) -> list[dict[str, Any]]:
        return [dict(e["data"]) for e in self.store.entries(self.ds)]

    def commits(self) -> int:
        return sum(1 for method, _ in self.api.calls if method == "commit")


def memory_world(rows: int = 5, on_store: Callable[[Store], None] | None = None) -> MemoryWorld:
    store = Store()
    ds = store.create_data_source(f"mem-{uuid.uuid4().hex[:6]}")
    if on_store is not None:
        on_store(store)
    lines = Lines()
    logger = logging.getLogger(f"fliplet_test.pipeline.{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(lines)
    return MemoryWorld(store=store, api=MemoryApi(store, DEMO_TOKEN), ds=ds,
                       rows=[{"id": i, "name": f"n{i}"} for i in range(1, rows + 1)], lines=lines,
                       log=OperationLog(logger, {"name": "mem"}))
