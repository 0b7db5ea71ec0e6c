"""Commit one batch with retries that never duplicate inserts.

The rules (the original re-sends the identical body, so a commit whose answer was lost inserts
its rows twice):

* an answer of 5xx, 408 or 429 means the commit was not applied: wait (exponential backoff) and
  send it again;
* no answer (timeout, dropped connection) means it *may* have been applied, or may still be being
  applied by a server slower than our timeout: before sending again, give the server time to finish
  and ask it which of the batch's new keys exist (see :func:`_settle` for the exact rule), then drop
  those inserts; updates whose data the remote already holds are dropped too (updates and deletes
  are idempotent: sending them again is harmless, only useless);
* 400/413/422 mean the server refuses something in the batch: split it in halves and send each, down
  to a single entry, so that one bad row is skipped and reported, never the whole batch;
* 401/403 stop the run (nothing else would pass either).

Sending and looking up are passed in as functions, so this module stays free of HTTP and Celery and
both the foreground agent and the fleet use it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fliplet_workers.core.batches import Batch
from fliplet_workers.errors import AccessError, ApiError, AuthError

Send = Callable[[Batch], None]
FindExisting = Callable[[list[Any]], Iterable[Any]]
#: Given update entries (``{"id", "data"}``), the ids of those whose data the remote already holds.
FindUpdated = Callable[[list[dict[str, Any]]], Iterable[Any]]
Log = Callable[[str, str], None]  # (level, message)
#: Called with the entries the server is known to have applied (answered, or found by the lookup).
OnApplied = Callable[[list[dict[str, Any]]], None]

RETRYABLE = {408, 429, 500, 502, 503, 504}
SPLITTABLE = {400, 413, 422}
#: Added to the request timeout to give an unanswered commit time to finish (see ``settle_time``).
SETTLE_MARGIN = 1.0


def settle_time(timeout: float) -> float:
    """How long after a commit's outcome became unknown a lookup that misses rows is believed:
    as long again as the client waited for the answer (``timeout``), plus :data:`SETTLE_MARGIN`.

    Why: a timeout means the server had ``timeout`` seconds and had not answered; it may still be
    applying the commit. Giving it the same time again, plus a margin, covers a server that applies
    a commit up to ``2 × timeout + 1 s`` after it was sent (after a dropped connection: up to
    ``timeout + 1 s`` after the drop). A server slower than that can still end with a row twice,
    which the next run reports and heals (duplicate keys are deleted, the oldest entry kept)."""
    return max(0.0, timeout) + SETTLE_MARGIN


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # retries after the first attempt (commits and lookups alike)
    delay: float = 1.0  # first wait, in seconds
    factor: float = 2.0
    max_delay: float = 60.0
    #: Seconds after an unknown outcome before a lookup that misses rows is believed (``settle_time``).
    settle: float = 0.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.max_delay, self.delay * self.factor ** (attempt - 1))


@dataclass
class CommitOutcome:
    committed: bool = True
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    attempts: int = 0
    already_applied: int = 0  # inserts found on the remote after an unknown outcome
    errors: list[str] = field(default_factory=list)
    rejected_entries: int = 0  # entries the server refused even alone (skipped, counted)
    #: The entries the server applied, as sent: set by the fleet's commit step for a code config's
    #: ``onSync`` (kept with the batch's outcome until the finalize step hands them over).
    applied_entries: list[dict[str, Any]] | None = None


class _LookupFailed(Exception):
    """The lookup after an unknown outcome could not be answered (after its retries)."""


@dataclass
class _Clock:
    sleep: Callable[[float], None]
    now: Callable[[], float]


@dataclass(frozen=True)
class _Lookup:
    """The two questions asked of the remote after an unknown outcome."""

    find_existing: FindExisting | None
    find_updated: FindUpdated | None

    def inserts_checkable(self, batch: Batch) -> bool:
        return self.find_existing is not None and len(batch.insert_keys) == batch.inserts

    def can_check(self, batch: Batch) -> bool:
        """Whether the batch can be checked: it has entries, every insert has a key to look up, and
        there is something to look up (updates that cannot be looked up are simply sent again)."""
        if batch.inserts:
            return self.inserts_checkable(batch)
        return batch.updates > 0 and self.find_updated is not None


def commit_with_retries(
    batch: Batch,
    send: Send,
    find_existing: FindExisting | None,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Log | None = None,
    start_unknown: bool = False,
    on_attempt: Callable[[int, str | None], None] | None = None,
    on_applied: OnApplied | None = None,
    find_updated: FindUpdated | None = None,
) -> CommitOutcome:
    """Send ``batch`` until it is applied exactly once, or report why it was not.

    ``find_existing(keys)`` answers which insert keys exist remotely; ``find_updated(entries)``
    (optional) which update entries' ids already hold the data sent (so that an applied update is
    not re-sent, which matters when every commit goes unanswered). ``start_unknown`` says a previous
    attempt (e.g. by a worker that died) may have been applied; its time is not known, so it is taken
    as now (the server gets the full ``policy.settle``). ``on_attempt(n, error)`` lets the fleet record
    each attempt in Redis; ``on_applied(entries)`` receives the entries the server applied (for
    ``onSync``). ``clock`` must advance with ``sleep`` (tests pass a fake pair).
    """
    outcome = CommitOutcome()
    say = log or (lambda level, msg: None)
    timer = _Clock(sleep, clock)
    lookup = _Lookup(find_existing, find_updated)
    current = batch
    #: When the latest attempt's outcome became unknown (None: every earlier attempt is accounted for).
    unknown_since: float | None = clock() if start_unknown else None
    warned_no_key = False
    attempt = 0
    while True:
        if unknown_since is not None:
            if lookup.can_check(current):
                remaining = _without_applied(batch.number, current, lookup, policy, unknown_since, timer, say,
                                             outcome, on_applied)
                if remaining is None:
                    return outcome
                current = remaining
            elif current.inserts and not warned_no_key:
                say("warning", f"Batch {batch.number}: the last attempt may have been applied, and rows "
                               "without a primary key cannot be checked: they may be inserted twice.")
                warned_no_key = True
            unknown_since = None  # settled: what is left was not applied (or is safe to send again)
            if not current.entries and not current.delete:
                outcome.inserted += outcome.already_applied
                return outcome
        attempt += 1
        outcome.attempts += 1
        try:
            send(current)
        except (AuthError, AccessError):
            raise
        except ApiError as error:
            if error.outcome_unknown:
                unknown_since = clock()
            if on_attempt:
                on_attempt(attempt, error.message)
            if error.status in SPLITTABLE and len(current.entries) > 1:
                return _split(batch, current, error, send, lookup, policy, timer, say, outcome, on_applied)
            if error.status in SPLITTABLE:
                outcome.rejected_entries += len(current.entries)
                outcome.errors.append(f"Batch {batch.number}: the server refused an entry: {error.message}")
                say("error", outcome.errors[-1] + f" Entry: {_brief(current.entries)}")
                # a lone refused entry is skipped and counted; the batch itself is done
                return outcome
            retryable = error.outcome_unknown or error.status in RETRYABLE or error.status is None
            if not retryable or attempt > policy.retries:
                if unknown_since is not None and lookup.can_check(current):
                    # the last attempt may have landed after all: find out before reporting a failure
                    remaining = _without_applied(batch.number, current, lookup, policy, unknown_since, timer,
                                                 say, outcome, on_applied)
                    if remaining is None:
                        return outcome
                    current = remaining
                    if not current.entries and not current.delete:
                        outcome.inserted += outcome.already_applied
                        return outcome
                outcome.committed = False
                outcome.inserted += outcome.already_applied
                outcome.errors.append(f"Batch {batch.number}: {error.message}")
                return outcome
            wait = policy.wait(attempt)
            say("warning", f"Batch {batch.number} failed ({error.message}). Retrying in {wait:g} seconds "
                           f"(retry {attempt} of {policy.retries}).")
            sleep(wait)
            continue
        if on_attempt:
            on_attempt(attempt, None)
        if on_applied and current.entries:
            on_applied(current.entries)
        outcome.inserted += current.inserts + outcome.already_applied
        outcome.updated += current.updates
        outcome.deleted += len(current.delete)
        return outcome


def _without_applied(number: int, current: Batch, lookup: _Lookup, policy: RetryPolicy, unknown_since: float,
                     timer: _Clock, say: Log, outcome: CommitOutcome, on_applied: OnApplied | None) -> Batch | None:
    """``current`` without the entries the server turns out to have applied (counted in ``outcome``);
    None when that cannot be found out (``outcome`` then says why and the batch fails)."""
    try:
        found = _settle(current, lookup, policy, unknown_since, timer, say)
    except _LookupFailed as error:
        outcome.committed = False
        outcome.inserted += outcome.already_applied
        outcome.errors.append(
            f"Batch {number}: a commit got no answer and checking which of its rows the server applied "
            f"failed ({error}); the batch was not sent again, so that no row lands twice. The next run "
            "sends whatever is missing.")
        say("error", outcome.errors[-1])
        return None
    remaining, applied = _drop_applied(current, found)
    inserts = sum(1 for e in applied if "id" not in e)
    outcome.already_applied += inserts
    outcome.updated += len(applied) - inserts
    if applied:
        say("info", f"Batch {number}: {len(applied)} row(s) had already been "
                    f"{'inserted' if inserts == len(applied) else 'applied'}; not sending them again.")
        if on_applied:
            on_applied(applied)
    return remaining


def _settle(batch: Batch, lookup: _Lookup, policy: RetryPolicy, unknown_since: float, timer: _Clock,
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
    or on any other error, :class:`_LookupFailed` ends the batch: never re-send an insert on a guess.
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
                raise _LookupFailed("the rows found kept changing from one lookup to the next")
        previous = found
        polls += 1
        wait = policy.wait(polls)
        now = timer.now()
        if now < deadline:
            wait = min(wait, deadline - now)
        timer.sleep(max(0.0, wait))


def _ask(batch: Batch, lookup: _Lookup, policy: RetryPolicy, timer: _Clock, say: Log) -> set[Any]:
    """One lookup of the batch's inserts and updates, each retried with backoff like a commit."""
    found: set[Any] = set()
    if batch.inserts and lookup.find_existing is not None:
        keys = list(batch.insert_keys)
        find_existing = lookup.find_existing
        found |= {("key", _hashable(k)) for k in _retried(batch.number, lambda: find_existing(keys), policy, timer, say)}
    updates = [e for e in batch.entries if "id" in e]
    if updates and lookup.find_updated is not None:
        find_updated = lookup.find_updated
        found |= {("id", i) for i in _retried(batch.number, lambda: find_updated(updates), policy, timer, say)}
    return found


