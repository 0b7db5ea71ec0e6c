"""One pull operation: query the data source, hand the entries to the config's ``action``.

A pull has no batches and no sink; both agents run it as is (the fleet inline in its planning task).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import AgentError
from fliplet_workers.pipeline.spec import Resources, RunSpec


def run_pull(spec: RunSpec, res: Resources) -> RunSummary:
    started = time.monotonic()
    op, log = spec.op, res.log
    summary = RunSummary(config=spec.config.name, operation=spec.index, dry_run=spec.dry_run)
    body: dict[str, Any] = {}
    for name in ("where", "join", "distinct"):
        if getattr(op, name) is not None:
            body[name] = getattr(op, name)
    if op.attributes is not None:
        body["attributes"] = list(op.attributes)
    log.info("Fetching data via Fliplet API...")
    entries = res.api.query(op.datasource_id, body)
    log.debug(f"Fetched {len(entries)} entries from the data source.")
    if op.action is None:
        log.info(orjson.dumps(entries).decode())
    elif spec.dry_run:
        log.info(f"Dry run: the pull action would receive {len(entries)} entries.")
    else:
        try:
            op.action(entries, res.db)
        except AgentError:
            raise
        except Exception as error:
            summary.ok = False
            summary.errors.append(f"The pull action failed: {type(error).__name__}: {error}")
            log.error(summary.errors[-1])
    summary.seconds = round(time.monotonic() - started, 3)
    return summary
