"""The diff: decide, for each source row and remote entry, to insert, update, delete or skip.

Remote entries are indexed first (a hash map by normalised key: the whole diff is linear in
rows + entries; the original scans every entry for every row), then source rows are judged one at a
time as they stream in. Rows are never all held in memory, and a caller can start committing the
first batches while the source is still being read (see :mod:`.batches` and ``run.py``).

The decisions are the original agent's (see ``shared/fliplet-api.md``), with deliberate improvements,
each documented in the README:

* a key of ``0`` is a key (see ``rows.is_missing_key``);
* an existing entry is updated only if its data differs from the row whenever no timestamp decides
  (no timestamp column, a timestamp that cannot be read), so a re-run with nothing changed sends no
  commit at all;
* in replace mode a second remote entry with the same key as an earlier one is deleted, so the data
  source ends up equal to the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from fliplet_workers.core.rows import (
    Key,
    LocalRow,
    Skip,
    brief,
    gc_paused,
    is_flagged,
    is_missing_key,
    normalise_key,
    normalise_row,
    timestamp_seconds,
)

Note = Callable[[str], None]


@dataclass(frozen=True)
class DiffOptions:
    primary_column: str | None
    case_insensitive: bool = False
    timestamp_column: str | None = None
    delete_column: str | None = None
    mode: str = "update"  # "update" keeps orphans, "replace" deletes them
    #: Columns left out of the content comparison (file columns: the remote holds the Fliplet URL).
    ignore_columns: frozenset[str] = frozenset()
    #: Turns a remote entry's data back into comparable plaintext (decrypts encrypted fields).
    decode_remote: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclass
class RemoteIndex:
    """The remote entries by normalised key: ``(entry id, data)`` of the first entry with each key.

    ``orphans`` are entries no row can match: no key value, or a key already seen (a duplicate).
    """

    by_key: dict[Key, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    orphans: list[int] = field(default_factory=list)
    count: int = 0


def index_remote(entries: Iterable[Mapping[str, Any]], options: DiffOptions) -> RemoteIndex:
    """Index the remote entries as they stream in. Without a primary column only ids are kept."""
    index = RemoteIndex()
    pk = options.primary_column
    with gc_paused():
        for entry in entries:
            index.count += 1
            if pk is None:
                index.orphans.append(entry["id"])
                continue
            data = entry.get("data") or {}
            key = normalise_key(data.get(pk), options.case_insensitive)
            if is_missing_key(key) or not _hashable(key) or key in index.by_key:
                index.orphans.append(entry["id"])
            else:
                # A streaming parser makes new column-name strings for every entry: share them, which
                # keeps a million 5-column entries ~250 MB smaller.
                index.by_key[key] = (entry["id"], {intern(name): value for name, value in data.items()})
    return index


@dataclass(slots=True)
class Change:
    """One thing to send: ``insert`` (row), ``update`` (entry id + row) or ``delete`` (entry id)."""

    kind: str
    row: LocalRow | None = None
    entry_id: int | None = None


@dataclass
class Tally:
    """What a plan amounts to, counted as the rows stream (nothing here grows with the rows)."""

    insert: int = 0
    update: int = 0
    delete: int = 0
    unchanged: int = 0
    absent_deleted: int = 0  # rows flagged deleted locally that are not on Fliplet either
    remote: int = 0
    skips: list[Skip] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.insert or self.update or self.delete)

    def counts(self) -> dict[str, int]:
        return {"insert": self.insert, "update": self.update, "delete": self.delete,
                "unchanged": self.unchanged, "skipped": len(self.skips), "remote": self.remote}


class Planner:
    """Judges source rows one at a time against a :class:`RemoteIndex`.

    ``add(row)`` returns the change the row calls for (or None); ``finish()`` returns the deletes that
    only the end of the source can tell (replace mode: entries no row matched). ``tally`` counts
    everything, including skipped rows with the reason (missing or duplicate key).
    """

    def __init__(self, remote: RemoteIndex, options: DiffOptions, note: Note | None = None) -> None:
        self.remote = remote
        self.options = options
        self.say = note or _silent
        self.verbose = note is not None
        self.seen: set[Key] = set()
        self.number = 0
        self.tally = Tally(remote=remote.count)

    def add(self, source_row: Mapping[str, Any]) -> Change | None:
        self.number += 1
        options = self.options
        data = normalise_row(source_row)
        deleted = is_flagged(data.get(options.delete_column)) if options.delete_column else False
        pk = options.primary_column
        if pk is None:
            if deleted:
                self.tally.absent_deleted += 1
                return None
            self.tally.insert += 1
            if self.verbose:
                self.say(f"Row {self.number} has been marked for inserting since we don't have a primary key "
                         "for the comparison.")
            return Change("insert", LocalRow(data=data, deleted=deleted))
        raw = data.get(pk)
        if is_missing_key(raw):
            self.tally.skips.append(Skip("missing_key", "A row is missing its primary key value from the "
                                         f"database. Skipping: (row {self.number}) {brief(data)}"))
            return None
        key = raw.lower() if options.case_insensitive and type(raw) is str else raw
        if not _hashable(key) or key in self.seen:
            self.tally.skips.append(Skip("duplicate_key", f"Row {self.number} has the same primary key {raw!r} "
                                         f"as an earlier row ({pk!r}). Skipping: {brief(data)}"))
            return None
        self.seen.add(key)
        row = LocalRow(data=data, raw_key=raw, deleted=deleted)
        found = self.remote.by_key.get(key)
        if found is None:
            if deleted:
                self.tally.absent_deleted += 1
                if self.verbose:
                    self.say(f"Row {raw} is not present on Fliplet servers and it's locally marked as deleted. "
                             "Skipping...")
                return None
            self.tally.insert += 1
            if self.verbose:
                self.say(f"Row {raw} has been marked for inserting.")
            return Change("insert", row)
        return self._judge(row, *found)

    def _judge(self, row: LocalRow, entry_id: int, data: dict[str, Any]) -> Change | None:
        """A row that exists remotely: delete, update or leave it."""
        say = self.say if self.verbose else None
        if say:
            say(f"Row {row.raw_key} already exists on Fliplet servers with ID {entry_id}")
        if row.deleted:
            self.tally.delete += 1
            if say:
                say(f"Row {row.raw_key} has been marked for deletion on Fliplet servers with ID {entry_id}.")
            return Change("delete", entry_id=entry_id)
        options = self.options
        if options.decode_remote is not None:
            data = options.decode_remote(dict(data))
        changed: bool | None = None
        ts_col = options.timestamp_column
        if ts_col:
            local_value, remote_value = row.data.get(ts_col), data.get(ts_col)
            if local_value == remote_value and _looks_like_time(local_value):
                changed = False  # identical timestamps: no need to parse
            else:
                local_ts, remote_ts = timestamp_seconds(local_value), timestamp_seconds(remote_value)
                if local_ts is not None and remote_ts is not None:
                    changed = local_ts != remote_ts
        if changed is None:  # no timestamp decides: compare the data itself
            changed = not same_data(row.data, data, options.ignore_columns)
        if changed:
            self.tally.update += 1
            if say:
                say(f"Row {row.raw_key} has been marked for updating.")
            return Change("update", row, entry_id)
        self.tally.unchanged += 1
        if say:
            say(f"Row {row.raw_key} already exists on Fliplet servers with ID {entry_id} and does not "
                "require updating.")
        return None

    def finish(self) -> list[int]:
        """The deletes known only at the end: in replace mode, every entry no row matched."""
        if self.options.mode != "replace":
            return []
        seen = self.seen
        deletes = [entry_id for key, (entry_id, _) in self.remote.by_key.items() if key not in seen]
        deletes.extend(self.remote.orphans)
        self.tally.delete += len(deletes)
        return deletes


@dataclass
class Plan:
    """A whole plan in memory (tests, dry runs): the changes in source order, then the final deletes."""

    changes: list[Change] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    @property
    def inserts(self) -> list[LocalRow]:
        return [c.row for c in self.changes if c.kind == "insert" and c.row is not None]

    @property
    def updates(self) -> list[tuple[int, LocalRow]]:
        return [(c.entry_id, c.row) for c in self.changes
                if c.kind == "update" and c.row is not None and c.entry_id is not None]

    @property
    def deletes(self) -> list[int]:
        return [c.entry_id for c in self.changes if c.kind == "delete" and c.entry_id is not None]

    @property
    def skips(self) -> list[Skip]:
        return self.tally.skips

    @property
    def unchanged(self) -> int:
        return self.tally.unchanged

    @property
    def absent_deleted(self) -> int:
        return self.tally.absent_deleted

    @property
    def remote_count(self) -> int:
        return self.tally.remote

    @property
    def is_empty(self) -> bool:
        return self.tally.is_empty

    def counts(self) -> dict[str, int]:
        return self.tally.counts()


def diff(
    rows: Iterable[Mapping[str, Any]],
    remote: Iterable[Mapping[str, Any]],
    options: DiffOptions,
    note: Note | None = None,
) -> Plan:
    """The whole plan at once: index ``remote``, judge every row, add the final deletes."""
    planner = Planner(index_remote(remote, options), options, note)
    plan = Plan(tally=planner.tally)
    with gc_paused():
        for row in rows:
            change = planner.add(row)
            if change is not None:
                plan.changes.append(change)
        plan.changes.extend(Change("delete", entry_id=i) for i in planner.finish())
    return plan


def same_data(local: Mapping[str, Any], remote: Mapping[str, Any], ignore: frozenset[str]) -> bool:
    """True when every column the local row carries has the same value remotely.

    Columns only the remote has are not compared: they were added in Fliplet (or by ``merge``).
    ``True`` and ``1`` differ here although Python says they are equal.
    """
    for name, value in local.items():
        if name in ignore:
            continue
        other = remote.get(name)
        if other != value:
            return False
        if (type(other) is bool) is not (type(value) is bool):
            return False
    return True


def _looks_like_time(value: Any) -> bool:
    """Cheap test (no parsing) that a timestamp value is an ISO date-time or a number."""
    if isinstance(value, str):
        return len(value) >= 10 and value[4] == "-" and value[7] == "-" and value[:4].isdigit()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hashable(key: Any) -> bool:
    return not isinstance(key, (dict, list))


def _silent(_: str) -> None:
    return None
