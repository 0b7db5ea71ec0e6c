"""Cut a stream of changes into commit batches: the unit that is sent, retried and (in the fleet)
fanned out.

Both modes commit in batches of ``batch_size`` entries (the original sends everything in one request
in update mode, which fails above 10 MiB). Delete ids are sent once, in chunks of ``batch_size``
riding along with the entries (the original re-sends the whole delete list with every batch).
Batches are cut as changes arrive, so the first can be committed while the source is still read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fliplet_workers.core.diff import Change, Plan


@dataclass
class Batch:
    """One commit. ``entries`` are wire-ready (``{"id"?, "data"}``); ``insert_keys`` name the rows
    that have no ``id`` so that an unknown outcome can be checked against the remote."""

    number: int
    entries: list[dict[str, Any]] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)
    insert_keys: list[Any] = field(default_factory=list)

    @property
    def inserts(self) -> int:
        return sum(1 for e in self.entries if "id" not in e)

    @property
    def updates(self) -> int:
        return sum(1 for e in self.entries if "id" in e)

    def body(self, run_hooks: tuple[str, ...] | list[str], merge: bool) -> dict[str, Any]:
        """The commit request body exactly as the original sends it."""
        body: dict[str, Any] = {"append": True, "entries": self.entries}
        if self.delete:
            body["delete"] = self.delete
        body["runHooks"] = list(run_hooks)
        body["extend"] = bool(merge)
        return body

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "entries": self.entries, "delete": self.delete,
                "insert_keys": self.insert_keys}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Batch:
        return cls(number=raw["number"], entries=raw["entries"], delete=raw["delete"],
                   insert_keys=raw.get("insert_keys", []))


class BatchCutter:
    """Collects changes and hands back each batch as soon as it holds ``size`` entries or deletes."""

    def __init__(self, size: int, primary_column: str | None, first_number: int = 1) -> None:
        self.size = max(1, size)
        self.primary_column = primary_column
        self.count = 0
        self._current = Batch(number=first_number)

    def add(self, change: Change) -> Batch | None:
        """Add one change; returns the batch it completed, if any."""
        current = self._current
        if change.kind == "delete":
            assert change.entry_id is not None
            current.delete.append(change.entry_id)
        else:
            assert change.row is not None
            data = change.row.data
            if change.kind == "update":
                current.entries.append({"id": change.entry_id, "data": data})
            else:
                current.entries.append({"data": data})
                if self.primary_column is not None:
                    current.insert_keys.append(data.get(self.primary_column))
        if len(current.entries) >= self.size or len(current.delete) >= self.size:
            return self._next()
        return None

    def flush(self) -> Batch | None:
        """The last, partial batch (None when empty)."""
        current = self._current
        return self._next() if current.entries or current.delete else None

    def _next(self) -> Batch:
        done = self._current
        self.count += 1
        self._current = Batch(number=done.number + 1)
        return done


def cut(changes: Iterable[Change], size: int, primary_column: str | None) -> Iterator[Batch]:
    """Every batch of ``changes``, in order."""
    cutter = BatchCutter(size, primary_column)
    for change in changes:
        batch = cutter.add(change)
        if batch is not None:
            yield batch
    last = cutter.flush()
    if last is not None:
        yield last


def make_batches(plan: Plan, batch_size: int, primary_column: str | None) -> list[Batch]:
    """The batches of a whole plan (dry runs, tests)."""
    return list(cut(plan.changes, batch_size, primary_column))
