"""Source rows and the remote index → typed batches, handed over one by one as they are cut.

This is the pure core's composition as production runs it: :func:`~fliplet_workers.core.diff.index_remote`
indexes the remote entries, the :class:`~fliplet_workers.core.diff.Planner` judges each source row as
it streams in, and the :class:`~fliplet_workers.core.batches.BatchCutter` cuts the changes into
batches, each handed to ``on_batch`` (a sink) as soon as it is full, so that committing overlaps
reading the source. Both agents plan through :func:`plan_batches`.

Two safety checks (issue 7): the first row's columns are checked before anything is sent, and
every deletion is held until the source has been read to the end, then judged at once by the
delete guard (:mod:`fliplet_workers.core.guard`): above the limit none is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from fliplet_workers.core import guard
from fliplet_workers.core.batches import Batch, cut
from fliplet_workers.core.diff import Planner, RemoteIndex, Tally, check_columns, index_remote
from fliplet_workers.core.rows import gc_paused
from fliplet_workers.core.stream import plan_changes
from fliplet_workers.errors import ColumnError, DeleteLimitError
from fliplet_workers.fliplet.sessions import new_session
from fliplet_workers.pipeline.incremental import Increment, read_and_look_up
from fliplet_workers.pipeline.spec import DecodeRemote, Resources, RunSpec
from fliplet_workers.sources.reader import SourceContext, iter_source_rows


class Progress(Protocol):
    """What a push reports as it goes (the CLI draws it as a progress display on a terminal)."""

    def expect(self, remote_entries: int) -> None:
        """The remote entries are indexed: their number is the best guess of the rows to come."""

    def rows(self, judged: int) -> None:
        """This many source rows have been read and judged so far."""

    def cut(self) -> None:
        """One more batch has been cut (and handed to a commit thread)."""

    def committed(self) -> None:
        """One more batch has been committed (or has failed for good)."""

    def close(self) -> None:
        """The push has ended (also after an error)."""


#: Called once per push operation; returns what that push reports to.
ProgressFactory = Callable[[], Progress]


def plan_batches(spec: RunSpec, res: Resources, on_batch: Callable[[Batch], None], *,
                 decode_remote: DecodeRemote | None = None, first_batch: int = 1,
                 progress: Progress | None = None, increment: Increment | None = None) -> Tally:
    """Remote entries → index; source rows → changes → batches, each handed to ``on_batch`` as soon
    as it is full. Returns what the plan amounted to. Batches are numbered from ``first_batch`` (the
    fleet continues an interrupted run that way). With an ``increment`` that is not full, the newer
    rows are read first and only their keys are looked up (:mod:`.incremental`)."""
    looked_up = increment is not None and not increment.full
    ctx = SourceContext(db=res.db, http=new_session(ca_bundle=spec.config.ca_bundle), config=spec.config,
                        incremental=increment is not None, watermark=increment.since if increment else None)
    try:
        with gc_paused():
            rows: Iterable[Mapping[str, Any]] = iter_source_rows(spec.op, ctx)
            if looked_up:
                assert increment is not None
                rows, remote = read_and_look_up(spec, res, increment, rows, spec.diff_options(decode_remote))
                planner = _planner(spec, res, decode_remote, remote)
            else:
                planner = _planner(spec, res, decode_remote)
                if increment is not None:
                    increment.remote = planner.remote.count
                    rows = increment.watch(rows)
            if progress is not None:
                progress.expect(planner.remote.count)
            changes = plan_changes(
                planner, rows, delete_limit=spec.op.delete_limit,
                size=increment.entries if increment is not None else None,
                first_row=lambda row: _check_columns(spec, res, planner, row),
                judged=progress.rows if progress is not None else None,
                source_read=lambda: _source_read(res, increment))
            for batch in cut(changes, spec.op.batch_size, spec.op.primary_column, first_number=first_batch):
                on_batch(batch)
    finally:
        ctx.http.close()
    _log_plan(res, planner.tally)
    return planner.tally


def _source_read(res: Resources, increment: Increment | None) -> None:
    if increment is None or increment.full:
        res.log.debug("Successfully fetched data from the source.")
    if increment is not None:
        increment.read_to_end()


def _log_plan(res: Resources, tally: Tally) -> None:
    for skip in tally.skips:
        res.log.error(skip.message)
    counts = tally.counts()
    withheld = f" ({counts['withheld']} deletions held back)" if counts["withheld"] else ""
    res.log.info(f"Plan: {counts['insert']} to insert, {counts['update']} to update, {counts['delete']} to "
                 f"delete{withheld}, {counts['unchanged']} unchanged, {counts['skipped']} skipped.")


def _planner(spec: RunSpec, res: Resources, decode_remote: DecodeRemote | None,
             looked_up: RemoteIndex | None = None) -> Planner:
    """Index the remote entries, or take those an incremental run ``looked_up`` (the source rows are
    then judged one by one as they stream in)."""
    op, log = spec.op, res.log
    options = spec.diff_options(decode_remote)
    if looked_up is not None:
        assert op.primary_column is not None
        _warn_duplicates(res, op.primary_column, looked_up.duplicates(op.primary_column))
        return Planner(looked_up, options, log.debug if log.isEnabledFor(logging.DEBUG) else None)
    if op.primary_column is None:
        log.warning(
            "A primary key has not been set, which means rows will always be appended to the data source "
            "whenever this script runs. To allow updating rows, please define a primary key to be used for "
            "the comparison.")
    log.info("Fetching data via Fliplet API...")
    needed = op.primary_column is not None or op.mode == "replace"  # else every row is appended anyway
    remote = index_remote(res.api.iter_entries(op.datasource_id) if needed else (), options)
    log.debug(f"Fetched {remote.count} entries from the data source.")
    if op.primary_column is not None:
        _warn_duplicates(res, op.primary_column, remote.duplicates(op.primary_column))
    elif op.mode == "replace" and remote.count:
        verdict = guard.judge_deletes(remote.count, remote.count, op.delete_limit)
        if not verdict.ok:
            assert verdict.allowed is not None
            raise DeleteLimitError(guard.unkeyed_replace_message(remote.count, verdict.allowed, verdict.default))
    note = log.debug if log.isEnabledFor(logging.DEBUG) else None
    return Planner(remote, options, note)


def _warn_duplicates(res: Resources, column: str, duplicates: Sequence[Any]) -> None:
    """Name each key that several entries share (the first 20, then how many more)."""
    for duplicate in duplicates[:20]:
        res.log.warning(duplicate.warning(column))
    if len(duplicates) > 20:
        extra = sum(len(d.extra) for d in duplicates)
        res.log.warning(f"{len(duplicates) - 20} more primary keys are shared by several entries; "
                        f"{extra} entries in all are to be deleted as duplicates (the oldest of each key kept).")


def _check_columns(spec: RunSpec, res: Resources, planner: Planner, row: Mapping[str, Any]) -> None:
    """The first row's columns against the options that name one: a missing primary column stops the
    run before anything is sent (:class:`ColumnError`); the others warn."""
    where = "the query's result" if spec.op.query is not None else "the source's rows"
    check = check_columns([str(name) for name in row], planner.options, where)
    for warning in check.warnings:
        res.log.warning(warning)
    if check.error is not None:
        raise ColumnError(check.error)
