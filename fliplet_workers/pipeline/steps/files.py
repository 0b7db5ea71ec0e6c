"""The file step of a push: upload the files a batch's rows name, rewrite the rows.

A push operation's ``files`` option lists columns whose values name files. For each entry of a batch
(rows being inserted or updated: unchanged rows are never read), each such value becomes a
:class:`FileJob`; :meth:`FileStep.upload_one` reads the file (:mod:`.fetch`) and uploads it (or reuses
the folder's file with the same md5, see :mod:`fliplet_workers.fliplet.media`);
:func:`apply_file_results` then rewrites the entries: the column becomes the Fliplet ``url`` and
``<column>MediaFileId`` its id. A file that cannot be read or uploaded is logged with the row's key
and the location, its column is dropped from that row (so ``merge`` keeps the remote value) and the
row is still synced.

The three steps are separate so that the fleet can run one task per file and apply the results in
its commit task; :class:`FileJob` and :class:`FileResult` are plain JSON (no secrets: a job names the
``files`` option by index, the headers and passwords stay in the config).

A :class:`FileStep` is built once per run and owns what the run's uploads share: the media folder,
one download session, the errors so far, and the politeness bound: at most ``concurrency`` files are
read or uploaded at a time in a run, across all its batches (a semaphore of the step, not of the
process), which also bounds what one remote host sees. Uploads stream the file
(:class:`~fliplet_workers.fliplet.media.MultipartBody`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fliplet_workers.config.model import Operation
from fliplet_workers.core.batches import Batch
from fliplet_workers.core.crypto import value_text
from fliplet_workers.errors import AgentError, FileFetchError
from fliplet_workers.fliplet.api import FlipletApi
from fliplet_workers.fliplet.media import MediaFolder
from fliplet_workers.fliplet.sessions import new_session
from fliplet_workers.pipeline.steps.fetch import fetch, os_reason, safe_name
from fliplet_workers.redaction import redact

__all__ = [
    "FileJob",
    "FileResult",
    "FileStep",
    "apply_file_results",
    "failure_message",
    "file_jobs",
    "shown_location",
    "upload_name",
]


class ErrorLog(Protocol):
    def error(self, msg: str) -> None: ...


class StepLog(Protocol):
    def debug(self, msg: str) -> None: ...

    def error(self, msg: str) -> None: ...




@dataclass(frozen=True)
class FileJob:
    """One file to fetch and upload: which entry of the batch, which column, where the file is.

    ``spec`` is the index of the column's definition in ``op.files`` (its headers and passwords are
    read from the config, never carried here). ``key`` is the row's primary key value, or ``None``.
    """

    entry: int
    column: str
    location: str
    key: Any
    spec: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FileJob:
        return cls(entry=int(raw["entry"]), column=str(raw["column"]), location=str(raw["location"]),
                   key=raw.get("key"), spec=int(raw["spec"]))


@dataclass(frozen=True)
class FileResult:
    """The outcome of one :class:`FileJob`: the Fliplet ``url`` and ``id``, or an ``error`` text.

    ``uploaded`` is false when a file with the same md5 was already in the folder. ``stage`` says
    where a failure happened: ``"fetch"`` (the file could not be read) or ``"upload"``.
    """

    url: str | None = None
    id: int | None = None
    name: str | None = None
    uploaded: bool = False
    error: str | None = None
    stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.url is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FileResult:
        return cls(**{k: raw.get(k) for k in ("url", "id", "name", "error", "stage")},
                   uploaded=bool(raw.get("uploaded")))


def file_jobs(batch: Batch, op: Operation) -> list[FileJob]:
    """The files named by the batch's entries, in entry order. Empty values name no file."""
    specs: dict[str, int] = {}
    for index, spec in enumerate(op.files):
        specs.setdefault(spec.column, index)  # a column listed twice: the first definition wins
    jobs: list[FileJob] = []
    pk = op.primary_column
    for number, entry in enumerate(batch.entries):
        data = entry.data
        for column, spec_index in specs.items():
            value = data.get(column)
            if value is None or value == "" or isinstance(value, bool):
                continue
            location = value if isinstance(value, str) else str(value_text(value))
            jobs.append(FileJob(entry=number, column=column, location=location.strip(),
                                key=data.get(pk) if pk else None, spec=spec_index))
    return jobs


def apply_file_results(batch: Batch, jobs: Sequence[FileJob], results: Sequence[FileResult],
                       log: ErrorLog | logging.Logger | logging.LoggerAdapter[Any]) -> Batch:
    """A copy of ``batch`` with each job's column set to the file's url and ``<column>MediaFileId``
    to its id, or, for a failed job, the column dropped (and the failure logged at error level)."""
    if len(jobs) != len(results):
        raise ValueError(f"{len(jobs)} file jobs but {len(results)} results")
    changed: dict[int, dict[str, Any]] = {}
    for job, result in zip(jobs, results, strict=True):
        data = changed.get(job.entry)
        if data is None:
            data = changed[job.entry] = dict(batch.entries[job.entry].data)
        if result.ok:
            data[job.column] = result.url
            data[f"{job.column}MediaFileId"] = result.id
        else:
            data.pop(job.column, None)
            log.error(failure_message(job, result))
    entries = [entry.with_data(changed[i]) if i in changed else entry for i, entry in enumerate(batch.entries)]
    return batch.with_entries(entries)


