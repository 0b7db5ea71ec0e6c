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
    errors: list[str] = field(default_factory=list)
    file_errors: int = 0  # files that could not be read or uploaded (their column was left out)
    batches: int = 0
    seconds: float = 0.0
    ok: bool = True

    @property
    def affected(self) -> int:
        return self.inserted + self.updated + self.deleted

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["affected"] = self.affected
        return out
