"""Unanswered commits never duplicate (issue 7, items 11 and 12).

A commit that gets no answer (timeout, dropped connection) may have been applied, or may still be
applied later by a server slower than our timeout. The pure core's rule is tested with a fake clock
(a scripted remote that applies a commit some seconds after it was sent); the foreground agent is
tested through the CLI against the real sandbox over HTTP, slower than ``timeout`` on every commit.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from agent_support import World, make_world

from fliplet_workers.core.batches import Batch
from fliplet_workers.core.retry import RetryPolicy, commit_with_retries, settle_time
from fliplet_workers.errors import ApiError
from fliplet_workers.sandbox import SandboxServer

# -- the pure rule, with a fake clock ------------------------------------------------------------


class SlowRemote:
    """A remote that applies each commit ``apply_after`` seconds after it was sent and answers only
    if that is within ``timeout``; ``lookup_errors`` makes the next lookups fail with a 500."""

    def __init__(self, apply_after: float, timeout: float, apply: bool = True) -> None:
        self.now = 0.0
        self.apply_after = apply_after
        self.timeout = timeout
        self.apply = apply
        self.pending: list[tuple[float, list[dict[str, Any]]]] = []
        self.rows: list[dict[str, Any]] = []
        self.sent = 0
        self.lookups: list[float] = []
        self.lookup_errors = 0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self._apply_due()

    def clock(self) -> float:
        return self.now

    def _apply_due(self) -> None:
        due = [p for p in self.pending if p[0] <= self.now]
        self.pending = [p for p in self.pending if p[0] > self.now]
        for _, entries in due:
            self.rows.extend(e["data"] for e in entries if "id" not in e)

    def send(self, batch: Batch) -> None:
        self.sent += 1
        if self.apply:
            self.pending.append((self.now + self.apply_after, list(batch.entries)))
        if self.apply_after > self.timeout or not self.apply:
            self.sleep(self.timeout)
            raise ApiError(f"No answer within {self.timeout:g} seconds", outcome_unknown=True)
        self.sleep(self.apply_after)

    def find(self, keys: list[Any]) -> list[Any]:
        self.lookups.append(self.now)
        if self.lookup_errors:
            self.lookup_errors -= 1
            raise ApiError("Sandbox injected failure (HTTP 500)", status=500)
        return [r["id"] for r in self.rows if r["id"] in keys]


def batch_of(*ids: int) -> Batch:
    return Batch(1, [{"data": {"id": i}} for i in ids], [], list(ids))


def commit(remote: SlowRemote, batch: Batch, policy: RetryPolicy, **kwargs: Any) -> Any:
    return commit_with_retries(batch, remote.send, remote.find, policy, sleep=remote.sleep, clock=remote.clock,
                               **kwargs)


def test_a_server_slower_than_the_timeout_is_waited_for_not_sent_twice() -> None:
    # the numbers: 3.5 s per commit, timeout 2 s (the old single lookup ran at 3 s: too early)
    remote = SlowRemote(apply_after=3.5, timeout=2)
    applied: list[dict[str, Any]] = []
    outcome = commit(remote, batch_of(1, 2, 3), RetryPolicy(delay=1, settle=settle_time(2)), on_applied=applied.extend)
    assert sorted(r["id"] for r in remote.rows) == [1, 2, 3] and remote.sent == 1
    assert outcome.committed and outcome.inserted == 3 and outcome.already_applied == 3
    assert remote.lookups == [3.0, 4.0]  # polled until the rows were there (applied at 3.5)
    assert [e["data"]["id"] for e in applied] == [1, 2, 3]


def test_a_lookup_that_misses_rows_is_believed_only_after_the_deadline_and_two_agreeing_answers() -> None:
    remote = SlowRemote(apply_after=0, timeout=2, apply=False)  # the commit never lands (lost on the way)
    remote.apply = False
    outcome = commit(remote, batch_of(1, 2), RetryPolicy(delay=1, retries=1, settle=settle_time(2)))
    deadline = 2 + settle_time(2)  # unknown at 2 s (the timeout), believed from 5 s on
    assert remote.lookups[-1] >= deadline and remote.lookups[-2] < remote.lookups[-1]
    assert all(t >= 3 for t in remote.lookups)  # the first after the retry backoff
    assert remote.sent == 2 and not outcome.committed  # re-sent once (never landed), then out of retries


def test_the_resent_commit_lands_once_when_the_first_was_lost() -> None:
    remote = SlowRemote(apply_after=0.5, timeout=2)
    script = iter(["lost"])

    def send(batch: Batch) -> None:
        if next(script, None) == "lost":
            remote.sent += 1
            remote.sleep(2)
            raise ApiError("No answer", outcome_unknown=True)
        remote.send(batch)

    outcome = commit_with_retries(batch_of(1, 2), send, remote.find, RetryPolicy(delay=1, settle=settle_time(2)),
                                  sleep=remote.sleep, clock=remote.clock)
    assert outcome.committed and outcome.inserted == 2 and outcome.already_applied == 0
    assert sorted(r["id"] for r in remote.rows) == [1, 2] and remote.sent == 2
    assert remote.lookups[-1] >= 2 + settle_time(2)


def test_a_failed_lookup_is_retried_with_backoff() -> None:
    remote = SlowRemote(apply_after=3, timeout=2)
    remote.lookup_errors = 2
    logs: list[tuple[str, str]] = []
    outcome = commit(remote, batch_of(1, 2), RetryPolicy(delay=1, retries=3, settle=settle_time(2)),
                     log=lambda level, msg: logs.append((level, msg)))
    assert outcome.committed and outcome.inserted == 2 and remote.sent == 1
    assert sorted(r["id"] for r in remote.rows) == [1, 2]
    warnings = [m for level, m in logs if level == "warning" and "checking which rows" in m]
    assert len(warnings) == 2 and "retry 2 of 3" in warnings[1]


def test_a_lookup_failing_after_every_retry_fails_the_batch_without_resending() -> None:
    remote = SlowRemote(apply_after=0, timeout=1, apply=False)
    remote.lookup_errors = 100
    outcome = commit(remote, batch_of(1, 2), RetryPolicy(delay=0.5, retries=2, settle=settle_time(1)))
    assert not outcome.committed and remote.sent == 1 and len(remote.lookups) == 3
    assert "checking which of its rows the server applied failed" in outcome.errors[0]
    assert "HTTP 500" in outcome.errors[0]


def test_the_last_unanswered_attempt_is_checked_before_reporting_a_failure() -> None:
    remote = SlowRemote(apply_after=3, timeout=2)
    outcome = commit(remote, batch_of(1), RetryPolicy(delay=1, retries=0, settle=settle_time(2)))
    assert outcome.committed and outcome.inserted == 1 and remote.sent == 1 and outcome.errors == []


def test_start_unknown_waits_from_now() -> None:
    remote = SlowRemote(apply_after=0, timeout=2)
    remote.rows = [{"id": 1}]
    remote.now = 100.0
    outcome = commit(remote, batch_of(1, 2), RetryPolicy(delay=1, settle=3), start_unknown=True)
    assert outcome.committed and outcome.inserted == 2 and outcome.already_applied == 1
    assert remote.lookups[0] == 100.0 and remote.lookups[-1] >= 103.0  # row 2 was missing: waited
    assert sorted(r["id"] for r in remote.rows) == [1, 2]


def test_without_a_primary_key_the_batch_is_resent_with_a_warning() -> None:
    remote = SlowRemote(apply_after=3, timeout=2)
    logs: list[str] = []
    batch = Batch(1, [{"data": {"id": 1}}], [], [])
    outcome = commit_with_retries(batch, remote.send, None, RetryPolicy(delay=1, retries=1),
                                  sleep=remote.sleep, clock=remote.clock, log=lambda level, msg: logs.append(msg))
    assert any("cannot be checked: they may be inserted twice" in m for m in logs)
    assert remote.sent == 2 and not outcome.committed


def test_applied_updates_are_confirmed_not_resent_and_unconfirmable_ones_are_resent() -> None:
    remote = SlowRemote(apply_after=3, timeout=2)
    held: dict[int, dict[str, Any]] = {}

    def send(batch: Batch) -> None:
        held.update({e["id"]: e["data"] for e in batch.entries if "id" in e and remote.apply})
        remote.send(batch)

    def find_updated(entries: list[dict[str, Any]]) -> list[Any]:
        return [e["id"] for e in entries if held.get(e["id"]) == e["data"] and not remote.pending]

    batch = Batch(1, [{"id": 7, "data": {"id": 1, "v": "new"}}, {"data": {"id": 2}}], [], [2])
    applied: list[dict[str, Any]] = []
    outcome = commit_with_retries(batch, send, remote.find, RetryPolicy(delay=1, settle=settle_time(2)),
                                  sleep=remote.sleep, clock=remote.clock, find_updated=find_updated,
                                  on_applied=applied.extend)
    assert outcome.committed and (outcome.inserted, outcome.updated) == (1, 1) and remote.sent == 1
    assert applied == batch.entries

    # without a way to look updates up, the inserts are still checked and only the update is re-sent
    remote = SlowRemote(apply_after=3, timeout=2)
    sent: list[list[dict[str, Any]]] = []

    def record(part: Batch) -> None:
        sent.append(list(part.entries))
        remote.send(part)

    outcome = commit_with_retries(batch, record, remote.find, RetryPolicy(delay=1, retries=1, settle=settle_time(2)),
                                  sleep=remote.sleep, clock=remote.clock)
    assert sent[1] == [{"id": 7, "data": {"id": 1, "v": "new"}}]  # the insert was found, not re-sent
    assert sorted(r["id"] for r in remote.rows) == [2]
    assert not outcome.committed and outcome.inserted == 1  # the update never got an answer


# -- through the CLI, against the real sandbox ---------------------------------------------------


@pytest.fixture
def w(sandbox: SandboxServer, tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "source.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    world = make_world(sandbox, engine, {"database_driver": "sqlite", "database_name": str(path)}, tmp_path, "users")
    world.insert(*({"id": i, "email": f"u{i:02d}@example.org"} for i in range(1, 31)))
    yield world
    sandbox.faults.clear()
    engine.dispose()


def fast(**extra: Any) -> dict[str, Any]:
    """Small times: a 0.5 s timeout, 0.1 s first backoff, batches of 10 (3 batches for 30 rows)."""
    return {"timeout": 0.5, "retry_delay": 0.1, "retries": 3, "batch_size": 10, **extra}


def summary_line(err: str) -> str:
    lines = [line for line in err.splitlines() if re.search(r"operation 1: inserted \d+", line)]
    assert lines, err
    return lines[-1]


def test_a_sandbox_slower_than_timeout_on_every_commit_lands_each_row_once(
        w: World, capsys: pytest.CaptureFixture[str]) -> None:
    w.server.faults.set(commit_delay_ms=800)  # every commit is applied 0.8 s after it arrives
    assert w.run(**fast()) == 0
    keys = Counter(e["data"]["id"] for e in w.entries())
    assert sorted(keys) == list(range(1, 31)) and max(keys.values()) == 1  # every row, exactly once
    assert w.commits() == 3 and w.server.store.applied_commit_count(w.ds) == 3  # no batch sent twice
    err = capsys.readouterr().err
    assert "inserted 30, updated 0, deleted 0" in summary_line(err) and "errors 0" in summary_line(err)
    assert "No answer from" in err and "had already been inserted; not sending them again" in err

    assert w.run(**fast()) == 0  # the next run: nothing to send
    assert "inserted 0" in summary_line(capsys.readouterr().err) and w.commits() == 3


def test_a_lookup_failing_once_is_retried_and_the_other_batches_are_sent(
        w: World, capsys: pytest.CaptureFixture[str]) -> None:
    # batch 1: applied, the connection drops before the answer; the first lookup gets a 500
    w.server.faults.set(commit=["drop-after-apply"], query=["error"])
    assert w.run(**fast()) == 0
    keys = Counter(e["data"]["id"] for e in w.entries())
    assert sorted(keys) == list(range(1, 31)) and max(keys.values()) == 1
    assert w.commits() == 3
    err = capsys.readouterr().err
    assert "checking which rows the server already has failed (Sandbox injected failure (HTTP 500))" in err
    assert "inserted 30" in summary_line(err) and "errors 0" in summary_line(err)


def test_a_lookup_that_keeps_failing_fails_its_batch_only(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    # batch 1 is lost on the way (never applied) and the data source cannot be asked about it
    w.server.faults.set(commit=["drop-before-apply"], query=["error"] * 10)
    assert w.run(**fast(retries=2)) == 1
    keys = Counter(e["data"]["id"] for e in w.entries())
    assert max(keys.values()) == 1 and len(keys) == 20  # batches 2 and 3 were sent; batch 1 not re-sent
    err = capsys.readouterr().err
    assert "Batch 1: a commit got no answer and checking which of its rows the server applied failed" in err
    assert "the batch was not sent again, so that no row lands twice" in err
    assert "inserted 20" in summary_line(err) and "errors 1" in summary_line(err)

    w.server.faults.clear()
    assert w.run(**fast()) == 0  # the next run sends what is missing
    keys = Counter(e["data"]["id"] for e in w.entries())
    assert sorted(keys) == list(range(1, 31)) and max(keys.values()) == 1
    assert "inserted 10" in summary_line(capsys.readouterr().err)


def test_updates_and_inserts_against_a_slow_sandbox_end_right(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert w.run(**fast()) == 0
    w.execute("UPDATE users SET name = 'renamed', updated_at = '2024-02-01 00:00:00' WHERE id <= 12")
    w.insert(*({"id": i, "email": f"v{i}@example.org"} for i in range(31, 36)))
    capsys.readouterr()
    w.server.faults.set(commit_delay_ms=800)
    assert w.run(**fast()) == 0
    data = w.data_by_key()
    assert sorted(Counter(e["data"]["id"] for e in w.entries()).values()) == [1] * 35
    assert all(data[i]["name"] == "renamed" for i in range(1, 13)) and data[13]["name"] is None
    line = summary_line(capsys.readouterr().err)
    assert "inserted 5, updated 12, deleted 0, unchanged 18" in line and "errors 0" in line
    assert w.commits() == 3 + 2  # the second run's two batches were each sent once, confirmed by lookup


def test_without_a_primary_key_an_unanswered_commit_is_resent_with_the_warning(
        w: World, capsys: pytest.CaptureFixture[str]) -> None:
    w.server.faults.set(commit=["drop-after-apply"])  # nothing identifies the rows: they land twice
    assert w.run(**fast(primary_column=None, batch_size=100)) == 0
    assert len(w.entries()) == 60 and w.commits() == 2
    err = capsys.readouterr().err
    assert "A primary key has not been set" in err
    assert "Batch 1: the last attempt may have been applied, and rows without a primary key cannot be " \
           "checked: they may be inserted twice." in err


def test_a_found_boolean_key_does_not_stand_for_the_number_one() -> None:
    # an entry keyed ``true`` exists; the unanswered batch inserts key 1: it was not applied
    policy = RetryPolicy(delay=1, retries=1, settle=settle_time(2))
    sent: list[list[Any]] = []

    def send(batch: Batch) -> None:
        sent.append([e["data"]["id"] for e in batch.entries])
        if len(sent) == 1:
            raise ApiError("No answer", outcome_unknown=True)

    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    outcome = commit_with_retries(batch_of(1), send, lambda keys: [True], policy, sleep=sleep,
                                  clock=lambda: clock[0])
    assert sent == [[1], [1]] and outcome.committed and outcome.already_applied == 0
