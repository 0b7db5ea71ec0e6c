"""Incremental reads: read only the rows newer than the watermark, look up only their keys.

An operation with ``incremental: true`` runs in one of two ways, decided by :func:`begin`:

* **full** (the first run, ``start --full``, ``full_refresh`` due, another data source): exactly
  the normal push (every row read, every remote entry downloaded and compared), while the highest
  timestamp read is noted;
* **incremental**: the source returns only rows whose timestamp is after the watermark (the
  SQL query wrapped, or its own ``:watermark``; a code source given ``watermark=``). Those rows are
  read first (:func:`read_and_look_up`), then only their keys are looked up on Fliplet
  (``data/query`` with ``$in``, :data:`~fliplet_workers.fliplet.lookups.LOOKUP_CHUNK` keys per request)
  and the diff runs against the entries found. Nothing else is downloaded.

``>`` rather than ``>=``: with ``>=`` every row sharing the watermark's timestamp would be read and
looked up again on every run (after a bulk load, all of them). The price: a row written after a run
with a timestamp equal to that run's watermark is not read until a full comparison.

The watermark moves only when a run ended ok (every batch committed): :func:`finish` in the
foreground, the fleet's finalize step for a fanned-out run. The new value is the highest timestamp
the run read (a full run: of every row; an incremental run: never below the previous one).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fliplet_workers.core.diff import DiffOptions, index_remote
from fliplet_workers.core.remote_index import RemoteIndex
from fliplet_workers.core.rows import is_invalid_key, is_missing_key
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.cron import schedule_timezone
from fliplet_workers.pipeline.marks import Mark, decode, encode, full_reason, shown, utc_now
from fliplet_workers.pipeline.spec import Resources, RunSpec

__all__ = ["Candidate", "Increment", "begin", "finish", "read_and_look_up"]


@dataclass(frozen=True)
class Candidate:
    """What a run would make the new watermark, if it ends ok: kept in Redis by the fleet until its
    finalize step knows the outcome (:meth:`to_json`)."""

    datasource_id: int
    highest: Any  # the highest timestamp read (None: no row had one)
    full: bool
    previous: Mark | None
    remote: int | None = None  # a full run: the data source's entries before it

    def mark(self, summary: RunSummary, now: dt.datetime | None = None) -> Mark:
        """The watermark after a run that ended ok with ``summary``."""
        now = now or utc_now()
        previous = self.previous if self.previous is not None and \
            self.previous.datasource_id == self.datasource_id else None
        value = self.highest
        if not self.full and previous is not None and previous.value is not None:
            value = previous.value if value is None or not _greater(value, previous.value) else value
        elif value is None and previous is not None:
            value = previous.value
        change = summary.inserted - summary.deleted
        base = self.remote if self.full else (None if previous is None else previous.entries)
        entries = None if base is None else max(0, base + change)
        return Mark(value=value, datasource_id=self.datasource_id, entries=entries,
                    full_at=now.isoformat() if self.full else (previous.full_at if previous else None),
                    updated_at=now.isoformat())

    def to_json(self) -> dict[str, Any]:
        return {"datasourceId": self.datasource_id, "highest": encode(self.highest), "full": self.full,
                "previous": self.previous.to_json() if self.previous is not None else None, "remote": self.remote}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Candidate:
        return cls(datasource_id=int(doc["datasourceId"]), highest=decode(doc.get("highest")),
                   full=bool(doc.get("full")), previous=Mark.from_json(doc.get("previous")),
                   remote=doc["remote"] if isinstance(doc.get("remote"), int) else None)


def _greater(a: Any, b: Any) -> bool:
    try:
        return bool(a > b)
    except TypeError:  # e.g. a naive and an aware datetime: keep what we have
        return False


@dataclass
class Increment:
    """One run of an incremental operation: what it reads from (``since``: None reads every row),
    whether it compares everything, and the highest timestamp seen so far."""

    column: str
    since: Any
    full: bool
    previous: Mark | None
    datasource_id: int
    highest: Any = None
    remote: int | None = None  # a full run: the entries downloaded
    #: Called once the source has been read to the end (the fleet keeps the candidate in Redis).
    on_read: Callable[[Candidate], None] | None = None

    def see(self, row: Mapping[str, Any]) -> None:
        value = row.get(self.column)
        if value is not None and not isinstance(value, bool) and (self.highest is None or _greater(value,
                                                                                                   self.highest)):
            self.highest = value

    def watch(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """``rows``, noting the highest timestamp (a full run's: every row passes here, so the test is
        inlined; the result is kept once the rows are read to the end)."""
        column, highest = self.column, self.highest
        for row in rows:
            value = row.get(column)
            if value is not None and value.__class__ is not bool:
                try:
                    if highest is None or value > highest:
                        highest = value
                except TypeError:  # not comparable with the highest so far (e.g. naive vs aware): skipped
                    pass
            yield row
        self.highest = highest

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.datasource_id, self.highest, self.full, self.previous, self.remote)

    def read_to_end(self) -> None:
        if self.on_read is not None:
            self.on_read(self.candidate)

    @property
    def entries(self) -> int | None:
        """The data source's entries as the last run left them (the delete guard's base when only some
        entries are looked up), if known."""
        return self.previous.entries if self.previous is not None and not self.full else None


def begin(spec: RunSpec, res: Resources, *, forced: bool = False) -> Increment | None:
    """The increment of this run of an incremental operation (None for any other operation)."""
    op = spec.op
    if not op.incremental or op.timestamp_column is None or op.type != "push":
        return None
    previous = res.marks.load(spec.config.path, spec.index, op.datasource_id) if res.marks is not None else None
    why = full_reason(op, previous, forced=forced or spec.full, tz=schedule_timezone(spec.config.timezone))
    if why is not None:
        res.log.info(f"Incremental operation: comparing every row this time ({why}).")
        return Increment(op.timestamp_column, None, True, previous, op.datasource_id)
    assert previous is not None
    res.log.info(f"Incremental operation: reading the rows whose {op.timestamp_column} is after "
                 f"{shown(previous.value)} (the watermark).")
    return Increment(op.timestamp_column, previous.value, False, previous, op.datasource_id)


def finish(spec: RunSpec, res: Resources, increment: Increment | None, summary: RunSummary) -> None:
    """Advance the watermark after a run that ended ok (never after a failure or a dry run)."""
    if increment is None or res.marks is None or summary.dry_run or not summary.ok:
        if increment is not None and not summary.ok and not summary.dry_run:
            res.log.warning("The watermark was not advanced: the run did not end ok, so the next run reads "
                            "these rows again.")
        return
    mark = increment.candidate.mark(summary)
    res.marks.save(spec.config.path, spec.index, mark)
    if mark.value is not None:
        res.log.debug(f"The watermark is now {shown(mark.value)}.")


def read_and_look_up(spec: RunSpec, res: Resources, increment: Increment, rows: Iterable[Mapping[str, Any]],
                     options: DiffOptions) -> tuple[list[Mapping[str, Any]], RemoteIndex]:
    """Read the (newer) rows to the end, then look up their keys: the rows, and the index of the
    entries found."""
    op = spec.op
    assert op.primary_column is not None
    pk = op.primary_column
    read: list[Mapping[str, Any]] = []
    keys: dict[tuple[type, Any], Any] = {}
    for row in rows:
        increment.see(row)
        read.append(row)
        key = row.get(pk)
        if not is_missing_key(key) and not is_invalid_key(key):
            keys.setdefault((type(key), key), key)
    res.log.debug("Successfully fetched data from the source.")
    res.log.info(f"Looking up {len(keys)} key(s) of {len(read)} newer row(s) via Fliplet API...")
    remote = index_remote(res.api.find_entries(op.datasource_id, pk, list(keys.values())), options)
    if res.log.isEnabledFor(logging.DEBUG):
        res.log.debug(f"Found {remote.count} entries for those keys in the data source.")
    return read, remote
