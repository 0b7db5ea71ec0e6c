"""Commit one batch with retries that never duplicate inserts.

The rules (the original re-sends the identical body, so a commit whose answer was lost inserts
its rows twice):

* an answer of 5xx, 408 or 429 means the commit was not applied: wait (exponential backoff) and
  send it again;
* no answer (timeout, dropped connection) means it *may* have been applied, or may still be being
  applied by a server slower than our timeout: before sending again, give the server time to finish
  and ask it which of the batch's new keys exist (see :func:`.lookup.settle` for the exact rule), then drop
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fliplet_workers.core.batches import Batch, Entry
from fliplet_workers.core.lookup import (
    Clock,
    FindExisting,
    FindUpdated,
    Log,
    Lookup,
    LookupFailed,
    drop_applied,
    settle,
)
from fliplet_workers.errors import AccessError, ApiError, AuthError

Send = Callable[[Batch], None]
#: Called with the entries the server is known to have applied (answered, or found by the lookup).
OnApplied = Callable[[list[Entry]], None]

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
    lookup = Lookup(find_existing, find_updated)
    return _Commit(batch, send, lookup, policy, Clock(sleep, clock), log or (lambda level, msg: None),
                   on_attempt, on_applied, unknown_since=clock() if start_unknown else None).run()


class _Commit:
    """One batch's commit and its retries: the state :func:`commit_with_retries` keeps between attempts."""

    def __init__(self, batch: Batch, send: Send, lookup: Lookup, policy: RetryPolicy, timer: Clock, say: Log,
                 on_attempt: Callable[[int, str | None], None] | None, on_applied: OnApplied | None,
                 unknown_since: float | None) -> None:
        self.batch, self.send, self.lookup, self.policy, self.timer, self.say = batch, send, lookup, policy, timer, say
        self.on_attempt, self.on_applied = on_attempt, on_applied
        self.outcome = CommitOutcome()
        self.current = batch
        #: When the latest attempt's outcome became unknown (None: every earlier attempt is accounted for).
        self.unknown_since = unknown_since
        self.warned_no_key = False
        self.attempt = 0

    def run(self) -> CommitOutcome:
        while True:
            if self.unknown_since is not None and self._settled_all():
                return self.outcome
            self.attempt += 1
            self.outcome.attempts += 1
            try:
                self.send(self.current)
            except (AuthError, AccessError):
                raise
            except ApiError as error:
                if self._failed(error):
                    return self.outcome
                continue
            return self._sent()

    def _without_applied(self, unknown_since: float) -> Batch | None:
        return _without_applied(self.batch.number, self.current, self.lookup, self.policy, unknown_since, self.timer,
                                self.say, self.outcome, self.on_applied)

    def _settled_all(self) -> bool:
        """Before sending again after an unknown outcome, drop what the server applied. True when the
        batch is done: nothing is left to send, or the lookup failed (``outcome`` says why)."""
        assert self.unknown_since is not None
        outcome = self.outcome
        if self.lookup.can_check(self.current):
            remaining = self._without_applied(self.unknown_since)
            if remaining is None:
                return True
            self.current = remaining
        elif self.current.inserts and not self.warned_no_key:
            self.say("warning", f"Batch {self.batch.number}: the last attempt may have been applied, and rows "
                                "without a primary key cannot be checked: they may be inserted twice.")
            self.warned_no_key = True
        self.unknown_since = None  # settled: what is left was not applied (or is safe to send again)
        if not self.current.entries and not self.current.delete:
            outcome.inserted += outcome.already_applied
            return True
        return False

    def _failed(self, error: ApiError) -> bool:
        """One attempt failed: True when the batch is done (split, its lone entry skipped, or failed for
        good), False after waiting to send it again."""
        batch, current, outcome = self.batch, self.current, self.outcome
        if error.kind == "unknown":
            self.unknown_since = self.timer.now()
        if self.on_attempt:
            self.on_attempt(self.attempt, error.message)
        if error.kind == "refused" and len(current.entries) > 1:
            _split(batch, current, error, self.send, self.lookup, self.policy, self.timer, self.say, outcome,
                   self.on_applied)
            return True
        if error.kind == "refused":
            outcome.rejected_entries += len(current.entries)
            outcome.errors.append(f"Batch {batch.number}: the server refused an entry: {error.message}")
            self.say("error", outcome.errors[-1] + f" Entry: {_brief(current.entries)}")
            # a lone refused entry is skipped and counted; the batch itself is done
            return True
        retryable = error.kind in ("retry", "unknown")
        if not retryable or self.attempt > self.policy.retries:
            self._give_up(error)
            return True
        wait = self.policy.wait(self.attempt)
        self.say("warning", f"Batch {batch.number} failed ({error.message}). Retrying in {wait:g} seconds "
                            f"(retry {self.attempt} of {self.policy.retries}).")
        self.timer.sleep(wait)
        return False

    def _give_up(self, error: ApiError) -> None:
        """No more attempts: unless the last one turns out to have landed after all, the batch fails."""
        outcome = self.outcome
        if self.unknown_since is not None and self.lookup.can_check(self.current):
            # the last attempt may have landed after all: find out before reporting a failure
            remaining = self._without_applied(self.unknown_since)
            if remaining is None:
                return
            self.current = remaining
            if not self.current.entries and not self.current.delete:
                outcome.inserted += outcome.already_applied
                return
        outcome.committed = False
        outcome.inserted += outcome.already_applied
        outcome.errors.append(f"Batch {self.batch.number}: {error.message}")

    def _sent(self) -> CommitOutcome:
        """The server answered: everything left in the batch is applied."""
        outcome, current = self.outcome, self.current
        if self.on_attempt:
            self.on_attempt(self.attempt, None)
        if self.on_applied and current.entries:
            self.on_applied(current.entries)
        outcome.inserted += current.inserts + outcome.already_applied
        outcome.updated += current.updates
        outcome.deleted += len(current.delete)
        return outcome


