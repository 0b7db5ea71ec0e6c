"""The outcome of one run, as logged, returned by ``run_operation`` and shown in Flower.

The rules that turn a plan's tally and the batches' commit outcomes into a summary live here, pure,
so the foreground agent (which has the tally) and the fleet's finalize step (which has only the
counts staged in Redis) sum a run alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fliplet_workers.core import guard
from fliplet_workers.core.diff import Tally
from fliplet_workers.core.retry import CommitOutcome


@dataclass
class RunSummary:
    config: str
    operation: int
    dry_run: bool = False
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0
    #: Everything that went wrong, one line each: failures, and rows skipped or refused (a run with
    #: errors can still be ``ok``: only failures turn ``ok`` off).
    errors: list[str] = field(default_factory=list)
    #: How many of the first ``errors`` were logged where they happened (skipped rows), so that the
    #: end of the run does not log them a second time.
    logged_errors: int = 0
    file_errors: int = 0  # files that could not be read or uploaded (their column was left out)
    batches: int = 0
    retries: int = 0  # commit requests sent again after a failed attempt (summed over the batches)
    seconds: float = 0.0
    ok: bool = True

    @property
    def affected(self) -> int:
        return self.inserted + self.updated + self.deleted

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["affected"] = self.affected
        return out

    def add_outcome(self, outcome: CommitOutcome) -> None:
        """Add one batch's commit outcome."""
        self.inserted += outcome.inserted
        self.updated += outcome.updated
        self.deleted += outcome.deleted
        self.skipped += outcome.rejected_entries
        self.errors.extend(outcome.errors)
        self.retries += max(0, outcome.attempts - 1)
        self.ok = self.ok and outcome.committed

    def add_plan(self, tally: Tally, batches: int) -> None:
        """Add the plan: skipped rows are errors (already logged, one each), and a plan that skipped
        every row or was refused its deletions fails the run."""
        self.unchanged = tally.unchanged
        self.skipped += len(tally.skips)
        self.batches = batches
        self.errors[:0] = [skip.message for skip in tally.skips]
        self.logged_errors += len(tally.skips)
        self.fail_plan(tally.counts())

    def fail_plan(self, counts: Mapping[str, int], *, rows_listed: bool = True) -> None:
        """Fail for what the plan's counts say went wrong (:func:`guard.plan_failures`). The fleet's
        finalize step has only the counts: ``rows_listed=False`` adds one line for its skipped rows
        (each was logged by the planner)."""
        if not rows_listed and counts.get("skipped"):
            self.errors.append(f"{counts['skipped']} source row(s) were skipped for a missing, duplicate or "
                               "invalid primary key value (each is logged with its reason).")
        failures = guard.plan_failures(counts)
        self.errors.extend(failures)
        if failures:
            self.ok = False
