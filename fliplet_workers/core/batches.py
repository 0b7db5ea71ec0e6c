"""Cut a stream of changes into commit batches: the unit that is sent, retried and (in the fleet)
fanned out.

Both modes commit in batches of ``batch_size`` entries (the original sends everything in one request
in update mode, which fails above 10 MiB). Delete ids are sent once, in chunks of ``batch_size``
riding along with the entries (the original re-sends the whole delete list with every batch).
Batches are cut as changes arrive, so the first can be committed while the source is still read.

A batch stays typed until the request body is built: each :class:`Entry` knows its row's key, the
remote id it updates (None: an insert) and its data. Files, encryption and the retry logic read and
rewrite those fields, never a wire dict, and a batch's insert keys are read off its entries (they
cannot drift out of step with them). :meth:`Batch.body` serialises the entries to the wire form the
original sends (``{"id"?, "data"}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fliplet_workers.core.diff import Change, Plan


@dataclass(eq=False, slots=True)
class Entry(Mapping[str, Any]):
    """One entry of a commit: the row's primary key value (None without a primary column), the
    remote entry id it updates (None: an insert) and the data sent.

    It also reads as its wire form, a read-only mapping ``{"id"?, "data"}`` (``entry["data"]``,
    ``"id" in entry``, ``entry == {"data": ...}``): what onSync's ``commits`` and the server see.
    Treated as immutable (steps make new entries with :meth:`with_data`); not ``frozen`` only because
    one is made per changed row and a frozen dataclass costs three times as much to build (~450 ns).
    """

    key: Any
    remote_id: int | None
    data: dict[str, Any]

    @property
    def is_insert(self) -> bool:
        return self.remote_id is None

    def with_data(self, data: dict[str, Any]) -> Entry:
        return replace(self, data=data)

    def wire(self) -> dict[str, Any]:
        """The entry as the commit request carries it."""
        if self.remote_id is None:
            return {"data": self.data}
        return {"id": self.remote_id, "data": self.data}

    def __getitem__(self, name: str) -> Any:
        if name == "data":
            return self.data
        if name == "id" and self.remote_id is not None:
            return self.remote_id
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.wire())

    def __len__(self) -> int:
        return 1 if self.remote_id is None else 2

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entry):
            return (self.key, self.remote_id, self.data) == (other.key, other.remote_id, other.data)
        if isinstance(other, Mapping):
            return self.wire() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def as_entry(raw: Mapping[str, Any] | Entry, key: Any = None) -> Entry:
    """An :class:`Entry` from its wire or staged form (``{"id"?, "data", "key"?}``)."""
    if isinstance(raw, Entry):
        return raw
    return Entry(key=raw.get("key", key), remote_id=raw.get("id"), data=raw.get("data") or {})


class Batch:
    """One commit: its number, typed entries and the entry ids to delete.

    ``insert_keys`` (constructor only) gives the keys of the inserts among wire-form ``entries``, in
    order, for callers that build a batch from wire dicts; otherwise the keys are the entries' own.
    """

    __slots__ = ("delete", "entries", "number")

    def __init__(self, number: int, entries: Iterable[Mapping[str, Any] | Entry] = (),
                 delete: Iterable[int] = (), insert_keys: Iterable[Any] | None = None) -> None:
        keys = iter(insert_keys) if insert_keys is not None else None
        typed: list[Entry] = []
        for raw in entries:
            entry = as_entry(raw)
            if keys is not None and entry.is_insert:
                entry = replace(entry, key=next(keys, None))
            typed.append(entry)
        self.number = number
        self.entries = typed
        self.delete = list(delete)

    @property
    def insert_keys(self) -> list[Any]:
        """The keys of the inserts that have one, in entry order (what an unknown outcome looks up)."""
        return [e.key for e in self.entries if e.remote_id is None and e.key is not None]

    @property
    def inserts(self) -> int:
        return sum(1 for e in self.entries if e.remote_id is None)

    @property
    def updates(self) -> int:
        return sum(1 for e in self.entries if e.remote_id is not None)

    def with_entries(self, entries: list[Entry], delete: list[int] | None = None) -> Batch:
        """The same batch (number, deletes unless given) with other entries."""
        return Batch(self.number, entries, self.delete if delete is None else delete)

    def body(self, run_hooks: tuple[str, ...] | list[str], merge: bool) -> dict[str, Any]:
        """The commit request body exactly as the original sends it."""
        body: dict[str, Any] = {"append": True, "entries": [e.wire() for e in self.entries]}
        if self.delete:
            body["delete"] = self.delete
        body["runHooks"] = list(run_hooks)
        body["extend"] = bool(merge)
        return body

    def to_dict(self) -> dict[str, Any]:
        """The staged form (JSON): entries with their key, so the keys travel with their rows."""
        entries = [e.wire() | ({"key": e.key} if e.key is not None else {}) for e in self.entries]
        return {"number": self.number, "entries": entries, "delete": self.delete}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Batch:
        return cls(raw["number"], raw["entries"], raw["delete"], raw.get("insert_keys"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        return (self.number, self.entries, self.delete) == (other.number, other.entries, other.delete)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Batch(number={self.number}, entries={self.entries!r}, delete={self.delete!r})"


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
            key = data.get(self.primary_column) if self.primary_column is not None else None
            remote_id = change.entry_id if change.kind == "update" else None
            current.entries.append(Entry(key, remote_id, data))
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


def cut(changes: Iterable[Change], size: int, primary_column: str | None, first_number: int = 1) -> Iterator[Batch]:
    """Every batch of ``changes``, in order, each as soon as it is full (numbered from ``first_number``;
    the fleet continues an interrupted run that way)."""
    cutter = BatchCutter(size, primary_column, first_number)
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