def _retried(number: int, ask: Callable[[], Iterable[Any]], policy: RetryPolicy, timer: _Clock,
             say: Log) -> list[Any]:
    failures = 0
    while True:
        try:
            return list(ask())
        except (AuthError, AccessError):
            raise
        except ApiError as error:
            failures += 1
            retryable = error.outcome_unknown or error.status in RETRYABLE or error.status is None
            if not retryable or failures > policy.retries:
                raise _LookupFailed(error.message) from None
            wait = policy.wait(failures)
            say("warning", f"Batch {number}: checking which rows the server already has failed ({error.message}). "
                           f"Retrying in {wait:g} seconds (retry {failures} of {policy.retries}).")
            timer.sleep(wait)


def _marks(batch: Batch, lookup: _Lookup) -> set[Any]:
    """What names each entry that can be looked up: ("key", insert key) or ("id", entry id)."""
    marks = {("key", _hashable(k)) for k in batch.insert_keys}
    if lookup.find_updated is not None:
        marks |= {("id", e["id"]) for e in batch.entries if "id" in e}
    return marks


def _drop_applied(batch: Batch, found: set[Any]) -> tuple[Batch, list[dict[str, Any]]]:
    """``batch`` without the entries whose mark is in ``found``, and those entries."""
    if not found:
        return batch, []
    keep: list[dict[str, Any]] = []
    keys: list[Any] = []
    applied: list[dict[str, Any]] = []
    key_iter = iter(batch.insert_keys)
    for entry in batch.entries:
        if "id" in entry:
            (applied if ("id", entry["id"]) in found else keep).append(entry)
            continue
        key = next(key_iter, None)
        if key is not None and ("key", _hashable(key)) in found:
            applied.append(entry)
            continue
        keep.append(entry)
        if key is not None:
            keys.append(key)
    return Batch(number=batch.number, entries=keep, delete=batch.delete, insert_keys=keys), applied


