"""One run of one operation, end to end: the glue between the pure core and the adapters.

The foreground agent calls :func:`run_config`; the fleet calls the same step functions
(:func:`stream_push`, :func:`commit_batch`, :func:`finish`) from its tasks, so both behave alike.
Messages use the wording of the original agent's log table.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import requests

from fliplet_workers.config.model import Config, Operation
from fliplet_workers.core import guard
from fliplet_workers.core.batches import Batch, BatchCutter
from fliplet_workers.core.diff import Change, DiffOptions, Planner, Tally, check_columns, index_remote
from fliplet_workers.core.retry import CommitOutcome, RetryPolicy, commit_with_retries, settle_time
from fliplet_workers.core.rows import gc_paused
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import AgentError, ColumnError, DeleteLimitError
from fliplet_workers.fliplet.client import USER_AGENT, FlipletClient
from fliplet_workers.logs import OperationLog, for_config
from fliplet_workers.logs import flush as flush_logs
from fliplet_workers.sources.context import SourceContext, iter_source_rows, open_database

Prepare = Callable[[Batch], Batch]
#: Rows are reported to a :class:`Progress` every this many (and once at the end of the source).
PROGRESS_ROWS = 1000


class Progress(Protocol):
    """What a push reports as it goes (the CLI draws it as a progress display on a terminal)."""

    def expect(self, remote_entries: int) -> None:
        """The remote entries are indexed: their number is the best guess of the rows to come."""

    def rows(self, judged: int) -> None:
        """This many source rows have been read and judged so far."""

    def cut(self) -> None:
        """One more batch has been cut (and handed to a commit thread)."""

    def committed(self) -> None:
        """One more batch has been committed (or has failed for good)."""

    def close(self) -> None:
        """The push has ended (also after an error)."""


#: Called once per push operation; returns what that push reports to.
ProgressFactory = Callable[[], Progress]


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
    #: For ``onSync`` (kept only when the operation has one): the entries the server applied, as sent
    #: (``{id?, data}``), and its answers to the commit requests.
    committed_entries: list[dict[str, Any]] = field(default_factory=list)
    commit_responses: list[dict[str, Any]] = field(default_factory=list)
    #: State that extensions keep for the length of a run (file upload cache, the encryption key).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def op(self) -> Operation:
        return self.config.operations[self.index]

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(retries=self.config.retries, delay=self.config.retry_delay,
                           settle=settle_time(self.config.timeout))


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
    if op.primary_column is not None:
        _warn_duplicates(run, op.primary_column, remote.duplicates(op.primary_column))
    elif op.mode == "replace" and remote.count:
        verdict = guard.judge_deletes(remote.count, remote.count, op.delete_limit)
        if not verdict.ok:
            assert verdict.allowed is not None
            raise DeleteLimitError(guard.unkeyed_replace_message(remote.count, verdict.allowed, verdict.default))
    note = run.log.debug if run.log.isEnabledFor(logging.DEBUG) else None
    return Planner(remote, options, note)


def _warn_duplicates(run: OperationRun, column: str, duplicates: Sequence[Any]) -> None:
    """Name each key that several entries share (the first 20, then how many more)."""
    for duplicate in duplicates[:20]:
        run.log.warning(duplicate.warning(column))
    if len(duplicates) > 20:
        extra = sum(len(d.extra) for d in duplicates)
        run.log.warning(f"{len(duplicates) - 20} more primary keys are shared by several entries; "
                        f"{extra} entries in all are to be deleted as duplicates (the oldest of each key kept).")


def _check_columns(run: OperationRun, planner: Planner, row: Mapping[str, Any]) -> None:
    """The first row's columns against the options that name one: a missing primary column stops the
    run before anything is sent (:class:`ColumnError`); the others warn."""
    where = "the query's result" if run.op.query is not None else "the source's rows"
    check = check_columns([str(name) for name in row], planner.options, where)
    for warning in check.warnings:
        run.log.warning(warning)
    if check.error is not None:
        raise ColumnError(check.error)


def _judged_deletes(run: OperationRun, tally: Tally, deletes: list[int]) -> list[int]:
    """The deletions that may be sent: all of them, or none when the delete guard refuses them or
    every source row was skipped (the run then fails; see :func:`summarise_plan`)."""
    if not deletes:
        return deletes
    verdict = guard.judge_deletes(len(deletes), tally.remote, run.op.delete_limit)
    skipped_all = tally.rows > 0 and len(tally.skips) >= tally.rows
    if verdict.ok and not skipped_all:
        return deletes
    tally.withheld = len(deletes)
    tally.delete -= len(deletes)
    if not verdict.ok:
        tally.delete_allowed = verdict.allowed if verdict.allowed is not None else -1
        tally.delete_default = verdict.default
    return []


def stream_push(run: OperationRun, on_batch: Callable[[Batch], None], first_batch: int = 1,
                progress: Progress | None = None) -> Tally:
    """Remote entries → index; source rows → changes → batches, each handed to ``on_batch`` as soon
    as it is full, so that committing overlaps reading the source. Returns what the plan amounted to.
    Batches are numbered from ``first_batch`` (the fleet continues an interrupted run that way).

    Two safety checks (issue 7): the first row's columns are checked before anything is sent, and
    every deletion is held until the source has been read to the end, then judged at once by the
    delete guard (:mod:`fliplet_workers.core.guard`): above the limit none is sent."""
    op = run.op
    planner = _planner(run)
    if progress is not None:
        progress.expect(planner.remote.count)
    cutter = BatchCutter(op.batch_size, op.primary_column, first_number=first_batch)
    ctx = SourceContext(db=run.db, http=requests.Session(), config=run.config)
    held: list[int] = []
    try:
        with gc_paused():
            for row in iter_source_rows(op, ctx):
                if planner.number == 0:
                    _check_columns(run, planner, row)
                change = planner.add(row)
                if progress is not None and not planner.number % PROGRESS_ROWS:
                    progress.rows(planner.number)
                if change is None:
                    continue
                if change.kind == "delete" and change.entry_id is not None:
                    held.append(change.entry_id)
                    continue
                batch = cutter.add(change)
                if batch is not None:
                    on_batch(batch)
            if progress is not None:
                progress.rows(planner.number)
            run.log.debug("Successfully fetched data from the source.")
            held.extend(planner.finish())
            for entry_id in _judged_deletes(run, planner.tally, held):
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
    withheld = f" ({counts['withheld']} deletions held back)" if counts["withheld"] else ""
    run.log.info(f"Plan: {counts['insert']} to insert, {counts['update']} to update, {counts['delete']} to "
                 f"delete{withheld}, {counts['unchanged']} unchanged, {counts['skipped']} skipped.")
    return planner.tally


def plan_all(run: OperationRun) -> tuple[Tally, list[Batch]]:
    """Every batch of the run, kept in memory (a dry run shows them all). Sends nothing."""
    batches: list[Batch] = []
    tally = stream_push(run, batches.append)
    return tally, batches


def commit_batch(run: OperationRun, batch: Batch, *, start_unknown: bool = False,
                 on_attempt: Callable[[int, str | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> CommitOutcome:
    """Prepare (files, encryption) and commit one batch with retries that never duplicate inserts.
    (``clock``: see ``commit_with_retries``; the fleet dates a dead worker's attempt in the past.)

    With an ``onSync``, the server's answers and the entries it applied (answered, or found by the
    lookup after an unanswered commit) are kept on ``run`` for it (list appends: thread-safe)."""
    op = run.op
    prepared = run.prepare(batch) if run.prepare else batch
    body_extra = (op.run_hooks, op.merge)
    wanted = op.on_sync is not None

    def send(part: Batch) -> None:
        response = run.client.commit(op.datasource_id, part.body(*body_extra), answer=wanted)
        if wanted:
            run.commit_responses.append(response)

    def find_existing(keys: list[Any]) -> list[Any]:
        assert op.primary_column is not None
        return run.client.find_keys(op.datasource_id, op.primary_column, keys)

    def find_updated(updates: list[dict[str, Any]]) -> list[Any]:
        assert op.primary_column is not None
        return run.client.find_applied_updates(op.datasource_id, op.primary_column, updates)

    def log(level: str, message: str) -> None:
        getattr(run.log, level)(message)

    return commit_with_retries(prepared, send, find_existing if op.primary_column else None, run.policy,
                               log=log, start_unknown=start_unknown, on_attempt=on_attempt,
                               on_applied=run.committed_entries.extend if wanted else None,
                               find_updated=find_updated if op.primary_column else None, clock=clock)


def add_outcome(summary: RunSummary, outcome: CommitOutcome) -> None:
    summary.inserted += outcome.inserted
    summary.updated += outcome.updated
    summary.deleted += outcome.deleted
    summary.skipped += outcome.rejected_entries
    summary.errors.extend(outcome.errors)
    summary.retries += max(0, outcome.attempts - 1)
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
    """Add the plan to the summary: skipped rows are errors (already logged, one each), and a plan
    that skipped every row or was refused its deletions fails the run."""
    summary.unchanged = tally.unchanged
    summary.skipped += len(tally.skips)
    summary.batches = batches
    summary.errors[:0] = [skip.message for skip in tally.skips]
    summary.logged_errors += len(tally.skips)
    fail_plan(summary, tally.counts())


def fail_plan(summary: RunSummary, counts: Mapping[str, int], *, rows_listed: bool = True) -> None:
    """Fail the summary for what the plan's counts say went wrong (:func:`guard.plan_failures`).
    The fleet's finalize step has only the counts: ``rows_listed=False`` adds one line for its
    skipped rows (each was logged by the planner)."""
    if not rows_listed and counts.get("skipped"):
        summary.errors.append(f"{counts['skipped']} source row(s) were skipped for a missing, duplicate or "
                              "invalid primary key value (each is logged with its reason).")
    failures = guard.plan_failures(counts)
    summary.errors.extend(failures)
    if failures:
        summary.ok = False


def run_push(run: OperationRun, progress: ProgressFactory | None = None) -> RunSummary:
    started = time.monotonic()
    summary = RunSummary(config=run.config.name, operation=run.index, dry_run=run.dry_run)
    if run.dry_run:
        tally, batches = plan_all(run)
        summarise_plan(summary, tally, len(batches))
        dump_dry_run(run, batches)
        counts = tally.counts()
        summary.inserted, summary.updated, summary.deleted = counts["insert"], counts["update"], counts["delete"]
        for error in summary.errors[summary.logged_errors:]:  # no ``finish`` in a dry run: say why it fails
            run.log.error(f"Dry run: the real run would fail: {error}")
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
    shown = progress() if progress else None
    pending: deque[Future[CommitOutcome]] = deque()

    def collect(wait_for: int) -> None:
        while len(pending) > wait_for:
            add_outcome(summary, pending.popleft().result())
            if shown is not None:
                shown.committed()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(batch: Batch) -> None:
            summary.batches += 1
            pending.append(pool.submit(commit_batch, run, batch))
            if shown is not None:
                shown.cut()
            collect(2 * workers)

        try:
            tally = stream_push(run, submit, progress=shown)
            collect(0)
        finally:
            for future in pending:
                future.cancel()
            if shown is not None:
                shown.close()
    batches = summary.batches
    summarise_plan(summary, tally, batches)
    return tally


def finish(run: OperationRun, summary: RunSummary) -> None:
    """Log the end of a push and call the code config's ``onSync``."""
    for error in summary.errors[summary.logged_errors:]:  # skipped rows were logged as they were met
        run.log.critical(f"Cannot sync data to Fliplet servers: {error}")
    run.log.info(f"Sync finished. {summary.affected} data source entries have been affected.")
    if run.op.on_sync is not None and not run.dry_run:
        # As the original: ``commits`` is the list of entries sent ({id?, data}); our extras beside it.
        result = {"commits": run.committed_entries, "summary": summary.to_dict(),
                  "responses": run.commit_responses}
        try:
            run.op.on_sync(result)
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
        flush_logs()  # buffered log lines out before the caller prints a summary (or the error)
