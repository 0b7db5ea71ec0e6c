"""The remote entries by normalised key, as compact as the diff allows, built as they stream in.

Why compact: the index is built before the first source row arrives and lives for the whole run, so
it holds no entry's data, only what the diff needs: per entry one ``bytes`` with its id, its layout
(the entry's columns, shared by every entry with the same ones), one 64-bit code per column
(:mod:`.digests`) and its timestamp text. An entry of 5 columns takes ~0.2 KB with its key instead of
~0.6 KB. Entries that do not pack (an id beyond 64 bits, a timestamp that is not text, a value of a
type the codes cannot stand for) are kept as a :class:`Remote`.

Why fast: this runs once per remote entry, a million times on a large data source (issue 9). The
common values (text, small whole numbers) are coded in one comprehension without a call per value;
the key of a text or number is taken as is; the entry is packed by one precompiled ``struct``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from fliplet_workers.core.diff_options import DiffOptions
from fliplet_workers.core.digests import INT_TAG, LOW56, SMALL, Coder
from fliplet_workers.core.rows import Key, gc_paused, is_invalid_key, is_missing_key, normalise_key

_HEAD = struct.Struct("<qI")  # entry id, layout number: the start of a packed entry


@dataclass(frozen=True)
class Layout:
    """The columns of remote entries (in their order, ignored columns left out), shared by every
    entry with the same ones. ``ts_text``: a packed entry ends with its timestamp text (else the
    timestamp is null). ``end``: where a packed entry's codes end."""

    number: int
    columns: tuple[str, ...]
    ts_text: bool
    position: dict[str, int] = field(init=False, compare=False)
    codes: struct.Struct = field(init=False, compare=False)  # the column codes alone
    packed: struct.Struct = field(init=False, compare=False)  # id, layout number, codes
    end: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        count = len(self.columns)
        object.__setattr__(self, "position", {name: i for i, name in enumerate(self.columns)})
        object.__setattr__(self, "codes", struct.Struct(f"<{count}q"))
        object.__setattr__(self, "packed", struct.Struct(f"<qI{count}q"))
        object.__setattr__(self, "end", _HEAD.size + 8 * count)


@dataclass(frozen=True, slots=True)
class Remote:
    """An entry that does not pack: its id and timestamp as they are, its codes packed, and the values
    kept whole (by position) where no code stands for them."""

    entry_id: Any
    timestamp: Any
    layout: Layout
    codes: tuple[int, ...]
    whole: dict[int, Any] = field(default_factory=dict)


