"""The safety rules of a plan: how many entries one run may delete, and when a run has failed
although nothing went wrong on the wire.

Why: one wrong ``WHERE``, an API that answers an empty list, a misspelt key column, and a replace-mode
run would delete the whole data source, then report success. A sync tool is trusted only if a
mistake like that cannot wipe data. So every deletion a run plans (a set ``delete_column``,
replace-mode orphans, entries healed for sharing a key) is held until the source has been read to
the end, then judged here at once: above the limit none is sent and the run fails, saying how many
it would have deleted, out of how many, and which option changes the limit.

The default (no ``delete_limit`` option): a run never deletes every entry of a non-empty data source,
and never more than half of its entries once more than :data:`FLOOR` would go (small clean-ups of a
small data source never trip it). ``delete_limit: 500`` or ``"10%"`` replaces the default with that
cap (of the data source's entries before the run); ``delete_limit: none`` turns the guard off.

Pure: plain numbers in, numbers and messages out. The fleet stages a plan's counts in Redis and
derives the same failures from them in its finalize step (:func:`plan_failures`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fliplet_workers.config.model import DeleteLimit

#: Under the default limit, deleting this many entries or fewer never counts as "more than half".
FLOOR = 10
OPTION = "delete_limit"


def most_deletes(size: int, limit: DeleteLimit | None) -> int | None:
    """The most entries a run may delete from a data source of ``size`` entries (None: no limit)."""
    if limit is not None:
        if limit.off:
            return None
        if limit.count is not None:
            return max(0, limit.count)
        if limit.percent is not None:
            return max(0, math.floor(size * limit.percent / 100 + 1e-9))
    if size <= 0:
        return 0
    return min(size - 1, max(FLOOR, size // 2))


@dataclass(frozen=True)
class DeleteVerdict:
    """Whether ``deletes`` deletions may be sent to a data source of ``size`` entries."""

    deletes: int
    size: int
    allowed: int | None  # the most allowed; None: no limit
    default: bool  # the default rule decided (no ``delete_limit`` option)

    @property
    def ok(self) -> bool:
        return self.allowed is None or self.deletes <= self.allowed


def judge_deletes(deletes: int, size: int, limit: DeleteLimit | None) -> DeleteVerdict:
    return DeleteVerdict(deletes, size, most_deletes(size, limit), default=limit is None)


def refusal_message(deletes: int, size: int, allowed: int, default: bool) -> str:
    """Why no deletion was sent: the number, the data source's size, the limit and the option."""
    if default:
        rule = (f"the default limit: never every entry, nor more than half of them once more than {FLOOR} "
                "would go")
    else:
        rule = f"set by the option {OPTION!r}"
    return (f"Refusing to delete {deletes} of the data source's {size} entries: this run may delete at most "
            f"{allowed} ({rule}). No entry was deleted: only the deletions were held back. If these "
            f"deletions are intended, set the option {OPTION!r} to a higher count, a percentage such as "
            f"\"100%\", or none.")


def all_skipped_message(rows: int, withheld: int) -> str:
    held = f"; the {withheld} deletion(s) it planned were not sent" if withheld else ""
    return (f"All {rows} source row(s) were skipped (each is logged with its reason: a missing, duplicate or "
            f"invalid primary key value), so nothing was synced{held}.")


def every_row_skipped(counts: Mapping[str, int]) -> bool:
    rows = counts.get("rows", 0)
    return rows > 0 and counts.get("skipped", 0) >= rows


def plan_failures(counts: Mapping[str, int]) -> list[str]:
    """The failures a plan amounts to, from its counts (``Tally.counts()``): every source row skipped,
    or deletions withheld by the guard. Empty when the plan is sound."""
    withheld = counts.get("withheld", 0)
    if every_row_skipped(counts):
        return [all_skipped_message(counts["rows"], withheld)]
    if withheld:
        return [refusal_message(withheld, counts.get("remote", 0), max(0, counts.get("delete_allowed", 0)),
                                bool(counts.get("delete_default", 1)))]
    return []


def unkeyed_replace_message(size: int, allowed: int, default: bool) -> str:
    """Replace mode without a primary key deletes every entry: refused before anything is sent."""
    rule = "the default limit never deletes every entry" if default else f"set by the option {OPTION!r}"
    return (f"Refusing to run: mode 'replace' without a primary_column deletes all {size} entries of the data "
            f"source to insert the rows again, and this run may delete at most {allowed} ({rule}). Nothing was "
            f"sent. Set a primary_column, or set the option {OPTION!r} to none to allow it.")
