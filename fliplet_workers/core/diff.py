"""The diff: one pure function from (local rows, remote entries, options) to a plan.

It makes the original agent's decisions (see ``shared/fliplet-api.md``) in one pass over the remote
entries against a hash map of the local rows, so it is linear in rows + entries; the original scans
every entry for every row. Remote entries arrive as an iterator and are dropped as soon as they are
judged, so a million entries never sit in memory at once.

Deliberate improvements over the original, each documented in the README:

* a key of ``0`` is a key (see ``rows.is_missing_key``);
* an existing entry is updated only if its data differs from the row whenever no timestamp decides
  (no timestamp column, a timestamp that cannot be read, or replace mode without timestamps), so a
  re-run with nothing changed sends no commit at all;
* in replace mode a second remote entry with the same key as an earlier one is deleted, so the data
  source ends up equal to the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fliplet_workers.core.rows import (
    Key,
    LocalRow,
    LocalSet,
    Skip,
    gc_paused,
    normalise_key,
    timestamp_seconds,
)

Note = Callable[[str], None]


@dataclass(frozen=True)
class DiffOptions:
    primary_column: str | None
    case_insensitive: bool = False
    timestamp_column: str | None = None
    mode: str = "update"  # "update" keeps orphans, "replace" deletes them
    #: Columns left out of the content comparison (file columns: the remote holds the Fliplet URL).
    ignore_columns: frozenset[str] = frozenset()
    #: Turns a remote entry's data back into comparable plaintext (decrypts encrypted fields).
    decode_remote: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclass
class Plan:
    """What one run will send. ``updates`` pair the remote entry id with the local row."""

    inserts: list[LocalRow] = field(default_factory=list)
    updates: list[tuple[int, LocalRow]] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    unchanged: int = 0
    absent_deleted: int = 0  # rows flagged deleted locally that are not on Fliplet either
    remote_count: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.inserts or self.updates or self.deletes)

    def counts(self) -> dict[str, int]:
        return {
            "insert": len(self.inserts),
            "update": len(self.updates),
            "delete": len(self.deletes),
            "unchanged": self.unchanged,
            "skipped": len(self.skips),
            "remote": self.remote_count,
        }


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


def diff(
    local: LocalSet,
    remote: Iterable[Mapping[str, Any]],
    options: DiffOptions,
    note: Note | None = None,
) -> Plan:
    """Decide, for every local row and remote entry, whether to insert, update, delete or skip."""
    with gc_paused():
        return _diff(local, remote, options, note)


def _diff(local: LocalSet, remote: Iterable[Mapping[str, Any]], options: DiffOptions, note: Note | None) -> Plan:
    plan = Plan(skips=list(local.skips))
    say = note or _silent

    if options.primary_column is None:
        plan.inserts.extend(local.unkeyed)
        if note:
            for number, _ in enumerate(local.unkeyed, start=1):
                say(f"Row {number} has been marked for inserting since we don't have a primary key for the comparison.")
        if options.mode == "replace":
            for entry in remote:
                plan.remote_count += 1
                plan.deletes.append(entry["id"])
        else:
            for _ in remote:
                plan.remote_count += 1
        return plan

    matched: set[Key] = set()
    pk = options.primary_column
    for entry in remote:
        plan.remote_count += 1
        data = entry.get("data") or {}
        raw = data.get(pk)
        key = normalise_key(raw, options.case_insensitive)
        found = local.keyed.get(key) if _hashable(key) else None
        if found is None or key in matched:
            if options.mode == "replace":
                plan.deletes.append(entry["id"])
            continue
        matched.add(key)
        _judge(plan, found, entry["id"], data, options, say)

    for key, row in local.keyed.items():
        if key in matched:
            continue
        if row.deleted:
            plan.absent_deleted += 1
            say(f"Row {row.raw_key} is not present on Fliplet servers and it's locally marked as deleted. Skipping...")
        else:
            plan.inserts.append(row)
            say(f"Row {row.raw_key} has been marked for inserting.")
    return plan


def _judge(plan: Plan, row: LocalRow, entry_id: int, data: Mapping[str, Any], options: DiffOptions, say: Note) -> None:
    """A local row that exists remotely: delete, update or leave it."""
    say(f"Row {row.raw_key} already exists on Fliplet servers with ID {entry_id}")
    if row.deleted:
        plan.deletes.append(entry_id)
        say(f"Row {row.raw_key} has been marked for deletion on Fliplet servers with ID {entry_id}.")
        return
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
        plan.updates.append((entry_id, row))
        say(f"Row {row.raw_key} has been marked for updating.")
    else:
        plan.unchanged += 1
        say(f"Row {row.raw_key} already exists on Fliplet servers with ID {entry_id} and does not require updating.")


def _looks_like_time(value: Any) -> bool:
    """Cheap test (no parsing) that a timestamp value is an ISO date-time or a number."""
    if isinstance(value, str):
        return len(value) >= 10 and value[4] == "-" and value[7] == "-" and value[:4].isdigit()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hashable(key: Any) -> bool:
    return not isinstance(key, (dict, list))


def _silent(_: str) -> None:
    return None
