"""The diff: decide, for each source row and remote entry, to insert, update, delete or skip.

Remote entries are indexed first (a hash map by normalised key: the whole diff is linear in
rows + entries; the original scans every entry for every row), then source rows are judged one at a
time as they stream in. Rows are never all held in memory, and a caller can start committing the
first batches while the source is still being read (see :mod:`.batches` and ``run.py``).

The decisions are the original agent's (see ``shared/fliplet-api.md``), with deliberate improvements,
each documented in the README:

* keys keep their types exactly: ``0``, ``false`` and text of blanks are keys, ``true`` is not ``1``
  (see ``rows.normalise_key`` and ``rows.is_missing_key``); an object or list key is an error;
* an existing entry is updated only if its data differs from the row whenever no timestamp decides
  (no timestamp column, a timestamp that cannot be read), so a re-run with nothing changed sends no
  commit at all;
* a key held by more than one remote entry is healed in both modes: the oldest entry (lowest id) is
  kept and the others are deleted (a commit applied twice, an entry added twice by an app), so each
  key is there once; every deletion of a run is judged by the delete guard (:mod:`.guard`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    is_invalid_key,
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


@dataclass(frozen=True)
class Duplicate:
    """A key held by several remote entries: ``ids`` in ascending order; the first is kept."""

    key: Any  # as the entry holds it (original case)
    ids: tuple[int, ...]

    @property
    def extra(self) -> tuple[int, ...]:
        return self.ids[1:]

    def warning(self, column: str) -> str:
        return (f"The data source has {len(self.ids)} entries with the primary key {self.key!r} ({column!r}): "
                f"entries {', '.join(map(str, self.ids))}. Entry {self.ids[0]} (the oldest) is kept; this run "
                f"deletes {', '.join(map(str, self.extra))} (within the delete limit).")


@dataclass
class RemoteIndex:
    """The remote entries by normalised key: ``(entry id, data)`` of the oldest entry (lowest id)
    with each key.

    ``orphans`` are entries no row can match: no key value, or an object/list key. ``shared`` holds,
    for each key that more than one entry has, every one of their ids (see :meth:`duplicates`).
    """

    by_key: dict[Key, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    orphans: list[int] = field(default_factory=list)
    shared: dict[Key, list[int]] = field(default_factory=dict)
    count: int = 0

    def duplicates(self, column: str) -> list[Duplicate]:
        """The keys held by more than one entry (named as the kept entry's ``column`` holds it)."""
        return [Duplicate(key=self.by_key[key][1].get(column), ids=tuple(sorted(ids)))
                for key, ids in self.shared.items()]

    def extra_ids(self) -> list[int]:
        """Every entry that shares its key with an older one: what healing deletes."""
        return [i for ids in self.shared.values() for i in sorted(ids)[1:]]


def index_remote(entries: Iterable[Mapping[str, Any]], options: DiffOptions) -> RemoteIndex:
    """Index the remote entries as they stream in. Without a primary column only ids are kept."""
    index = RemoteIndex()
    pk = options.primary_column
    by_key = index.by_key
    with gc_paused():
        for entry in entries:
            index.count += 1
            entry_id = entry["id"]
            if pk is None:
                index.orphans.append(entry_id)
                continue
            data = entry.get("data") or {}
            raw = data.get(pk)
            if is_missing_key(raw) or is_invalid_key(raw):
                index.orphans.append(entry_id)
                continue
            key = normalise_key(raw, options.case_insensitive)
            kept = by_key.get(key)
            if kept is not None:
                index.shared.setdefault(key, [kept[0]]).append(entry_id)
                if kept[0] < entry_id:
                    continue  # the older entry stays the one rows are matched with
            # A streaming parser makes new column-name strings for every entry: share them, which
            # keeps a million 5-column entries ~250 MB smaller.
            by_key[key] = (entry_id, {intern(name): value for name, value in data.items()})
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
    rows: int = 0  # source rows read
    skips: list[Skip] = field(default_factory=list)
    #: Deletions planned but not sent (the delete guard refused them, or every row was skipped), and
    #: the most the guard allowed (-1: no limit; see :mod:`.guard`).
    withheld: int = 0
    delete_allowed: int = -1
    delete_default: bool = True  # the default guard decided (no ``delete_limit`` option)

    @property
    def is_empty(self) -> bool:
        return not (self.insert or self.update or self.delete)

    def counts(self) -> dict[str, int]:
        """Every number of the plan, as plain ints (the fleet stages them in Redis; a run's failures
        are derived from them by :func:`.guard.plan_failures`)."""
        return {"insert": self.insert, "update": self.update, "delete": self.delete,
                "unchanged": self.unchanged, "skipped": len(self.skips), "remote": self.remote,
                "rows": self.rows, "withheld": self.withheld, "delete_allowed": self.delete_allowed,
                "delete_default": int(self.delete_default)}


class Planner:
    """Judges source rows one at a time against a :class:`RemoteIndex`.

    ``add(row)`` returns the change the row calls for (or None); ``finish()`` returns the deletes that
    only the end of the source can tell (entries sharing a key with an older one; in replace mode
    also the entries no row matched). ``tally`` counts everything, including skipped rows with the
    reason (missing, duplicate or invalid key).
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
        self.tally.rows = self.number
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
        if is_invalid_key(raw):
            kind = "an object" if isinstance(raw, dict) else "a list"
            self.tally.skips.append(Skip("invalid_key", f"Row {self.number} has {kind} as its primary key value "
                                         f"({pk!r}), which cannot identify a row. Skipping: {brief(data)}"))
            return None
        key = normalise_key(raw, options.case_insensitive)
        if key in self.seen:
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
        """The deletes known only at the end: in replace mode every entry no row matched; in both
        modes every entry that shares its key with an older one (healing duplicates)."""
        deletes: list[int] = []
        if self.options.mode == "replace":
            seen = self.seen
            deletes = [entry_id for key, (entry_id, _) in self.remote.by_key.items() if key not in seen]
            deletes.extend(self.remote.orphans)
        deletes.extend(self.remote.extra_ids())
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


@dataclass(frozen=True)
class ColumnCheck:
    """What the first source row's columns say about the options that name a column."""

    error: str | None = None  # the primary column is not there: nothing may be sent
    warnings: tuple[str, ...] = ()


def check_columns(columns: Sequence[str], options: DiffOptions, where: str = "the query's result") -> ColumnCheck:
    """Check ``primary_column``, ``timestamp_column`` and ``delete_column`` against the columns of
    the result (``where`` names it for the message).

    Why before the first write: a misspelt key column makes every row keyless, which in replace mode
    turns every entry into an orphan to delete. Column names match exactly (as the rows are read:
    ``case_insensitive_primary_column`` is about the key's values, not the column's name).
    """
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


def _silent(_: str) -> None:
    return None
