"""After a commit got no answer: which of the batch's rows did the server apply?

Why its own module: this is the part of committing without duplicates that asks the remote, and
the rule for when its answer can be believed (:func:`settle`) is the subtle one: a server may still be
applying a commit when the first lookup arrives. :mod:`.retry` decides when to ask; this module asks,
waits and names what was applied. Pure: the lookups are passed in as functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fliplet_workers.core.batches import Batch, Entry
from fliplet_workers.errors import AccessError, ApiError, AuthError

if TYPE_CHECKING:
    from fliplet_workers.core.retry import RetryPolicy

FindExisting = Callable[[list[Any]], Iterable[Any]]
#: Given update entries (wire form ``{"id", "data"}``), the ids of those whose data the remote already holds.
FindUpdated = Callable[[list[dict[str, Any]]], Iterable[Any]]
Log = Callable[[str, str], None]  # (level, message)


class LookupFailed(Exception):
    """The lookup after an unknown outcome could not be answered (after its retries)."""


@dataclass
class Clock:
    sleep: Callable[[float], None]
    now: Callable[[], float]


@dataclass(frozen=True)
class Lookup:
    """The two questions asked of the remote after an unknown outcome."""

    find_existing: FindExisting | None
    find_updated: FindUpdated | None

    def inserts_checkable(self, batch: Batch) -> bool:
        return self.find_existing is not None and all(e.key is not None for e in batch.entries if e.is_insert)

    def can_check(self, batch: Batch) -> bool:
        """Whether the batch can be checked: it has entries, every insert has a key to look up, and
        there is something to look up (updates that cannot be looked up are simply sent again)."""
        if batch.inserts:
            return self.inserts_checkable(batch)
        return batch.updates > 0 and self.find_updated is not None


def settle(batch: Batch, lookup: Lookup, policy: RetryPolicy, unknown_since: float, timer: Clock,
            say: Log) -> set[Any]:
    """Which of ``batch``'s entries the server has applied, once that answer can be believed.

    Entries are named by their mark (:func:`_marks`): the insert's key, the update's entry id.
    The rule: the lookup (``data/query`` with ``$in`` on the primary column) is repeated, with the
    policy's backoff, until

    * it finds **every** entry applied: nothing is left to send (no need to wait any longer); or
    * the lookup was sent at least ``policy.settle`` seconds after the outcome became unknown (the
      server has had as long again as we waited for its answer, plus a margin: see ``settle_time``)
      **and** it found the same entries as the lookup before it (the server is not in the middle of
      applying the batch).

    Updates are held to the same rule although sending one again is harmless: against a server that
    is slower than the timeout on every commit, a needless re-send would only go unanswered again.

    Waits before the settle deadline are cut so that a lookup falls on the deadline itself. If after
    the deadline the answer still changes from one lookup to the next ``policy.retries`` times, the
    batch fails (something else writes these keys). Each lookup is retried like a commit: 5xx, 408,
    429, timeouts and dropped connections wait and try again, ``policy.retries`` times; after that,
    or on any other error, :class:`LookupFailed` ends the batch: never re-send an insert on a guess.
    """
    wanted = _marks(batch, lookup)
    deadline = unknown_since + policy.settle
    previous: set[Any] | None = None
    polls = unsettled = 0
    while True:
        asked_at = timer.now()
        found = _ask(batch, lookup, policy, timer, say) & wanted
        if found == wanted:
            return found
        if asked_at >= deadline:
            if found == previous:
                return found
            unsettled += 1
            if unsettled > policy.retries + 1:
                raise LookupFailed("the rows found kept changing from one lookup to the next")
        previous = found
        polls += 1
        wait = policy.wait(polls)
        now = timer.now()
        if now < deadline:
            wait = min(wait, deadline - now)
        timer.sleep(max(0.0, wait))


def _ask(batch: Batch, lookup: Lookup, policy: RetryPolicy, timer: Clock, say: Log) -> set[Any]:
    """One lookup of the batch's inserts and updates, each retried with backoff like a commit."""
    found: set[Any] = set()
    if batch.inserts and lookup.find_existing is not None:
        keys = list(batch.insert_keys)
        find_existing = lookup.find_existing
        found |= {("key", hashable(k)) for k in _retried(batch.number, lambda: find_existing(keys), policy, timer, say)}
    updates = [e.wire() for e in batch.entries if not e.is_insert]
    if updates and lookup.find_updated is not None:
        find_updated = lookup.find_updated
        found |= {("id", i) for i in _retried(batch.number, lambda: find_updated(updates), policy, timer, say)}
    return found


def _retried(number: int, ask: Callable[[], Iterable[Any]], policy: RetryPolicy, timer: Clock,
             say: Log) -> list[Any]:
    failures = 0
    while True:
        try:
            return list(ask())
        except (AuthError, AccessError):
            raise
        except ApiError as error:
            failures += 1
            retryable = error.kind in ("retry", "unknown")
            if not retryable or failures > policy.retries:
                raise LookupFailed(error.message) from None
            wait = policy.wait(failures)
            say("warning", f"Batch {number}: checking which rows the server already has failed ({error.message}). "
                           f"Retrying in {wait:g} seconds (retry {failures} of {policy.retries}).")
            timer.sleep(wait)


def _marks(batch: Batch, lookup: Lookup) -> set[Any]:
    """What names each entry that can be looked up: ("key", insert key) or ("id", entry id)."""
    marks = {("key", hashable(k)) for k in batch.insert_keys}
    if lookup.find_updated is not None:
        marks |= {("id", e.remote_id) for e in batch.entries if not e.is_insert}
    return marks


def drop_applied(batch: Batch, found: set[Any]) -> tuple[Batch, list[Entry]]:
    """``batch`` without the entries whose mark is in ``found``, and those entries."""
    if not found:
        return batch, []
    keep: list[Entry] = []
    applied: list[Entry] = []
    for entry in batch.entries:
        if entry.is_insert:
            mark = ("key", hashable(entry.key)) if entry.key is not None else None
        else:
            mark = ("id", entry.remote_id)
        (applied if mark is not None and mark in found else keep).append(entry)
    return batch.with_entries(keep), applied


def hashable(value: Any) -> Any:
    """A looked-up key as a set member, typed like the diff's keys: ``true`` is not ``1`` (Python hashes
    ``True == 1``), so booleans are tagged; objects and lists (never valid keys) by their text."""
    if type(value) is bool:
        return (bool, value)
    return value if not isinstance(value, (dict, list)) else repr(value)
