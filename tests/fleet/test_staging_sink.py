"""The pipeline with the fleet's sink (:class:`StagingSink`) on a real redis-server, driven through the
in-memory API: the same push as the foreground, each batch staged (encrypted fields encrypted, file
jobs listed once) and dispatched as it is cut; the staged batches then committed as the commit task
does, each row exactly once even when a commit's answer is lost."""

from __future__ import annotations

import uuid
from collections import Counter

import orjson
from pipeline_support import MemoryWorld, memory_world

from fliplet_workers.config.model import Encryption, FileColumn
from fliplet_workers.core import crypto
from fliplet_workers.fleet import keys
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.staging import DISPATCHED, StagingSink
from fliplet_workers.pipeline.commit import commit_batch
from fliplet_workers.pipeline.push import push
from fliplet_workers.pipeline.spec import RunSpec
from fliplet_workers.pipeline.steps.chain import open_steps
from fliplet_workers.redaction import Secret

KEY = "StagingSinkTestKey"


class Dispatched:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int]] = []

    def __call__(self, run_id: str, number: int, file_jobs: int, config: str, operation: int) -> None:
        self.sent.append((run_id, number, file_jobs))


def _stage(fleet: Fleet, w: MemoryWorld, spec: RunSpec) -> tuple[str, Dispatched, StagingSink, bool]:
    run_id = f"sink-{uuid.uuid4().hex[:8]}"
    store = fleet.store(run_id)
    store.open(spec.config.name, spec.index, 0.0)
    sent = Dispatched()
    steps = open_steps(spec, w.res())
    sink = StagingSink(store, spec, steps, sent)
    try:
        pushed = push(spec, w.res(), steps, sink)
    finally:
        steps.close()
    return run_id, sent, sink, pushed.ended


def _commit_staged(fleet: Fleet, w: MemoryWorld, spec: RunSpec, run_id: str, numbers: list[int]) -> None:
    for number in numbers:
        batch = fleet.store(run_id).batch(number)
        assert batch is not None
        outcome = commit_batch(spec, w.res(), batch)
        assert outcome.committed, outcome.errors


def test_staging_sink_stages_encrypted_batches_and_dispatches_each_as_it_is_cut(fleet: Fleet) -> None:
    w = memory_world(rows=5)
    spec = w.spec(encrypt=Encryption(fields=("name",), key=Secret(KEY)))
    run_id, sent, sink, ended = _stage(fleet, w, spec)
    assert not ended and sink.last == 3 and [n for _, n, _ in sent.sent] == [1, 2, 3]
    assert w.commits() == 0  # nothing is committed by the planner
    meta = fleet.store(run_id).meta()
    assert meta is not None and (meta.state, meta.batches, meta.plan["insert"]) == (DISPATCHED, 3, 5)
    raw = fleet.redis.get(keys.batch(run_id, 1))
    assert raw is not None and '"name":"n1"' not in raw  # no plaintext of an encrypted field in Redis
    staged = orjson.loads(raw)["entries"]
    assert [crypto.decrypt(e["data"]["name"], KEY) for e in staged] == ["n1", "n2"]
    assert [e["key"] for e in staged] == [1, 2]  # the rows' keys travel with them

    w.api.fail_next("commit", kind="unknown", applied=True)  # a commit task's answer is lost
    _commit_staged(fleet, w, spec, run_id, [1, 2, 3])
    assert sorted(Counter(e["id"] for e in w.entries()).values()) == [1] * 5
    assert sorted(crypto.decrypt(e["name"], KEY) for e in w.entries()) == [f"n{i}" for i in range(1, 6)]


def test_staging_sink_lists_each_batch_file_jobs_once(fleet: Fleet) -> None:
    w = memory_world(rows=3)
    for row in w.rows:
        row["pic"] = f"/srv/pics/{row['id']}.png"
    spec = w.spec(files=(FileColumn(column="pic", type="local"),))
    run_id, sent, _sink, _ended = _stage(fleet, w, spec)
    assert [(n, jobs) for _, n, jobs in sent.sent] == [(1, 2), (2, 1)]
    staged = fleet.store(run_id).staged(1)
    assert staged is not None
    assert [(job.entry, job.column, job.location, job.key) for job in staged[1]] == [
        (0, "pic", "/srv/pics/1.png", 1), (1, "pic", "/srv/pics/2.png", 2)]
    assert fleet.store(run_id).meta().file_jobs == {1: 2, 2: 1}  # type: ignore[union-attr]


def test_nothing_to_commit_ends_the_run_in_the_planner(fleet: Fleet) -> None:
    w = memory_world(rows=2)
    spec = w.spec()
    first, _, _, _ = _stage(fleet, w, spec)
    _commit_staged(fleet, w, spec, first, [1])
    _, sent, sink, ended = _stage(fleet, w, spec)
    assert ended and sink.handed == 0 and sent.sent == []
    assert w.lines.count("Nothing to commit.") == 1
    assert w.lines.count("Sync finished. 0 data source entries have been affected.") == 1