def failure_message(job: FileJob, result: FileResult) -> str:
    """``Unable to fetch file for row <key> (<column>: <location>): <reason>``, with no secrets."""
    verb = "upload" if result.stage == "upload" else "fetch"
    row = f"row {value_text(job.key)}" if job.key is not None else "a row without a primary key"
    return redact(f"Unable to {verb} file for {row} ({job.column}: {shown_location(job.location)}): "
                  f"{result.error or 'unknown error'}")


def shown_location(location: str) -> str:
    """The location as logs may show it: a URL without its user info and with query values hidden
    (signed URLs carry tokens there)."""
    try:
        parts = urlsplit(location)
    except ValueError:
        return redact(location)
    if parts.scheme.lower() not in ("http", "https"):
        return redact(location)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = urlencode([(name, "***") for name, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return redact(urlunsplit((parts.scheme, host, parts.path, query, "")))


# --------------------------------------------------------------------------------------------
# The step: built once per run
# --------------------------------------------------------------------------------------------


class FileStep:
    """What the file uploads of one run share; built once per run (or per fleet task), closed at its end."""

    def __init__(self, op: Operation, api: FlipletApi, log: StepLog, *, ca_bundle: str | None, timeout: float,
                 retry_delay: float, dry_run: bool = False) -> None:
        self.op = op
        self.log = log
        self.concurrency = max(1, op.concurrency)
        self.timeout = timeout
        self.media = MediaFolder(api, note=log.debug, create=not dry_run, retry_delay=retry_delay)
        self.http = new_session(ca_bundle=ca_bundle, pool_size=self.concurrency)
        self.slots = threading.BoundedSemaphore(self.concurrency)
        self._errors: list[str] = []
        self._lock = threading.Lock()

    @property
    def errors(self) -> list[str]:
        """The reasons of the files that could not be read or uploaded in this run so far."""
        with self._lock:
            return list(self._errors)

    def close(self) -> None:
        """Close the download session (safe to call twice)."""
        self.http.close()

    def jobs(self, batch: Batch) -> list[FileJob]:
        return file_jobs(batch, self.op)

    def apply(self, batch: Batch) -> Batch:
        """Upload the batch's files and return the batch with its file columns rewritten."""
        jobs = self.jobs(batch)
        if not jobs:
            return batch
        results = self.upload_all(jobs)
        return self.apply_results(batch, jobs, results)

    def apply_results(self, batch: Batch, jobs: Sequence[FileJob], results: Sequence[FileResult]) -> Batch:
        """:func:`apply_file_results`, keeping the failures among the run's errors."""
        failed = [r.error or "" for r in results if not r.ok]
        if failed:
            with self._lock:
                self._errors.extend(failed)
        return apply_file_results(batch, jobs, results, self.log)

    def upload_one(self, job: FileJob) -> FileResult:
        """Fetch one file and upload it (or reuse the folder's copy). Never raises for a file's failure."""
        spec = self.op.files[job.spec]
        with self.slots:
            try:
                fetched = fetch(spec, job.location, self.http, self.timeout)
            except FileFetchError as error:
                return FileResult(error=error.message, stage="fetch")
            with fetched:
                name = upload_name(fetched.name, job.key)
                try:
                    media, uploaded = self.media.upload(fetched.fileobj, fetched.size, name, fetched.md5,
                                                        fetched.content_type)
                except AgentError as error:
                    return FileResult(error=error.message, stage="upload")
                except OSError as error:  # the file changed or vanished while it was being sent
                    return FileResult(error=os_reason(error), stage="upload")
        if uploaded:
            self.log.debug(f"[FILES] Uploaded {name} ({fetched.size} bytes)")
        else:
            self.log.debug(f"[FILES] File {name} does not need to be synced: the same file is already uploaded "
                           f"as {media.name or media.id}.")
        return FileResult(url=media.url, id=media.id, name=name, uploaded=uploaded)

    def upload_all(self, jobs: Sequence[FileJob]) -> list[FileResult]:
        """:meth:`upload_one` for every job, ``concurrency`` at a time, results in job order."""
        workers = min(self.concurrency, len(jobs))
        if workers <= 1:
            return [self.upload_one(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="files") as pool:
            return list(pool.map(self.upload_one, jobs))


def upload_name(name: str, key: Any) -> str:
    """The uploaded file's name: ``<primary key>-<name>`` for rows with a key, as the original does."""
    if key is None or key == "":
        return name
    return safe_name(f"{value_text(key)}-{name}")
