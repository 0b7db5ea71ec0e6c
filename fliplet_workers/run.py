"""One run of one operation, end to end: the glue between the pure core and the adapters.

The foreground agent calls :func:`run_config`; the fleet calls the same step functions
(:func:`stream_push`, :func:`commit_batch`, :func:`finish`) from its tasks, so both behave alike.
Messages use the wording of the original agent's log table.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

from fliplet_workers.config.model import Config, Operation
from fliplet_workers.core.batches import Batch, BatchCutter
from fliplet_workers.core.diff import Change, DiffOptions, Planner, Tally, index_remote
from fliplet_workers.core.retry import CommitOutcome, RetryPolicy, commit_with_retries
from fliplet_workers.core.rows import gc_paused
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import AgentError
from fliplet_workers.fliplet.client import USER_AGENT, FlipletClient
from fliplet_workers.logs import OperationLog, for_config
from fliplet_workers.sources.context import SourceContext, iter_source_rows, open_database

Prepare = Callable[[Batch], Batch]
#: Given the number of batches (None: not known yet), returns a function called once per committed
#: batch (a progress bar).
ProgressFactory = Callable[[int | None], Callable[[int], None]]


@dataclass
class OperationRun:
    """Everything one operation's run needs, built once and passed to each step."""

    config: Config
    index: int
    client: FlipletClient
    log: OperationLog
    dry_run: bool = False
    db: Any = None
    prepare: Prepare | None = None  # files upload + encryption, set by ``extensions.attach``
    decode_remote: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    commit_responses: list[dict[str, Any]] = field(default_factory=list)
    #: State that extensions keep for the length of a run (file upload cache, the encryption key).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def op(self) -> Operation:
        return self.config.operations[self.index]

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(retries=self.config.retries, delay=self.config.retry_delay)


def connect_client(config: Config, log: OperationLog | None = None) -> FlipletClient:
    client = FlipletClient(config.auth_token, config.api_url, ca_bundle=config.ca_bundle, timeout=config.timeout)
    if log is not None:
        log.info(f"User Agent for outgoing HTTP requests has been set to {USER_AGENT}")
        log.debug(f"Regional URL has been set to {client.base_url}")
    return client


def authenticate(client: FlipletClient, log: OperationLog) -> dict[str, Any]:
    log.info("Authenticating with Fliplet API...")
    user = client.user()
    name = user.get("email") or user.get("fullName") or "unknown user"
    log.info(f"Authentication has been verified successfully. You're logged in as {name}")
    return user


def connect_database(config: Config, log: OperationLog) -> Any:
    if config.database is None:
        return None
    log.info("Initialising connection with source database...")
    db = open_database(config)
    log.info("Connection has been established successfully.")
    return db


def diff_options(run: OperationRun) -> DiffOptions:
    op = run.op
    ignore = frozenset(f.column for f in op.files) | frozenset(f"{f.column}MediaFileId" for f in op.files)
    return DiffOptions(
        primary_column=op.primary_column,
        case_insensitive=op.case_insensitive_primary_column,
        timestamp_column=op.timestamp_column,
        delete_column=op.delete_column,
        mode=op.mode,
        ignore_columns=ignore,
        decode_remote=run.decode_remote,
    )


def _planner(run: OperationRun) -> Planner:
    """Index the remote entries (the source rows are then judged one by one as they stream in)."""
    op = run.op
    options = diff_options(run)
    if op.primary_column is None:
        run.log.warning(
            "A primary key has not been set, which means rows will always be appended to the data source "
            "whenever this script runs. To allow updating rows, please define a primary key to be used for "
            "the comparison.")
    run.log.info("Fetching data via Fliplet API...")
    needed = op.primary_column is not None or op.mode == "replace"  # else every row is appended anyway
    remote = index_remote(run.client.iter_entries(op.datasource_id) if needed else (), options)
    run.log.debug(f"Fetched {remote.count} entries from the data source.")
    note = run.log.debug if run.log.isEnabledFor(logging.DEBUG) else None
    return Planner(remote, options, note)


