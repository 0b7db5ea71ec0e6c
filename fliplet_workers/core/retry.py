"""Commit one batch with retries that never duplicate inserts.

The rules (the original re-sends the identical body, so a commit whose answer was lost inserts
its rows twice):

* an answer of 5xx, 408 or 429 means the commit was not applied: wait (exponential backoff) and
  send it again;
* no answer (timeout, dropped connection) means it *may* have been applied: before sending again,
  ask the remote which of the batch's new keys already exist and drop those inserts (updates and
  deletes are idempotent);
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
Log = Callable[[str, str], None]  # (level, message)

RETRYABLE = {408, 429, 500, 502, 503, 504}
SPLITTABLE = {400, 413, 422}


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # retries after the first attempt
    delay: float = 1.0  # first wait, in seconds
    factor: float = 2.0
    max_delay: float = 60.0

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


def commit_with_retries(
    batch: Batch,
    send: Send,
    find_existing: FindExisting | None,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    log: Log | None = None,
    start_unknown: bool = False,
    on_attempt: Callable[[int, str | None], None] | None = None,
) -> CommitOutcome:
    """Send ``batch`` until it is applied exactly once, or report why it was not.

    ``start_unknown`` says a previous attempt (e.g. by a worker that died) may have been applied.
    ``on_attempt(n, error)`` lets the fleet record each attempt in Redis.
    """
    outcome = CommitOutcome()
    say = log or (lambda level, msg: None)
    current = batch
    unknown = start_unknown
    warned_no_key = False
    attempt = 0
    while True:
        if unknown:
            if find_existing is None or (current.inserts and not current.insert_keys):
                if not warned_no_key:
                    say("warning", f"Batch {batch.number}: the last attempt may have been applied, and rows "
                                   "without a primary key cannot be checked: they may be inserted twice.")
                    warned_no_key = True
            else:
                current, found = _drop_applied_inserts(current, find_existing)
                outcome.already_applied += found
                if found:
                    say("info", f"Batch {batch.number}: {found} row(s) had already been inserted; not sending them again.")
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
            if on_attempt:
                on_attempt(attempt, error.message)
            if error.status in SPLITTABLE and len(current.entries) > 1:
                return _split(batch, current, error, send, find_existing, policy, sleep, say, outcome)
            if error.status in SPLITTABLE:
                outcome.rejected_entries += len(current.entries)
                outcome.errors.append(f"Batch {batch.number}: the server refused an entry: {error.message}")
                say("error", outcome.errors[-1] + f" Entry: {_brief(current.entries)}")
                # a lone refused entry is skipped and counted; the batch itself is done
                return outcome
            retryable = error.outcome_unknown or error.status in RETRYABLE or error.status is None
            if not retryable or attempt > policy.retries:
                outcome.committed = False
                outcome.errors.append(f"Batch {batch.number}: {error.message}")
                return outcome
            unknown = unknown or error.outcome_unknown
            wait = policy.wait(attempt)
            say("warning", f"Batch {batch.number} failed ({error.message}). Retrying in {wait:g} seconds "
                           f"(retry {attempt} of {policy.retries}).")
            sleep(wait)
            continue
        if on_attempt:
            on_attempt(attempt, None)
        outcome.inserted += current.inserts + outcome.already_applied
        outcome.updated += current.updates
        outcome.deleted += len(current.delete)
        return outcome


def _drop_applied_inserts(batch: Batch, find_existing: FindExisting) -> tuple[Batch, int]:
    if not batch.insert_keys:
        return batch, 0
    existing = {_hashable(k) for k in find_existing(list(batch.insert_keys))}
    if not existing:
        return batch, 0
    keep: list[dict[str, Any]] = []
    keys: list[Any] = []
    key_iter = iter(batch.insert_keys)
    found = 0
    for entry in batch.entries:
        if "id" in entry:
            keep.append(entry)
            continue
        key = next(key_iter, None)
        if key is not None and _hashable(key) in existing:
            found += 1
            continue
        keep.append(entry)
        if key is not None:
            keys.append(key)
    return Batch(number=batch.number, entries=keep, delete=batch.delete, insert_keys=keys), found


def _split(
    original: Batch, current: Batch, error: ApiError, send: Send, find_existing: FindExisting | None,
    policy: RetryPolicy, sleep: Callable[[float], None], say: Log, outcome: CommitOutcome,
) -> CommitOutcome:
    """Send the two halves of a refused batch separately (deletes travel with the first half)."""
    say("warning", f"Batch {original.number} was refused ({error.message}); sending it in smaller parts "
                   "to find the rows the server does not accept.")
    middle = len(current.entries) // 2
    outcome.inserted += outcome.already_applied  # found before the split: already on the remote
    for part_entries, part_delete in ((current.entries[:middle], current.delete), (current.entries[middle:], [])):
        part = Batch(number=original.number, entries=part_entries, delete=part_delete,
                     insert_keys=_keys_for(current, part_entries))
        sub = commit_with_retries(part, send, find_existing, policy, sleep=sleep, log=say)
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
    return value if not isinstance(value, (dict, list)) else repr(value)


def _brief(entries: list[dict[str, Any]]) -> str:
    text = repr(entries[0]) if entries else "{}"
    return text if len(text) < 300 else text[:299] + "…"
