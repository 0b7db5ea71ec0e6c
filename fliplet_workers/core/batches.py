"""Cut a plan into commit batches: the unit that is sent, retried and (in the fleet) fanned out.

Both modes commit in batches of ``batch_size`` entries (the original sends everything in one request
in update mode, which fails above 10 MiB). Delete ids are sent once, spread over the batches in
chunks of ``batch_size`` (the original re-sends the whole delete list with every batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fliplet_workers.core.diff import Plan
from fliplet_workers.core.rows import gc_paused


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


def make_batches(plan: Plan, batch_size: int, primary_column: str | None) -> list[Batch]:
    """Updates first (they touch existing entries), then inserts, then leftover deletes."""
    with gc_paused():
        return _make_batches(plan, max(1, batch_size), primary_column)


def _make_batches(plan: Plan, size: int, primary_column: str | None) -> list[Batch]:
    entries: list[tuple[dict[str, Any], Any, bool]] = [
        ({"id": entry_id, "data": row.data}, None, False) for entry_id, row in plan.updates
    ]
    entries.extend(
        ({"data": row.data}, row.data.get(primary_column) if primary_column else None, True)
        for row in plan.inserts
    )
    delete_chunks = [plan.deletes[i:i + size] for i in range(0, len(plan.deletes), size)]
    count = max((len(entries) + size - 1) // size, len(delete_chunks))
    batches: list[Batch] = []
    for index in range(count):
        chunk = entries[index * size:(index + 1) * size]
        batches.append(Batch(
            number=index + 1,
            entries=[e for e, _, _ in chunk],
            delete=delete_chunks[index] if index < len(delete_chunks) else [],
            insert_keys=[k for _, k, is_insert in chunk if is_insert and k is not None],
        ))
    return batches
