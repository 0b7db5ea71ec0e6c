"""Source rows → changes → batches: the pure core's composition, exactly as both agents run it.

Why one function: the order of a push is its safety. Every row is judged as it streams in
(:class:`~fliplet_workers.core.planner.Planner`), inserts and updates are cut into batches at once
(:func:`~fliplet_workers.core.batches.cut`) so that committing overlaps reading, but every deletion
(a set ``delete_column``, replace-mode orphans, duplicate healing) is held until the source has been
read to the end and then judged at once by the delete guard (:func:`hold_back`): above the limit, or
when every row was skipped, none is sent. The foreground agent, the fleet's planner, dry runs and the
tests all get their batches from :func:`plan_changes`; only what happens around it (logging, column
checks, progress) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from fliplet_workers.config.model import DeleteLimit
from fliplet_workers.core import guard
from fliplet_workers.core.planner import Change, Planner, Tally

#: Rows judged are reported every this many (and once at the end of the source).
PROGRESS_ROWS = 1000

Row = Mapping[str, Any]


def plan_changes(planner: Planner, rows: Iterable[Row], *, delete_limit: DeleteLimit | None,
                 size: int | None = None, first_row: Callable[[Row], None] | None = None,
                 judged: Callable[[int], None] | None = None,
                 source_read: Callable[[], None] | None = None) -> Iterator[Change]:
    """Every change to send, in order: inserts and updates as their rows are judged, then the
    deletions the guard allows. ``first_row`` sees the first row before it is judged (the column
    check: it may raise), ``judged`` gets the count of rows judged so far, ``source_read`` is told
    when the source has ended. ``size``: see :func:`hold_back`."""
    held: list[int] = []
    for row in rows:
        if first_row is not None and planner.number == 0:
            first_row(row)
        change = planner.add(row)
        if judged is not None and not planner.number % PROGRESS_ROWS:
            judged(planner.number)
        if change is None:
            continue
        if change.kind == "delete" and change.entry_id is not None:
            held.append(change.entry_id)
            continue
        yield change
    if judged is not None:
        judged(planner.number)
    if source_read is not None:
        source_read()
    held.extend(planner.finish())
    for entry_id in hold_back(planner.tally, held, delete_limit, size):
        yield Change("delete", entry_id=entry_id)


def hold_back(tally: Tally, deletes: list[int], limit: DeleteLimit | None, size: int | None = None) -> list[int]:
    """The deletions that may be sent: all of them, or none when the delete guard refuses them or
    every source row was skipped (the run then fails; see ``RunSummary.add_plan``); the tally says
    which. ``size``: the data source's entries when only some were looked up (an incremental run),
    else those indexed."""
    if not deletes:
        return deletes
    base = max(size, tally.remote) if size is not None else tally.remote
    verdict = guard.judge_deletes(len(deletes), base, limit)
    if not verdict.ok:
        tally.remote = base  # the refusal names the data source's size, not only the entries looked up
    skipped_all = tally.rows > 0 and len(tally.skips) >= tally.rows
    if verdict.ok and not skipped_all:
        return deletes
    tally.withheld = len(deletes)
    tally.delete -= len(deletes)
    if not verdict.ok:
        tally.delete_allowed = verdict.allowed if verdict.allowed is not None else -1
        tally.delete_default = verdict.default
    return []
