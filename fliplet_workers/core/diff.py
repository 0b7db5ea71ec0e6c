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
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
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


DIGEST_SIZE = 8  # bytes per column value: 64 bits of BLAKE2b (see :meth:`RemoteIndex.digest`)
_HEAD = struct.Struct("<qI")  # entry id, layout number: the start of a packed entry
_INT64 = range(-2**63, 2**63)
_LENGTHS = [bytes((n,)) for n in range(DIGEST_SIZE)]

#: The value types a digest stands for exactly (their equality is the diff's; see :func:`_canonical`).
_DIGESTED = frozenset({str, int, float, bool, type(None), dict, list})


@dataclass(frozen=True)
class Layout:
    """The columns of remote entries (in their order, ignored columns left out), shared by every
    entry with the same ones. ``kept`` are the positions whose value is kept whole rather than
    digested: values of other types than JSON's (a decoder's ``Plaintext``, with its own equality).
    ``ts_text``: the packed entry ends with its timestamp text (else the timestamp is null)."""

    number: int
    columns: tuple[str, ...]
    kept: tuple[int, ...] = ()
    ts_text: bool = False
    position: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.position.update((name, i) for i, name in enumerate(self.columns))


@dataclass(frozen=True, slots=True)
class Remote:
    """One remote entry as the diff sees it (unpacked from the index when a row matches it)."""

    entry_id: int
    timestamp: Any  # the value of the timestamp column (None without one)
    layout: Layout
    digests: bytes
    whole: tuple[Any, ...] | None = None  # the values at ``layout.kept``


#: How the index stores an entry: packed bytes (id, layout, digests, timestamp text), or a
#: :class:`Remote` when something does not pack (an id beyond 64 bits, a non-text timestamp…).
Stored = bytes | Remote


@dataclass
class RemoteIndex:
    """The remote entries by normalised key: the oldest entry (lowest id) with each key.

    Why digests: the index is built before the first source row arrives and lives for the whole run,
    so it holds no entry's data, only what the diff needs: the id, the timestamp value and, per
    column, 64 bits of BLAKE2b of the value's canonical form (:func:`_canonical`) salted with a
    random secret of this index, compared with the digest of the row's value. Packed in one
    ``bytes`` an entry of 5 columns takes ~0.2 KB with its key instead of ~0.6 KB. A collision (two
    different values, the same 64 bits) has a chance of 2**-64 per compared value; the salt makes
    the digests mean nothing outside this process.

    ``orphans`` are entries no row can match: no key value, or an object/list key. ``shared`` holds,
    for each key that more than one entry has, every one of their ids (see :meth:`duplicates`).
    ``originals``: the key value as the entry holds it, where it is not the normalised key.
    """

    by_key: dict[Key, Stored] = field(default_factory=dict)
    orphans: list[int] = field(default_factory=list)
    shared: dict[Key, list[int]] = field(default_factory=dict)
    count: int = 0
    originals: dict[Key, Any] = field(default_factory=dict)
    layouts: dict[tuple[tuple[Any, ...], tuple[int, ...], bool], Layout] = field(default_factory=dict)
    numbered: list[Layout] = field(default_factory=list)
    secret: bytes = field(default_factory=lambda: os.urandom(16), repr=False)

    def duplicates(self, column: str) -> list[Duplicate]:
        """The keys held by more than one entry (named as the kept entry's ``column`` holds it)."""
        return [Duplicate(key=self.originals.get(key, key), ids=tuple(sorted(ids)))
                for key, ids in self.shared.items()]

    def extra_ids(self) -> list[int]:
        """Every entry that shares its key with an older one: what healing deletes."""
        return [i for ids in self.shared.values() for i in sorted(ids)[1:]]

    def entry_id(self, stored: Stored) -> int:
        return stored.entry_id if isinstance(stored, Remote) else int(_HEAD.unpack_from(stored)[0])

    def digest(self, value: Any) -> bytes:
        """The digest of one value: equal digests for values the diff holds equal. A value whose
        canonical form is shorter than a digest is kept as it is (padded, its length last): exact,
        and no hash to compute for small numbers, booleans, null and short text."""
        canonical = b"s" + value.encode("utf-8", "surrogatepass") if type(value) is str else _canonical(value)
        if len(canonical) < DIGEST_SIZE:
            return canonical.ljust(DIGEST_SIZE - 1, b"\0") + _LENGTHS[len(canonical)]
        return blake2b(self.secret + canonical, digest_size=DIGEST_SIZE).digest()

    def put(self, key: Key, raw_key: Any, entry_id: int, data: Mapping[str, Any], options: DiffOptions) -> None:
        """Keep what the diff needs of one entry's (decoded) data under ``key``: one pass over its
        columns (this runs once per remote entry, a million times on a large data source)."""
        ignore = options.ignore_columns
        digest = self.digest
        digested = _DIGESTED
        parts: list[bytes] = []
        kept: list[int] = []
        for name, value in data.items():
            if name in ignore:
                continue
            if type(value) in digested:
                parts.append(digest(value))
            else:
                kept.append(len(parts))
                parts.append(bytes(DIGEST_SIZE))
        ts_col = options.timestamp_column
        ts = data.get(ts_col) if ts_col else None
        ts_text = type(ts) is str
        shape = (tuple(data), tuple(kept), ts_text)
        layout = self.layouts.get(shape)
        if layout is None:
            columns = tuple(intern(str(name)) for name in data if name not in ignore)
            layout = self.layouts[shape] = Layout(len(self.numbered), columns, shape[1], ts_text)
            self.numbered.append(layout)
        digests = b"".join(parts)
        if kept or (ts is not None and not ts_text) or type(entry_id) is not int or entry_id not in _INT64:
            whole = tuple(data[layout.columns[i]] for i in kept) if kept else None
            self.by_key[key] = Remote(entry_id, ts, layout, digests, whole)
        else:
            tail = ts.encode("utf-8", "surrogatepass") if isinstance(ts, str) else b""
            self.by_key[key] = _HEAD.pack(entry_id, layout.number) + digests + tail
        if raw_key is not key and (type(raw_key) is not type(key) or raw_key != key):
            self.originals[key] = raw_key
        else:
            self.originals.pop(key, None)

    def get(self, key: Key) -> Remote | None:
        """The entry kept under ``key``, unpacked."""
        stored = self.by_key.get(key)
        if stored is None or isinstance(stored, Remote):
            return stored
        entry_id, number = _HEAD.unpack_from(stored)
        layout = self.numbered[number]
        end = _HEAD.size + DIGEST_SIZE * len(layout.columns)
        ts = stored[end:].decode("utf-8", "surrogatepass") if layout.ts_text else None
        return Remote(entry_id, ts, layout, stored[_HEAD.size:end])

    def same(self, local: Mapping[str, Any], remote: Remote, ignore: frozenset[str]) -> bool:
        """:func:`same_data` of a row against a kept entry: every column the row carries has the same
        value remotely (a column the entry lacks holds null); remote-only columns are not compared."""
        layout, digests, whole = remote.layout, remote.digests, remote.whole
        position = layout.position
        digest = self.digest
        for name, value in local.items():
            if name in ignore:
                continue
            at = position.get(name)
            if at is None:
                if value is not None:
                    return False
                continue
            if whole is not None and at in layout.kept:
                other = whole[layout.kept.index(at)]
                if other != value or (type(other) is bool) is not (type(value) is bool):
                    return False
                continue
            if digests[at * DIGEST_SIZE:(at + 1) * DIGEST_SIZE] != digest(value):
                return False
        return True