#: How the index stores an entry: packed bytes, or a :class:`Remote`.
Stored = bytes | Remote


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
    """The remote entries by normalised key: the oldest entry (lowest id) with each key.

    ``orphans`` are entries no row can match: no key value, or an object/list key. ``shared`` holds,
    for each key that more than one entry has, every one of their ids (see :meth:`duplicates`).
    ``originals``: the key value as the entry holds it, where it is not the normalised key.
    """

    by_key: dict[Key, Stored] = field(default_factory=dict)
    orphans: list[int] = field(default_factory=list)
    shared: dict[Key, list[int]] = field(default_factory=dict)
    count: int = 0
    originals: dict[Key, Any] = field(default_factory=dict)
    layouts: dict[tuple[tuple[Any, ...], bool], Layout] = field(default_factory=dict)
    numbered: list[Layout] = field(default_factory=list)
    coder: Coder = field(default_factory=Coder, repr=False)

    def duplicates(self, column: str) -> list[Duplicate]:
        """The keys held by more than one entry (named as the kept entry's ``column`` holds it)."""
        return [Duplicate(key=self.originals.get(key, key), ids=tuple(sorted(ids)))
                for key, ids in self.shared.items()]

    def extra_ids(self) -> list[int]:
        """Every entry that shares its key with an older one: what healing deletes."""
        return [i for ids in self.shared.values() for i in sorted(ids)[1:]]

    def entry_id(self, stored: Stored) -> int:
        return int(_HEAD.unpack_from(stored)[0]) if type(stored) is bytes else stored.entry_id  # type: ignore[union-attr]

    def entry(self, stored: Stored) -> tuple[int, Any]:
        """The entry's id and timestamp value (None without a timestamp column)."""
        if type(stored) is not bytes:
            return stored.entry_id, stored.timestamp  # type: ignore[union-attr]
        entry_id, number = _HEAD.unpack_from(stored)
        layout = self.numbered[number]
        return entry_id, stored[layout.end:].decode("utf-8", "surrogatepass") if layout.ts_text else None

    def putter(self, options: DiffOptions) -> Callable[[Key, Any, Mapping[str, Any]], None]:
        """``put(key, entry_id, data)``: keep what the diff needs of one entry's (decoded) data under
        ``key``. A closure, with everything it needs bound once: it runs once per remote entry."""
        ignore, ts_col, code = options.ignore_columns, options.timestamp_column, self.coder.code
        by_key, layouts = self.by_key, self.layouts
        last: list[tuple[tuple[Any, ...], bool, Layout | None]] = [((), False, None)]  # the previous entry's

        def put(key: Key, entry_id: Any, data: Mapping[str, Any]) -> None:
            names = tuple(n for n in data if n not in ignore) if ignore else tuple(data)
            values = [data[n] for n in names] if ignore else data.values()
            codes = [hash(v) if type(v) is str else INT_TAG | (v & LOW56) if type(v) is int and -SMALL <= v < SMALL
                     else code(v) for v in values]
            ts = data.get(ts_col) if ts_col else None
            ts_text = type(ts) is str
            last_names, last_text, layout = last[0]
            if layout is None or names != last_names or ts_text is not last_text:
                layout = layouts.get((names, ts_text)) or self._layout(names, ts_text)
                last[0] = (names, ts_text, layout)
            if None not in codes and (ts is None or ts_text) and type(entry_id) is int:
                try:
                    packed = layout.packed.pack(entry_id, layout.number, *codes)
                except struct.error:  # an id beyond 64 bits
                    pass
                else:
                    by_key[key] = packed + ts.encode("utf-8", "surrogatepass") if ts_text else packed  # type: ignore[union-attr]
                    return
            whole = {i: v for i, (v, c) in enumerate(zip(values, codes, strict=True)) if c is None}
            by_key[key] = Remote(entry_id, ts, layout, tuple(c or 0 for c in codes), whole)

        return put

    def _layout(self, names: tuple[Any, ...], ts_text: bool) -> Layout:
        layout = Layout(len(self.numbered), tuple(intern(str(n)) for n in names), ts_text)
        self.layouts[(names, ts_text)] = layout
        self.numbered.append(layout)
        return layout

    def same(self, local: Mapping[str, Any], stored: Stored, ignore: frozenset[str]) -> bool:
        """:func:`~.planner.same_data` of a row against a kept entry: every column the row carries has
        the same value remotely (a column the entry lacks holds null); remote-only columns are not
        compared. Fast when the row has the entry's columns in its order (the usual case)."""
        if type(stored) is bytes:
            layout = self.numbered[_HEAD.unpack_from(stored)[1]]
            codes: Sequence[int] = layout.codes.unpack_from(stored, _HEAD.size)
            whole: dict[int, Any] = {}
        else:
            layout, codes, whole = stored.layout, stored.codes, stored.whole  # type: ignore[union-attr]
        row_code = self.coder.row_code
        names = tuple(n for n in local if n not in ignore) if ignore else tuple(local)
        if not whole and names == layout.columns:
            values = [local[n] for n in names] if ignore else local.values()
            return codes == tuple([hash(v) if type(v) is str else row_code(v) for v in values])
        return _same_by_column(local, layout, codes, whole, ignore, row_code)


def _same_by_column(local: Mapping[str, Any], layout: Layout, codes: Sequence[int], whole: dict[int, Any],
                    ignore: frozenset[str], row_code: Any) -> bool:
    """The comparison column by column (the row's columns are not the entry's, or a value is whole)."""
    position = layout.position
    for name, value in local.items():
        if name in ignore:
            continue
        at = position.get(name)
        if at is None:
            if value is not None:
                return False
        elif at in whole:
            other = whole[at]
            if other != value or (type(other) is bool) is not (type(value) is bool):
                return False
        elif codes[at] != row_code(value):
            return False
    return True


def index_remote(entries: Iterable[Mapping[str, Any]], options: DiffOptions) -> RemoteIndex:
    """Index the remote entries as they stream in. Without a primary column only ids are kept.

    Encrypted fields are decoded here (``options.decode_remote``), once per entry, so the codes are
    of the plaintext the rows are compared with."""
    index = RemoteIndex()
    pk, fold = options.primary_column, options.case_insensitive
    by_key, put, decode = index.by_key, index.putter(options), options.decode_remote
    count = 0
    with gc_paused():
        for entry in entries:
            count += 1
            entry_id = entry["id"]
            data = entry.get("data") or {}
            raw = data.get(pk) if pk is not None else None
            kind = type(raw)
            if kind is int or (kind is str and raw and not fold):
                key = raw
            elif pk is None or is_missing_key(raw) or is_invalid_key(raw):
                index.orphans.append(entry_id)
                continue
            else:
                key = normalise_key(raw, fold)
            kept = by_key.get(key)
            if kept is not None:
                kept_id = index.entry_id(kept)
                index.shared.setdefault(key, [kept_id]).append(entry_id)
                if kept_id < entry_id:
                    continue  # the older entry stays the one rows are matched with
                index.originals.pop(key, None)
            if raw is not key and (type(raw) is not type(key) or raw != key):
                index.originals[key] = raw
            put(key, entry_id, decode(dict(data)) if decode is not None else data)
    index.count = count
    return index


__all__ = ["Duplicate", "Layout", "Remote", "RemoteIndex", "Stored", "index_remote"]
