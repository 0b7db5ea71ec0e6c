"""Judge source rows one at a time, as they stream in, against the index of the remote entries.

Why one at a time: rows are never all held in memory, and a caller can start committing the first
batches while the source is still being read (see :mod:`.batches` and ``pipeline/plan.py``). What
the plan amounts to is counted in a :class:`Tally` that does not grow with the rows.

Why the hot path looks the way it does: at the default verbosity a re-run of a million rows spends
as long judging rows as reading them (issue 9), so a row whose key is text or a number takes no call
to normalise it, an entry is unpacked only as far as its id and timestamp unless the content must be
compared, and a row's :class:`~.rows.LocalRow` is made only when it is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fliplet_workers.core.diff_options import DiffOptions, Note
from fliplet_workers.core.remote_index import RemoteIndex, Stored, index_remote
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
        #: ``note.lines(*messages)``, where the note has it: several lines in one call.
        self.say_lines: Callable[..., None] | None = getattr(note, "lines", None)
        self.seen: set[Key] = set()
        self.number = 0
        self.tally = Tally(remote=remote.count)

    def add(self, source_row: Mapping[str, Any]) -> Change | None:
        self.number = number = self.number + 1
        self.tally.rows = number
        options = self.options
        data = normalise_row(source_row)
        deleted = is_flagged(data.get(options.delete_column)) if options.delete_column else False
        pk = options.primary_column
        if pk is None:
            return self._keyless(data, deleted)
        raw = data.get(pk)
        kind = type(raw)
        if kind is int or (kind is str and raw and not options.case_insensitive):
            key = raw  # the usual keys, as normalise_key would leave them
        else:
            key = self._odd_key(raw, data, pk)
            if key is None:
                return None
        if key in self.seen:
            self.tally.skips.append(Skip("duplicate_key", f"Row {number} has the same primary key {raw!r} "
                                         f"as an earlier row ({pk!r}). Skipping: {brief(data)}"))
            return None
        self.seen.add(key)
        stored = self.remote.by_key.get(key)
        if stored is None:
            return self._absent(data, raw, deleted)
        return self._judge(data, raw, deleted, stored)

    def _keyless(self, data: dict[str, Any], deleted: bool) -> Change | None:
        if deleted:
            self.tally.absent_deleted += 1
            return None
        self.tally.insert += 1
        if self.verbose:
            self.say(f"Row {self.number} has been marked for inserting since we don't have a primary key "
                     "for the comparison.")
        return Change("insert", LocalRow(data=data, deleted=deleted))

    def _odd_key(self, raw: Any, data: dict[str, Any], pk: str) -> Key | None:
        """The key of a row whose key value is not plain text or a whole number; None (the row
        skipped, and why counted) when it is missing or cannot identify a row."""
        if is_missing_key(raw):
            self.tally.skips.append(Skip("missing_key", "A row is missing its primary key value from the "
                                         f"database. Skipping: (row {self.number}) {brief(data)}"))
            return None
        if is_invalid_key(raw):
            kind = "an object" if isinstance(raw, dict) else "a list"
            self.tally.skips.append(Skip("invalid_key", f"Row {self.number} has {kind} as its primary key value "
                                         f"({pk!r}), which cannot identify a row. Skipping: {brief(data)}"))
            return None
        return normalise_key(raw, self.options.case_insensitive)

    def _absent(self, data: dict[str, Any], raw: Any, deleted: bool) -> Change | None:
        """A row no remote entry has: insert it, unless it is flagged deleted."""
        if deleted:
            self.tally.absent_deleted += 1
            if self.verbose:
                self.say(f"Row {raw} is not present on Fliplet servers and it's locally marked as deleted. "
                         "Skipping...")
            return None
        self.tally.insert += 1
        if self.verbose:
            self.say(f"Row {raw} has been marked for inserting.")
        return Change("insert", LocalRow(data=data, raw_key=raw, deleted=deleted))

    def _judge(self, data: dict[str, Any], raw: Any, deleted: bool, stored: Stored) -> Change | None:
        """A row that exists remotely: delete, update or leave it (and say so in two lines)."""
        entry_id, remote_ts = self.remote.entry(stored)
        if deleted:
            self.tally.delete += 1
            self._say_two(raw, entry_id, f"Row {raw} has been marked for deletion on Fliplet servers with ID {entry_id}.")
            return Change("delete", entry_id=entry_id)
        if self._changed(data, remote_ts, stored):
            self.tally.update += 1
            self._say_two(raw, entry_id, f"Row {raw} has been marked for updating.")
            return Change("update", LocalRow(data=data, raw_key=raw, deleted=deleted), entry_id)
        self.tally.unchanged += 1
        if self.say_lines is not None:  # the usual line of a re-run at debug: as direct as it gets
            first = f"Row {raw} already exists on Fliplet servers with ID {entry_id}"
            self.say_lines(first, first + " and does not require updating.")
        elif self.verbose:
            first = f"Row {raw} already exists on Fliplet servers with ID {entry_id}"
            self._say_lines(first, first + " and does not require updating.")
        return None

    def _changed(self, data: dict[str, Any], remote_ts: Any, stored: Stored) -> bool:
        """The timestamps decide when both can be read; else the data itself is compared."""
        ts_col = self.options.timestamp_column
        if ts_col:
            local_value = data.get(ts_col)
            if local_value == remote_ts and _looks_like_time(local_value):
                return False  # identical timestamps: no need to parse
            local_ts, remote_seconds = timestamp_seconds(local_value), timestamp_seconds(remote_ts)
            if local_ts is not None and remote_seconds is not None:
                return local_ts != remote_seconds
        return not self.remote.same(data, stored, self.options.ignore_columns)

    def _say_two(self, raw: Any, entry_id: int, second: str) -> None:
        if self.verbose:
            self._say_lines(f"Row {raw} already exists on Fliplet servers with ID {entry_id}", second)

    def _say_lines(self, first: str, second: str) -> None:
        """Two lines about one row: in one call when the note can take several (the agent's log,
        whose cost per call is most of a debug run's extra time), else one call each."""
        if self.say_lines is not None:
            self.say_lines(first, second)
        else:
            self.say(first)
            self.say(second)

    def finish(self) -> list[int]:
        """The deletes known only at the end: in replace mode every entry no row matched; in both
        modes every entry that shares its key with an older one (healing duplicates)."""
        deletes: list[int] = []
        remote = self.remote
        if self.options.mode == "replace":
            seen = self.seen
            deletes = [remote.entry_id(kept) for key, kept in remote.by_key.items() if key not in seen]
            deletes.extend(remote.orphans)
        deletes.extend(remote.extra_ids())
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


def _silent(_: str) -> None:
    return None
