"""Check the options that name a column against the columns the source's rows actually have.

Why before the first write: a misspelt key column makes every row keyless, which in replace mode
turns every entry into an orphan to delete; a misspelt timestamp or delete column silently changes
what a run does. So the first row's columns are checked, with a "did you mean" for each problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from fliplet_workers.core.diff_options import DiffOptions


@dataclass(frozen=True)
class ColumnCheck:
    """What the first source row's columns say about the options that name a column."""

    error: str | None = None  # the primary column is not there: nothing may be sent
    warnings: tuple[str, ...] = ()


def check_columns(columns: Sequence[str], options: DiffOptions, where: str = "the query's result") -> ColumnCheck:
    """Check ``primary_column``, ``timestamp_column`` and ``delete_column`` against the columns of
    the result (``where`` names it for the message). Column names match exactly (as the rows are
    read: ``case_insensitive_primary_column`` is about the key's values, not the column's name)."""
    names = [str(c) for c in columns]
    present = set(names)
    shown = ", ".join(names[:40]) + (f", … ({len(names)} columns)" if len(names) > 40 else "")

    def problem(option: str, column: str) -> str:
        hint = _did_you_mean(column, names)
        return (f"{option} {column!r} is not a column of {where} (columns: {shown or 'none'})"
                + (f"; did you mean {hint!r}?" if hint else "."))

    error = None
    if options.primary_column is not None and options.primary_column not in present:
        error = problem("primary_column", options.primary_column)
    warnings = []
    if options.timestamp_column is not None and options.timestamp_column not in present:
        warnings.append(problem("timestamp_column", options.timestamp_column)
                        + " Rows are compared by their content instead.")
    if options.delete_column is not None and options.delete_column not in present:
        warnings.append(problem("delete_column", options.delete_column)
                        + " No entry will be deleted through it.")
    return ColumnCheck(error, tuple(warnings))


def _did_you_mean(column: str, names: Sequence[str]) -> str | None:
    """The column the user most likely meant: same name in another case, else the closest name."""
    folded = {n.lower(): n for n in names}
    if column.lower() in folded:
        return folded[column.lower()]
    close = difflib.get_close_matches(column.lower(), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None
