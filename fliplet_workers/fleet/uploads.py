"""The fleet's file step: one task per file (``fliplet.upload_file``), its result kept for the commit.

The file jobs of a batch were listed once, by the planner, and staged with the batch
(:meth:`~fliplet_workers.fleet.staging.RunStore.staged`); an upload task runs one of them with the
pipeline's :class:`~fliplet_workers.pipeline.steps.files.FileStep`, and the commit task rewrites the
batch from the results (uploading itself whatever result is missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from fliplet_workers.core.batches import Batch
from fliplet_workers.fleet import keys as fleet_keys
from fliplet_workers.fleet.runtime import Fleet
from fliplet_workers.fleet.worker import shared_client
from fliplet_workers.logs import for_config
from fliplet_workers.pipeline.spec import Resources, RunSpec
from fliplet_workers.pipeline.steps.chain import file_step
from fliplet_workers.pipeline.steps.files import FileJob, FileResult, apply_file_results
from fliplet_workers.redaction import redact


def upload(fleet: Fleet, run_id: str, number: int, job: int, config_name: str, operation: int) -> dict[str, Any]:
    """Upload file ``job`` of batch ``number`` and keep the result for the commit step (once)."""
    head = {"run_id": run_id, "config": config_name, "operation": operation, "batch": number, "job": job}
    key = fleet_keys.file_result(run_id, number, job)
    if fleet.redis.exists(key):
        return head | {"uploaded": True, "again": True}
    log = for_config(config_name)
    store = fleet.store(run_id)
    meta, staged = store.meta(), store.staged(number)
    if meta is None or staged is None or job >= len(staged[1]):
        return head | {"uploaded": False, "reason": "the run's staged data is gone"}
    lock = fleet.run_lock(meta.config, meta.operation)
    if not lock.carry_on(run_id):
        return head | {"uploaded": False, "reason": "the run was superseded"}
    try:
        config = fleet.registry.load(meta.config)
        spec = RunSpec(config=config, index=meta.operation)
        step = file_step(spec, Resources(api=shared_client(config), log=log))
        try:
            result = step.upload_one(staged[1][job])
        finally:
            step.close()
    except Exception as error:  # not kept: the commit step uploads whatever is missing itself
        log.error(f"Batch {number}: file {job + 1} could not be uploaded: {type(error).__name__}: "
                  f"{redact(str(error))}")
        return head | {"uploaded": False, "reason": redact(str(error))}
    fleet.redis.set(key, orjson.dumps(result.to_dict()), ex=fleet.settings.run_ttl_s)
    return head | {"uploaded": result.ok, "error": result.error}


def apply_uploads(fleet: Fleet, spec: RunSpec, res: Resources, run_id: str, batch: Batch,
                  jobs: Sequence[FileJob]) -> tuple[Batch, int]:
    """The batch with its file columns rewritten from the upload steps' results (a missing result is
    uploaded here), and how many files failed."""
    if not jobs:
        return batch, 0
    raw = fleet.redis.mget([fleet_keys.file_result(run_id, batch.number, i) for i in range(len(jobs))])
    results: list[FileResult | None] = [None if data is None else FileResult.from_dict(orjson.loads(data))
                                        for data in raw]
    missing = [i for i, result in enumerate(results) if result is None]
    if missing:
        step = file_step(spec, res)
        try:
            for i in missing:
                results[i] = step.upload_one(jobs[i])
        finally:
            step.close()
    done = [result for result in results if result is not None]
    return apply_file_results(batch, jobs, done, res.log), sum(1 for r in done if not r.ok)
