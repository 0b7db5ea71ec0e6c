"""The foreground agent: run a config's operations once, in order, in this process.

It opens the resources (API client, database), checks the token, and runs each operation's spec
through :func:`run_operation` (a push with a :class:`~.sinks.LocalSink`, or a pull). The fleet's
planning task runs the same :func:`run_operation` for what it does not fan out (dry runs, pulls).
"""

from __future__ import annotations

from collections.abc import Sequence

from fliplet_workers.config.model import Config
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.logs import OperationLog, for_config
from fliplet_workers.logs import flush as flush_logs
from fliplet_workers.pipeline.connect import authenticate, connect_client, connect_database
from fliplet_workers.pipeline.marks import FileMarks, MarkStore
from fliplet_workers.pipeline.plan import ProgressFactory
from fliplet_workers.pipeline.pull import run_pull
from fliplet_workers.pipeline.push import run_push
from fliplet_workers.pipeline.spec import Resources, RunSpec


def run_operation(spec: RunSpec, res: Resources, progress: ProgressFactory | None = None) -> RunSummary:
    if spec.op.type == "pull":
        return run_pull(spec, res)
    return run_push(spec, res, progress)


def run_config(config: Config, *, dry_run: bool = False, log: OperationLog | None = None,
               only: Sequence[int] | None = None, progress: ProgressFactory | None = None,
               full: bool = False, marks: MarkStore | None = None) -> list[RunSummary]:
    """Run the config's operations once, in order (all, or the indexes in ``only``). ``full``: the
    incremental operations compare every row (``start --full``); their watermarks are kept in
    ``marks`` (default: the state file next to the log file)."""
    log = log or for_config(config.name)
    client = connect_client(config, log)
    db = None
    try:
        db = connect_database(config, log)
        authenticate(client, log)
        if marks is None and any(op.incremental for op in config.operations):
            marks = FileMarks()
        res = Resources(api=client, log=log, db=db, marks=marks)
        summaries = []
        for index, op in enumerate(config.operations):
            if only is not None and index not in only:
                continue
            log.info(f"Running operation {index + 1} of {len(config.operations)}: {op.label}")
            spec = RunSpec(config=config, index=index, dry_run=dry_run or config.is_dry_run, full=full)
            summaries.append(run_operation(spec, res, progress))
        log.info("Finished to run all operations.")
        return summaries
    finally:
        client.close()
        if db is not None:
            db.close()
        flush_logs()  # buffered log lines out before the caller prints a summary (or the error)