def stream_push(run: OperationRun, on_batch: Callable[[Batch], None], first_batch: int = 1) -> Tally:
    """Remote entries → index; source rows → changes → batches, each handed to ``on_batch`` as soon
    as it is full, so that committing overlaps reading the source. Returns what the plan amounted to.
    Batches are numbered from ``first_batch`` (the fleet continues an interrupted run that way)."""
    op = run.op
    planner = _planner(run)
    cutter = BatchCutter(op.batch_size, op.primary_column, first_number=first_batch)
    ctx = SourceContext(db=run.db, http=requests.Session(), config=run.config)
    try:
        with gc_paused():
            for row in iter_source_rows(op, ctx):
                change = planner.add(row)
                batch = cutter.add(change) if change is not None else None
                if batch is not None:
                    on_batch(batch)
            run.log.debug("Successfully fetched data from the source.")
            for entry_id in planner.finish():
                batch = cutter.add(Change("delete", entry_id=entry_id))
                if batch is not None:
                    on_batch(batch)
            last = cutter.flush()
            if last is not None:
                on_batch(last)
    finally:
        ctx.http.close()
    for skip in planner.tally.skips:
        run.log.error(skip.message)
    counts = planner.tally.counts()
    run.log.info(f"Plan: {counts['insert']} to insert, {counts['update']} to update, {counts['delete']} to "
                 f"delete, {counts['unchanged']} unchanged, {counts['skipped']} skipped.")
    return planner.tally


def plan_all(run: OperationRun) -> tuple[Tally, list[Batch]]:
    """Every batch of the run, kept in memory (a dry run shows them all). Sends nothing."""
    batches: list[Batch] = []
    tally = stream_push(run, batches.append)
    return tally, batches


def commit_batch(run: OperationRun, batch: Batch, *, start_unknown: bool = False,
                 on_attempt: Callable[[int, str | None], None] | None = None) -> CommitOutcome:
    """Prepare (files, encryption) and commit one batch with retries that never duplicate inserts."""
    op = run.op
    prepared = run.prepare(batch) if run.prepare else batch
    body_extra = (op.run_hooks, op.merge)

    def send(part: Batch) -> None:
        wanted = op.on_sync is not None
        response = run.client.commit(op.datasource_id, part.body(*body_extra), answer=wanted)
        if wanted:
            run.commit_responses.append(response)

    def find_existing(keys: list[Any]) -> list[Any]:
        assert op.primary_column is not None
        return run.client.find_keys(op.datasource_id, op.primary_column, keys)

    def log(level: str, message: str) -> None:
        getattr(run.log, level)(message)

    return commit_with_retries(prepared, send, find_existing if op.primary_column else None, run.policy,
                               log=log, start_unknown=start_unknown, on_attempt=on_attempt)


def add_outcome(summary: RunSummary, outcome: CommitOutcome) -> None:
    summary.inserted += outcome.inserted
    summary.updated += outcome.updated
    summary.deleted += outcome.deleted
    summary.skipped += outcome.rejected_entries
    summary.errors.extend(outcome.errors)
    summary.ok = summary.ok and outcome.committed


def dump_dry_run(run: OperationRun, batches: list[Batch]) -> None:
    """Log the commits as they would be sent (encrypted, with file locations) and the deletes."""
    op = run.op
    prepared = [run.prepare(b) if run.prepare else b for b in batches if b.entries]
    commits = [{k: v for k, v in b.body(op.run_hooks, op.merge).items() if k != "delete"} for b in prepared]
    deletes = [entry_id for b in batches for entry_id in b.delete]
    run.log.info("Dry run mode is enabled. Here's a dump of the commit log we would have been sent to the "
                 "Fliplet API: " + orjson.dumps(commits).decode())
    run.log.info("Entries to delete: " + orjson.dumps(deletes).decode())


def summarise_plan(summary: RunSummary, tally: Tally, batches: int) -> None:
    summary.unchanged = tally.unchanged
    summary.skipped += len(tally.skips)
    summary.batches = batches


def run_push(run: OperationRun, progress: ProgressFactory | None = None) -> RunSummary:
    started = time.monotonic()
    summary = RunSummary(config=run.config.name, operation=run.index, dry_run=run.dry_run)
    if run.dry_run:
        tally, batches = plan_all(run)
        summarise_plan(summary, tally, len(batches))
        dump_dry_run(run, batches)
        counts = tally.counts()
        summary.inserted, summary.updated, summary.deleted = counts["insert"], counts["update"], counts["delete"]
    else:
        tally = _commit_while_reading(run, summary, progress)
        if tally.is_empty:
            run.log.info("Nothing to commit.")
    summary.seconds = round(time.monotonic() - started, 3)
    if not run.dry_run:
        finish(run, summary)
    return summary