def _without_applied(number: int, current: Batch, lookup: Lookup, policy: RetryPolicy, unknown_since: float,
                     timer: Clock, say: Log, outcome: CommitOutcome, on_applied: OnApplied | None) -> Batch | None:
    """``current`` without the entries the server turns out to have applied (counted in ``outcome``);
    None when that cannot be found out (``outcome`` then says why and the batch fails)."""
    try:
        found = settle(current, lookup, policy, unknown_since, timer, say)
    except LookupFailed as error:
        outcome.committed = False
        outcome.inserted += outcome.already_applied
        outcome.errors.append(
            f"Batch {number}: a commit got no answer and checking which of its rows the server applied "
            f"failed ({error}); the batch was not sent again, so that no row lands twice. The next run "
            "sends whatever is missing.")
        say("error", outcome.errors[-1])
        return None
    remaining, applied = drop_applied(current, found)
    inserts = sum(1 for e in applied if e.is_insert)
    outcome.already_applied += inserts
    outcome.updated += len(applied) - inserts
    if applied:
        say("info", f"Batch {number}: {len(applied)} row(s) had already been "
                    f"{'inserted' if inserts == len(applied) else 'applied'}; not sending them again.")
        if on_applied:
            on_applied(applied)
    return remaining


def _split(
    original: Batch, current: Batch, error: ApiError, send: Send, lookup: Lookup,
    policy: RetryPolicy, timer: Clock, say: Log, outcome: CommitOutcome, on_applied: OnApplied | None,
) -> CommitOutcome:
    """Send the two halves of a refused batch separately (deletes travel with the first half)."""
    say("warning", f"Batch {original.number} was refused ({error.message}); sending it in smaller parts "
                   "to find the rows the server does not accept.")
    middle = len(current.entries) // 2
    outcome.inserted += outcome.already_applied  # found before the split: already on the remote
    for part_entries, part_delete in ((current.entries[:middle], current.delete), (current.entries[middle:], [])):
        part = current.with_entries(part_entries, delete=part_delete)
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


def _brief(entries: list[Entry]) -> str:
    text = repr(entries[0].wire()) if entries else "{}"
    return text if len(text) < 300 else text[:299] + "…"
