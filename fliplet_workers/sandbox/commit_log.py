"""The sandbox's record of every commit it received, and what each one changed.

Why: the sandbox is where a user rehearses a config, and the question after a run is "what did it
do?". Each commit request gets a :class:`CommitRecord` the moment it arrives (before injected faults
and validation), so that a commit that failed or was refused is in the log too; when the store
applies it, the record gets the counts and each entry's change, before → after. Applying stays
cheap: a commit's changes are kept column-wise (:class:`ChangeSet`: a few lists, not an object per
entry, so the garbage collector has nothing new to track), holding references to the entries' data
before and after (immutable in the store, so free to keep); an update is reduced to the columns that
changed only when it is first looked at or saved.

Bounded twice, so that neither memory nor the state file grows with the sandbox's life: the last
:data:`LOG_SIZE` commits are kept (older ones are forgotten, still counted by the store), and at most
:data:`CHANGE_BUDGET` entry changes over all of them (the oldest commits lose their details first;
their counts stay). Bodies as received stay in memory only (``Store.commits``); the rest is persisted
in the state file's ``commitLog``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: How many commits the log keeps (all data sources together).
LOG_SIZE = 1000
#: How many entry changes the log keeps over all its commits (a change of a 1M-entry replace is not).
CHANGE_BUDGET = 100_000

MISSING: Any = object()


#: One entry's change: (op, entry id, data before, data after, columns unchanged). ``op`` is
#: ``insert`` (before None), ``update`` or ``delete`` (after None). A reduced update holds only the
#: columns that changed; :data:`UNREDUCED` in the last place marks one that still holds whole data.
Change = tuple[str, int, Mapping[str, Any] | None, Mapping[str, Any] | None, int]
UNREDUCED = -1


def update_change(entry_id: int, before: Mapping[str, Any], after: Mapping[str, Any]) -> Change:
    """An update reduced to the columns whose value changed (or that appeared or went away)."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    same = 0
    for column in {**before, **after}:
        was, now = before.get(column, MISSING), after.get(column, MISSING)
        if was is MISSING or now is MISSING or was != now or type(was) is not type(now):
            if was is not MISSING:
                old[column] = was
            if now is not MISSING:
                new[column] = now
        else:
            same += 1
    return ("update", entry_id, old, new, same)


class ChangeSet:
    """One commit's changes, column-wise: ``ops[i]``, ``ids[i]``, ``befores[i]``, ``afters[i]``,
    ``sames[i]`` are the parts of change ``i`` (see :data:`Change`)."""

    __slots__ = ("afters", "befores", "ids", "ops", "sames")

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.ids: list[int] = []
        self.befores: list[Mapping[str, Any] | None] = []
        self.afters: list[Mapping[str, Any] | None] = []
        self.sames: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Change]:
        return zip(self.ops, self.ids, self.befores, self.afters, self.sames, strict=True)

    def add(self, op: str, entry_id: int, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
            same: int = 0) -> None:
        self.ops.append(op)
        self.ids.append(entry_id)
        self.befores.append(before)
        self.afters.append(after)
        self.sames.append(same)

    @classmethod
    def of(cls, changes: Iterable[Sequence[Any]]) -> ChangeSet:
        out = cls()
        for c in changes:
            out.add(str(c[0]), int(c[1]), c[2], c[3], int(c[4]))
        return out

    def keep(self, count: int) -> int:
        """Keep the first ``count`` changes; returns how many were dropped."""
        dropped = max(0, len(self) - count)
        if dropped:
            for part in (self.ops, self.ids, self.befores, self.afters, self.sames):
                del part[count:]
        return dropped

    def reduce(self) -> None:
        """Turn updates that still hold whole data into the columns that changed (once)."""
        for i, same in enumerate(self.sames):
            if same == UNREDUCED:
                _, _, before, after, same = update_change(self.ids[i], self.befores[i] or {}, self.afters[i] or {})
                self.befores[i], self.afters[i], self.sames[i] = before, after, same


@dataclass
class CommitRecord:
    """One commit request as the sandbox saw it. ``status``: ``received`` (not applied: an injected
    failure, a dropped request, or still being applied), ``applied`` or ``refused`` (``message``)."""

    seq: int
    ds_id: int
    received_at: str
    sent_entries: int = 0
    sent_deletes: int = 0
    append: bool = False
    extend: bool = False
    via: str = "api"  # api: an HTTP or in-memory API request; direct: a Python call on the store
    status: str = "received"
    message: str = ""
    applied_at: str = ""
    counts: dict[str, int] = field(default_factory=lambda: {"inserted": 0, "updated": 0, "deleted": 0})
    changes: ChangeSet = field(default_factory=ChangeSet)
    changes_dropped: int = 0
    body: Any = None  # in memory only

    def summary(self, source_name: str = "") -> dict[str, Any]:
        """The JSON the console lists (no entry data)."""
        return {"seq": self.seq, "dataSourceId": self.ds_id, "dataSourceName": source_name,
                "receivedAt": self.received_at, "appliedAt": self.applied_at, "status": self.status,
                "message": self.message, "via": self.via, "append": self.append, "extend": self.extend,
                "sentEntries": self.sent_entries, "sentDeletes": self.sent_deletes, **self.counts,
                "changesKept": len(self.changes), "changesDropped": self.changes_dropped}

    def details(self) -> list[Change]:
        """The changes, updates reduced to their changed columns (once: the result is kept)."""
        self.changes.reduce()
        return list(self.changes)

    def to_doc(self) -> dict[str, Any]:
        doc = self.summary()
        doc.pop("dataSourceName")
        doc.pop("changesKept")
        doc["changes"] = [list(c) for c in self.details()]
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> CommitRecord:
        counts = {k: int(doc.get(k, 0)) for k in ("inserted", "updated", "deleted")}
        changes = ChangeSet.of((c[0], c[1], c[2], c[3], max(0, int(c[4]))) for c in doc.get("changes", []))
        return cls(int(doc["seq"]), int(doc["dataSourceId"]), str(doc.get("receivedAt", "")),
                   int(doc.get("sentEntries", 0)), int(doc.get("sentDeletes", 0)), bool(doc.get("append")),
                   bool(doc.get("extend")), str(doc.get("via", "api")), str(doc.get("status", "received")),
                   str(doc.get("message", "")), str(doc.get("appliedAt", "")), counts, changes,
                   int(doc.get("changesDropped", 0)))


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