def _commit_while_reading(run: OperationRun, summary: RunSummary, progress: ProgressFactory | None) -> Tally:
    """Commit each batch on a pool of ``concurrency`` threads as soon as it is cut. At most twice that
    many batches wait, so memory stays bounded however large the source."""
    workers = max(1, run.op.concurrency)
    tick = progress(None) if progress else None
    pending: deque[Future[CommitOutcome]] = deque()

    def collect(wait_for: int) -> None:
        while len(pending) > wait_for:
            add_outcome(summary, pending.popleft().result())
            if tick:
                tick(1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(batch: Batch) -> None:
            summary.batches += 1
            pending.append(pool.submit(commit_batch, run, batch))
            collect(2 * workers)

        try:
            tally = stream_push(run, submit)
            collect(0)
        finally:
            for future in pending:
                future.cancel()
    batches = summary.batches
    summarise_plan(summary, tally, batches)
    return tally


def finish(run: OperationRun, summary: RunSummary) -> None:
    """Log the end of a push and call the code config's ``onSync``."""
    for error in summary.errors:
        run.log.critical(f"Cannot sync data to Fliplet servers: {error}")
    run.log.info(f"Sync finished. {summary.affected} data source entries have been affected.")
    if run.op.on_sync is not None and not run.dry_run:
        try:
            run.op.on_sync({"commits": run.commit_responses, "summary": summary.to_dict()})
        except Exception as error:  # the user's callback must not turn a good sync into a failure
            run.log.error(f"The onSync callback failed: {type(error).__name__}: {error}")


def run_pull(run: OperationRun) -> RunSummary:
    started = time.monotonic()
    op = run.op
    summary = RunSummary(config=run.config.name, operation=run.index, dry_run=run.dry_run)
    body: dict[str, Any] = {}
    for name in ("where", "join", "distinct"):
        if getattr(op, name) is not None:
            body[name] = getattr(op, name)
    if op.attributes is not None:
        body["attributes"] = list(op.attributes)
    run.log.info("Fetching data via Fliplet API...")
    entries = run.client.query(op.datasource_id, body)
    run.log.debug(f"Fetched {len(entries)} entries from the data source.")
    if op.action is None:
        run.log.info(orjson.dumps(entries).decode())
    elif run.dry_run:
        run.log.info(f"Dry run: the pull action would receive {len(entries)} entries.")
    else:
        try:
            op.action(entries, run.db)
        except AgentError:
            raise
        except Exception as error:
            summary.ok = False
            summary.errors.append(f"The pull action failed: {type(error).__name__}: {error}")
            run.log.error(summary.errors[-1])
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def run_operation(run: OperationRun, progress: ProgressFactory | None = None) -> RunSummary:
    from fliplet_workers import extensions

    if run.op.type == "pull":
        return run_pull(run)
    try:
        extensions.attach(run)
        summary = run_push(run, progress)
        summary.file_errors = len(extensions.file_errors(run))
        return summary
    finally:
        extensions.detach(run)


def run_config(config: Config, *, dry_run: bool = False, log: OperationLog | None = None,
               only: Sequence[int] | None = None, progress: ProgressFactory | None = None) -> list[RunSummary]:
    """Run the config's operations once, in order (all, or the indexes in ``only``)."""
    log = log or for_config(config.name)
    client = connect_client(config, log)
    db = None
    try:
        db = connect_database(config, log)
        authenticate(client, log)
        summaries = []
        for index, op in enumerate(config.operations):
            if only is not None and index not in only:
                continue
            log.info(f"Running operation {index + 1} of {len(config.operations)}: {op.label}")
            run = OperationRun(config=config, index=index, client=client, log=log,
                               dry_run=dry_run or config.is_dry_run, db=db)
            summaries.append(run_operation(run, progress))
        log.info("Finished to run all operations.")
        return summaries
    finally:
        client.close()
        if db is not None:
            db.close()
