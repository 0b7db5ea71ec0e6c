"""The pipeline with the foreground's sink (:class:`LocalSink`), driven through the in-memory API:
every row exactly once, an unanswered commit looked up rather than sent again, the closing lines and
onSync written once, the encryption key resolved once per run, a dry run that sends nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from pipeline_support import memory_world

from fliplet_workers.config.model import Encryption
from fliplet_workers.core import crypto
from fliplet_workers.errors import EncryptionError
from fliplet_workers.pipeline.push import run_push
from fliplet_workers.pipeline.steps.encryption import KeyCache
from fliplet_workers.redaction import Secret

KEY = "PipelineTestKey"


def test_local_sink_sends_every_row_once_and_a_rerun_sends_nothing() -> None:
    w = memory_world(rows=5)
    summary = run_push(w.spec(), w.res())
    assert (summary.ok, summary.inserted, summary.batches) == (True, 5, 3)
    assert sorted(e["id"] for e in w.entries()) == [1, 2, 3, 4, 5] and w.commits() == 3
    assert w.lines.count("Sync finished. 5 data source entries have been affected.") == 1

    again = run_push(w.spec(), w.res())
    assert (again.ok, again.unchanged, again.affected, again.batches) == (True, 5, 0, 0)
    assert w.commits() == 3 and w.lines.count("Nothing to commit.") == 1
    assert w.lines.count("Sync finished. 0 data source entries have been affected.") == 1


def test_an_applied_commit_whose_answer_is_lost_is_looked_up_not_sent_again() -> None:
    w = memory_world(rows=4)
    w.api.fail_next("commit", kind="unknown", applied=True)  # the first batch lands, its answer is lost
    summary = run_push(w.spec(concurrency=1), w.res())
    assert summary.ok and summary.inserted == 4 and summary.errors == []
    assert sorted(Counter(e["id"] for e in w.entries()).values()) == [1, 1, 1, 1]  # each row exactly once
    assert w.commits() == 2  # batch 1 was not sent again: the lookup found its rows
    assert ("query", w.ds) in w.api.calls
    assert w.lines.count("Batch 1: 2 row(s) had already been inserted; not sending them again.") == 1


def test_a_lost_commit_that_was_not_applied_is_sent_again_once() -> None:
    w = memory_world(rows=2)
    w.api.fail_next("commit", kind="unknown", applied=False)
    summary = run_push(w.spec(), w.res())
    assert summary.ok and summary.inserted == 2 and summary.retries == 1
    assert sorted(e["id"] for e in w.entries()) == [1, 2]


def test_on_sync_is_called_once_with_the_applied_entries_in_wire_form() -> None:
    calls: list[dict[str, Any]] = []
    w = memory_world(rows=3)
    w.api.fail_next("commit", kind="unknown", applied=True)  # found by the lookup: still reported
    summary = run_push(w.spec(on_sync=calls.append, concurrency=1), w.res())
    assert summary.ok and len(calls) == 1
    assert sorted(c["data"]["id"] for c in calls[0]["commits"]) == [1, 2, 3]
    assert all(set(c) == {"data"} for c in calls[0]["commits"])  # inserts: {data}, as the original sends
    assert calls[0]["summary"]["inserted"] == 3


def test_the_keystore_key_is_resolved_once_per_run_whatever_the_batches() -> None:
    w = memory_world(rows=6)
    summary = run_push(w.spec(encrypt=Encryption(fields=("name",), salt=Secret("pepper"))), w.res())
    assert summary.ok and summary.batches == 3
    assert sum(1 for method, _ in w.api.calls if method == "data_sources") == 1
    names = [e["name"] for e in w.entries()]
    assert all(crypto.looks_encrypted(n) for n in names)
    rerun = run_push(w.spec(encrypt=Encryption(fields=("name",), salt=Secret("pepper"))), w.res())
    assert rerun.unchanged == 6 and rerun.affected == 0  # decrypted with the same key: nothing changed


def test_an_encryption_key_from_the_config_encrypts_every_batch() -> None:
    w = memory_world(rows=3)
    summary = run_push(w.spec(encrypt=Encryption(fields=("name",), key=Secret(KEY))), w.res())
    assert summary.ok and sorted(crypto.decrypt(e["name"], KEY) for e in w.entries()) == ["n1", "n2", "n3"]
    assert not any(method == "data_sources" for method, _ in w.api.calls)


def test_a_dry_run_sends_nothing_and_dumps_the_commits() -> None:
    w = memory_world(rows=3)
    summary = run_push(w.spec(dry_run=True), w.res())
    assert summary.dry_run and summary.inserted == 3 and w.commits() == 0 and w.entries() == []
    assert w.lines.count("Dry run mode is enabled.") == 1


def test_a_refused_row_is_skipped_and_counted_the_others_land() -> None:
    w = memory_world(rows=2)
    w.api.fail_next("commit", kind="refused")  # the batch of two is refused: split, then each sent alone
    w.api.fail_next("commit", kind="refused")  # the first row alone is refused too
    summary = run_push(w.spec(), w.res())
    assert summary.skipped == 1 and summary.inserted == 1 and summary.ok
    assert [e["id"] for e in w.entries()] == [2]


def test_a_commit_worker_reads_the_keystore_key_once_per_run_and_config() -> None:
    w = memory_world(rows=2)
    spec = w.spec(encrypt=Encryption(fields=("name",), salt=Secret("pepper")))
    assert run_push(spec, w.res()).ok  # the planner's run creates keystore and key
    reads = lambda: sum(1 for method, _ in w.api.calls if method == "data_sources")  # noqa: E731
    before = reads()
    cache = KeyCache()
    key = cache.key(spec, w.api, "run-1")
    assert [cache.key(spec, w.api, "run-1") for _ in range(5)] == [key] * 5 and reads() == before + 1
    assert cache.key(spec, w.api, "run-2") == key and reads() == before + 2  # a new run reads it again
    other = w.spec(encrypt=Encryption(fields=("name",), salt=Secret("other salt")))
    with pytest.raises(EncryptionError):  # another salt: read again (and refused), never the cached key
        cache.key(other, w.api, "run-2")