def index_remote(entries: Iterable[Mapping[str, Any]], options: DiffOptions) -> RemoteIndex:
    """Index the remote entries as they stream in. Without a primary column only ids are kept.

    Encrypted fields are decoded here (``options.decode_remote``), once per entry, so the digests are
    of the plaintext the rows are compared with."""
    index = RemoteIndex()
    pk = options.primary_column
    by_key = index.by_key
    decode = options.decode_remote
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
                kept_id = index.entry_id(kept)
                index.shared.setdefault(key, [kept_id]).append(entry_id)
                if kept_id < entry_id:
                    continue  # the older entry stays the one rows are matched with
            index.put(key, raw, entry_id, decode(dict(data)) if decode is not None else data, options)
    return index


def _canonical(value: Any) -> bytes:
    """Bytes that are equal exactly when the diff holds two values equal (``same_data``): text,
    whole numbers (``1`` and ``1.0`` alike, as in JavaScript), fractional numbers (``repr`` is exact),
    ``true``/``false`` apart from numbers, null; objects and lists as canonical JSON (keys sorted,
    whole floats as ints). NaN equals nothing, so it gets bytes that match no other value."""
    kind = type(value)
    if kind is str:
        return b"s" + value.encode("utf-8", "surrogatepass")
    if kind is int:
        return b"i" + value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    if value is None:
        return b"n"
    if kind is bool:
        return b"t" if value else b"f"
    if kind is float:
        if value.is_integer():
            return _canonical(int(value))
        if value != value:
            return b"x" + os.urandom(16)
        return b"d" + repr(value).encode()
    if isinstance(value, str):
        return b"s" + str(value).encode("utf-8", "surrogatepass")
    return b"j" + json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                             default=str).encode("utf-8", "surrogatepass")


def _plain(value: Any) -> Any:
    """A nested value with whole floats as ints (``{"a": 1.0}`` equals ``{"a": 1}``)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
        found = self.remote.get(key)
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
        return self._judge(row, found)

    def _judge(self, row: LocalRow, remote: Remote) -> Change | None:
        """A row that exists remotely: delete, update or leave it."""
        entry_id = remote.entry_id
        say = self.say if self.verbose else None
        if say:
            say(f"Row {row.raw_key} already exists on Fliplet servers with ID {entry_id}")
        if row.deleted:
            self.tally.delete += 1
            if say:
                say(f"Row {row.raw_key} has been marked for deletion on Fliplet servers with ID {entry_id}.")
            return Change("delete", entry_id=entry_id)
        options = self.options
        changed: bool | None = None
        ts_col = options.timestamp_column
        if ts_col:
            local_value, remote_value = row.data.get(ts_col), remote.timestamp
            if local_value == remote_value and _looks_like_time(local_value):
                changed = False  # identical timestamps: no need to parse
            else:
                local_ts, remote_ts = timestamp_seconds(local_value), timestamp_seconds(remote_value)
                if local_ts is not None and remote_ts is not None:
                    changed = local_ts != remote_ts
        if changed is None:  # no timestamp decides: compare the data itself
            changed = not self.remote.same(row.data, remote, options.ignore_columns)
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
            remote = self.remote
            deletes = [remote.entry_id(kept) for key, kept in remote.by_key.items() if key not in seen]
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
