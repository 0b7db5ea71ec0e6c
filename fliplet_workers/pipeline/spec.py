"""What one operation's run is to do (:class:`RunSpec`) and what it does it with (:class:`Resources`).

Why two objects: the spec is plain, immutable data that the fleet rebuilds in any task from the
config name and operation index (nothing to keep in step between tasks); the resources are the
open things (API client, database, log), owned and closed by whoever opened them. Everything a run
derives from its options (retry policy, diff options) is derived here, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fliplet_workers.config.model import Config, Operation
from fliplet_workers.core.diff import DiffOptions
from fliplet_workers.core.retry import RetryPolicy, settle_time
from fliplet_workers.fliplet.api import FlipletApi
from fliplet_workers.logs import OperationLog
from fliplet_workers.pipeline.marks import MarkStore

DecodeRemote = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class RunSpec:
    """One operation of a config, to run (or, ``dry_run``, only to plan and show)."""

    config: Config
    index: int
    dry_run: bool = False
    #: An incremental operation compares every row this time (``start --full``).
    full: bool = False

    @property
    def op(self) -> Operation:
        return self.config.operations[self.index]

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(retries=self.config.retries, delay=self.config.retry_delay,
                           settle=settle_time(self.config.timeout))

    def diff_options(self, decode_remote: DecodeRemote | None = None) -> DiffOptions:
        """The diff's options; file columns and their ``<column>MediaFileId`` are not compared (the
        remote holds the Fliplet URL where the source holds a location)."""
        op = self.op
        ignore = frozenset(f.column for f in op.files) | frozenset(f"{f.column}MediaFileId" for f in op.files)
        return DiffOptions(primary_column=op.primary_column, case_insensitive=op.case_insensitive_primary_column,
                           timestamp_column=op.timestamp_column, delete_column=op.delete_column, mode=op.mode,
                           ignore_columns=ignore, decode_remote=decode_remote)


@dataclass(frozen=True)
class Resources:
    """The open things a run uses; the caller opened them and closes them."""

    api: FlipletApi
    log: OperationLog
    db: Any = None  # fliplet_workers.sources.sql.SqlSource | None
    #: Where incremental operations keep their watermarks (None: nowhere, every run compares everything).
    marks: MarkStore | None = None
