"""The outcome of one run, as logged, returned by ``run_operation`` and shown in Flower."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