class CommitLog:
    """The bounded list of :class:`CommitRecord`, oldest first. Not thread-safe: the store's lock
    guards it."""

    def __init__(self, size: int = LOG_SIZE, budget: int = CHANGE_BUDGET) -> None:
        self.size = size
        self.budget = budget
        self._records: deque[CommitRecord] = deque()
        self._next_seq = 1
        self._kept = 0  # changes held over all records
        self._pending: dict[int, CommitRecord] = {}  # id(body) → its record, until applied or refused

    def __iter__(self) -> Iterator[CommitRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def received(self, ds_id: int, body: Any, stamp: str, via: str = "api") -> CommitRecord:
        """Log a commit request as it arrived (whatever its body: a bad one is refused later)."""
        is_object = isinstance(body, dict)
        record = CommitRecord(
            self._next_seq, ds_id, stamp,
            sent_entries=_length(body.get("entries")) if is_object else 0,
            sent_deletes=_length(body.get("delete")) if is_object else 0,
            append=bool(body.get("append")) if is_object else False,
            extend=bool(body.get("extend")) if is_object else False, via=via, body=body)
        self._next_seq += 1
        self._records.append(record)
        if via == "api":
            self._pending[id(body)] = record  # the record holds the body: its id stays unique meanwhile
        while len(self._records) > self.size:
            gone = self._records.popleft()
            self._kept -= len(gone.changes)
            self._settle(gone)
        return record

    def _settle(self, record: CommitRecord) -> None:
        if self._pending.get(id(record.body)) is record:
            del self._pending[id(record.body)]

    def pending(self, ds_id: int, body: Any) -> CommitRecord | None:
        """The newest not-yet-applied record of this very body object (the HTTP handler and the
        in-memory API log a body, then hand the same object to ``Store.commit``)."""
        record = self._pending.get(id(body))
        if record is None or record.body is not body or record.ds_id != ds_id or record.status != "received":
            return None
        return record

    def applied(self, record: CommitRecord, changes: ChangeSet, counts: dict[str, int], stamp: str) -> None:
        """``counts``: inserted, updated, deleted (every change, also those beyond the budget)."""
        record.status, record.applied_at, record.counts = "applied", stamp, counts
        self._settle(record)
        record.changes_dropped = changes.keep(self.budget)
        record.changes = changes
        self._kept += len(changes)
        self._trim()

    def refused(self, record: CommitRecord, message: str) -> None:
        record.status, record.message = "refused", message
        self._settle(record)

    def _trim(self) -> None:
        """Drop the details of the oldest commits until the budget holds (their counts stay)."""
        for record in self._records:
            if self._kept <= self.budget:
                return
            if record.changes:
                self._kept -= len(record.changes)
                record.changes_dropped += len(record.changes)
                record.changes = ChangeSet()

    def find(self, seq: int) -> CommitRecord | None:
        for record in self._records:
            if record.seq == seq:
                return record
        return None

    def bodies(self, ds_id: int) -> list[Any]:
        """The bodies received over the API for ``ds_id``, oldest first (memory only)."""
        return [r.body for r in self._records if r.ds_id == ds_id and r.via == "api" and r.body is not None]

    def newest_first(self, ds_ids: Iterable[int]) -> list[CommitRecord]:
        wanted = set(ds_ids)
        return [r for r in reversed(self._records) if r.ds_id in wanted]

    def to_doc(self) -> dict[str, Any]:
        return {"nextSeq": self._next_seq, "records": [r.to_doc() for r in self._records]}

    def load(self, doc: Mapping[str, Any] | None) -> None:
        """Restore from a state file's ``commitLog`` (absent in files written before it existed)."""
        self._records.clear()
        self._pending.clear()
        self._kept = 0
        for raw in (doc or {}).get("records", [])[-self.size:]:
            record = CommitRecord.from_doc(raw)
            self._records.append(record)
            self._kept += len(record.changes)
        last = self._records[-1].seq if self._records else 0
        self._next_seq = max(int((doc or {}).get("nextSeq", 1)), last + 1)
        self._trim()


def column_rows(change: Change) -> list[dict[str, Any]]:
    """A change as one row per column for the console: before, after, and which side lacks it."""
    before, after = change[2] or {}, change[3] or {}
    rows = []
    for column in {**before, **after}:
        rows.append({"column": column, "before": before.get(column), "after": after.get(column),
                     "beforeMissing": column not in before, "afterMissing": column not in after})
    return rows