def _split(
    original: Batch, current: Batch, error: ApiError, send: Send, lookup: _Lookup,
    policy: RetryPolicy, timer: _Clock, say: Log, outcome: CommitOutcome, on_applied: OnApplied | None,
) -> CommitOutcome:
    """Send the two halves of a refused batch separately (deletes travel with the first half)."""
    say("warning", f"Batch {original.number} was refused ({error.message}); sending it in smaller parts "
                   "to find the rows the server does not accept.")
    middle = len(current.entries) // 2
    outcome.inserted += outcome.already_applied  # found before the split: already on the remote
    for part_entries, part_delete in ((current.entries[:middle], current.delete), (current.entries[middle:], [])):
        part = Batch(number=original.number, entries=part_entries, delete=part_delete,
                     insert_keys=_keys_for(current, part_entries))
        sub = commit_with_retries(part, send, lookup.find_existing, policy, sleep=timer.sleep, clock=timer.now,
                                  log=say, on_applied=on_applied, find_updated=lookup.find_updated)
        outcome.inserted += sub.inserted
        outcome.updated += sub.updated
        outcome.deleted += sub.deleted
        outcome.attempts += sub.attempts
        outcome.already_applied += sub.already_applied
        outcome.rejected_entries += sub.rejected_entries
        outcome.errors.extend(sub.errors)
        outcome.committed = outcome.committed and sub.committed
    return outcome


def _keys_for(batch: Batch, part: list[dict[str, Any]]) -> list[Any]:
    """The insert keys of the inserts in ``part``, in order (entries are matched by identity)."""
    wanted = {id(e) for e in part}
    keys: list[Any] = []
    key_iter = iter(batch.insert_keys)
    for entry in batch.entries:
        if "id" in entry:
            continue
        key = next(key_iter, None)
        if id(entry) in wanted and key is not None:
            keys.append(key)
    return keys


def _hashable(value: Any) -> Any:
    """A looked-up key as a set member, typed like the diff's keys: ``true`` is not ``1`` (Python hashes
    ``True == 1``), so booleans are tagged; objects and lists (never valid keys) by their text."""
    if type(value) is bool:
        return (bool, value)
    return value if not isinstance(value, (dict, list)) else repr(value)


def _brief(entries: list[dict[str, Any]]) -> str:
    text = repr(entries[0]) if entries else "{}"
    return text if len(text) < 300 else text[:299] + "…"
