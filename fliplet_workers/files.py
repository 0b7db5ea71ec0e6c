"""Files named in rows: read them (remote, local, SharePoint), upload them to Fliplet, rewrite the rows.

A push operation's ``files`` option lists columns whose values name files. For each entry of a batch
(rows being inserted or updated: unchanged rows are never read), each such value becomes a
:class:`FileJob`; :func:`upload_one` reads the file and uploads it (or reuses the folder's file with the
same md5, see :mod:`fliplet_workers.fliplet.media`); :func:`apply_file_results` then rewrites the
entries: the column becomes the Fliplet ``url`` and ``<column>MediaFileId`` its id. A file that cannot
be read or uploaded is logged with the row's key and the location, its column is dropped from that
row (so ``merge`` keeps the remote value) and the row is still synced.

The three steps are separate so that the fleet can run one task per file and apply the results in
its commit task; :class:`FileJob` and :class:`FileResult` are plain JSON (no secrets: a job names the
``files`` option by index, the headers and passwords stay in the config).

Memory stays flat: downloads are written in 1 MiB chunks to a spooled temporary file (in memory up to
1 MiB, on disk beyond) while their md5 is computed; local files are read in place (one pass for the
md5, one for the upload); uploads stream the file (:class:`~fliplet_workers.fliplet.media.MultipartBody`).

Politeness: at most ``concurrency`` files are read or uploaded at a time in a run, across all its
batches (a semaphore per run), which also bounds what one remote host sees.

Readers:

* ``remote``: http/https ``GET`` with the configured ``headers``, ``timeout`` from the config.
* ``local``: an absolute path, or a name inside ``directory`` (network shares are paths too); a name
  that leads outside the directory (``..``, an absolute path) is refused.
* ``sharepoint``: ``GET`` with the ``username``/``password`` answering the server's challenge: NTLM
  (what the original's sp-request uses on premises; needs the ``requests_ntlm`` package) or Basic.
  Credentials are only sent when the server asks. SharePoint Online's claims/SAML sign-in is not
  supported. ``fileType: inherit`` keeps the file's own name, anything else uploads it as
  ``file.jpg``, as the original does.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth

from fliplet_workers.config.model import FileColumn, Operation
from fliplet_workers.core.batches import Batch
from fliplet_workers.core.crypto import value_text
from fliplet_workers.errors import AgentError, FileFetchError
from fliplet_workers.fliplet.client import USER_AGENT
from fliplet_workers.fliplet.media import MediaFolder
from fliplet_workers.secrets import redact

HttpNtlmAuth: Any
try:  # optional: NTLM for SharePoint on premises
    from requests_ntlm import HttpNtlmAuth
except ImportError:  # pragma: no cover - depends on the environment
    HttpNtlmAuth = None

if TYPE_CHECKING:
    from fliplet_workers.run import OperationRun

__all__ = [
    "FetchedFile",
    "FileJob",
    "FileResult",
    "SharePointAuth",
    "apply_file_results",
    "close_file_state",
    "fetch",
    "file_jobs",
    "file_state",
    "remote_name",
    "resolve_local",
    "upload_all",
    "upload_name",
    "upload_one",
]

CHUNK = 1 << 20
#: Downloads up to this size stay in memory; bigger ones spill to a temporary file.
SPOOL_IN_MEMORY = 1 << 20
SHAREPOINT_DEFAULT_NAME = "file.jpg"
_OCTET = "application/octet-stream"


class ErrorLog(Protocol):
    def error(self, msg: str) -> None: ...


# --------------------------------------------------------------------------------------------
# Jobs and results: the JSON the fleet passes between tasks
# --------------------------------------------------------------------------------------------


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
        data = entry.get("data") or {}
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
            data = changed[job.entry] = dict(batch.entries[job.entry].get("data") or {})
        if result.ok:
            data[job.column] = result.url
            data[f"{job.column}MediaFileId"] = result.id
        else:
            data.pop(job.column, None)
            log.error(failure_message(job, result))
    entries = [{**entry, "data": changed[i]} if i in changed else entry for i, entry in enumerate(batch.entries)]
    return Batch(number=batch.number, entries=entries, delete=batch.delete, insert_keys=batch.insert_keys)


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
# Per-run state: the upload folder, the HTTP session, the concurrency slots
# --------------------------------------------------------------------------------------------


@dataclass
class FileState:
    """What the file steps of one run share. Built once per run, kept on the run object."""

    media: MediaFolder
    http: requests.Session
    slots: threading.BoundedSemaphore
    timeout: float
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        self.http.close()


_STATE = "_fliplet_file_state"
_state_lock = threading.Lock()


def file_state(run: OperationRun) -> FileState:
    """The run's :class:`FileState`, created on first use (thread-safe)."""
    with _state_lock:
        state = run.extras.get(_STATE)
        if state is None:
            concurrency = max(1, run.op.concurrency)
            http = requests.Session()
            http.headers["User-Agent"] = USER_AGENT
            adapter = HTTPAdapter(pool_connections=concurrency, pool_maxsize=concurrency)
            http.mount("http://", adapter)
            http.mount("https://", adapter)
            if run.config.ca_bundle:
                http.verify = run.config.ca_bundle
            media = MediaFolder(run.client, note=run.log.debug, create=not run.dry_run,
                                retry_delay=run.config.retry_delay)
            state = FileState(media=media, http=http, slots=threading.BoundedSemaphore(concurrency),
                              timeout=run.config.timeout)
            run.extras[_STATE] = state
        return state


def close_file_state(run: OperationRun) -> None:
    """Close the run's download session, if file steps ever ran (safe to call twice)."""
    with _state_lock:
        state = run.extras.get(_STATE)
    if state is not None:
        state.close()


# --------------------------------------------------------------------------------------------
# Upload one file, or all of a batch
# --------------------------------------------------------------------------------------------


def upload_one(run: OperationRun, job: FileJob) -> FileResult:
    """Fetch one file and upload it (or reuse the folder's copy). Never raises for a file's failure."""
    state = file_state(run)
    spec = run.op.files[job.spec]
    with state.slots:
        try:
            fetched = fetch(spec, job.location, state.http, state.timeout)
        except FileFetchError as error:
            return FileResult(error=error.message, stage="fetch")
        with fetched:
            name = upload_name(fetched.name, job.key)
            try:
                media, uploaded = state.media.upload(fetched.fileobj, fetched.size, name, fetched.md5,
                                                     fetched.content_type)
            except AgentError as error:
                return FileResult(error=error.message, stage="upload")
            except OSError as error:  # the file changed or vanished while it was being sent
                return FileResult(error=_os_reason(error), stage="upload")
    if uploaded:
        run.log.debug(f"[FILES] Uploaded {name} ({fetched.size} bytes)")
    else:
        run.log.debug(f"[FILES] File {name} does not need to be synced: the same file is already uploaded "
                      f"as {media.name or media.id}.")
    return FileResult(url=media.url, id=media.id, name=name, uploaded=uploaded)


def upload_all(run: OperationRun, jobs: Sequence[FileJob]) -> list[FileResult]:
    """:func:`upload_one` for every job, ``concurrency`` at a time, results in job order."""
    workers = min(max(1, run.op.concurrency), len(jobs))
    if workers <= 1:
        return [upload_one(run, job) for job in jobs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="files") as pool:
        return list(pool.map(lambda job: upload_one(run, job), jobs))


def upload_name(name: str, key: Any) -> str:
    """The uploaded file's name: ``<primary key>-<name>`` for rows with a key, as the original does."""
    if key is None or key == "":
        return name
    return _safe_name(f"{value_text(key)}-{name}")


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


class FetchedFile:
    """A file ready to upload: an open binary file object at its start, its size, md5 and name.

    A context manager: leaving it closes the file object (and deletes a temporary file).
    """

    def __init__(self, fileobj: IO[bytes], size: int, md5: str, name: str, content_type: str) -> None:
        self.fileobj = fileobj
        self.size = size
        self.md5 = md5
        self.name = name
        self.content_type = content_type

    def __enter__(self) -> FetchedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fileobj.close()


def fetch(spec: FileColumn, location: str, http: requests.Session, timeout: float) -> FetchedFile:
    """Read the file ``location`` names, as ``spec`` says. Raises :class:`FileFetchError` with a
    reason that contains no secret."""
    if spec.type == "local":
        return fetch_local(spec, location)
    if spec.type == "remote":
        headers = {str(k): str.__str__(v) for k, v in spec.headers.items()}
        return fetch_remote(location, http, timeout, headers=headers)
    if spec.type == "sharepoint":
        auth = SharePointAuth(spec.username or "", str.__str__(spec.password) if spec.password else "")
        fetched = fetch_remote(location, http, timeout, auth=auth, sharepoint=True)
        if spec.file_type != "inherit":
            fetched.name = SHAREPOINT_DEFAULT_NAME
        fetched.content_type = mimetypes.guess_type(fetched.name)[0] or fetched.content_type
        return fetched
    raise FileFetchError(f"unknown file type '{spec.type}'")


def fetch_local(spec: FileColumn, location: str) -> FetchedFile:
    path = resolve_local(spec, location)
    try:
        fileobj = open(path, "rb")  # noqa: SIM115 - handed to FetchedFile, which closes it
    except OSError as error:
        raise FileFetchError(_os_reason(error)) from None
    try:
        if not os.path.isfile(path):
            raise FileFetchError("not a regular file")
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        while chunk := fileobj.read(CHUNK):
            md5.update(chunk)
            size += len(chunk)
        fileobj.seek(0)
    except FileFetchError:
        fileobj.close()
        raise
    except OSError as error:
        fileobj.close()
        raise FileFetchError(_os_reason(error)) from None
    name = _safe_name(os.path.basename(path))
    return FetchedFile(fileobj, size, md5.hexdigest(), name, mimetypes.guess_type(name)[0] or _OCTET)


def resolve_local(spec: FileColumn, location: str) -> str:
    """The path a local location names: inside ``spec.directory`` when set, else absolute."""
    if not location:
        raise FileFetchError("empty file name")
    if "\x00" in location:
        raise FileFetchError("the file name contains a NUL character")
    if spec.directory:
        base = os.path.abspath(os.path.expanduser(spec.directory))
        if os.path.isabs(location) or os.path.splitdrive(location)[0]:
            raise FileFetchError(f"'{location}' is not a name inside the directory '{spec.directory}'")
        path = os.path.normpath(os.path.join(base, location))
        if os.path.commonpath([base, path]) != base:
            raise FileFetchError(f"'{location}' leads outside the directory '{spec.directory}'")
        return path
    path = os.path.expanduser(location)
    if not os.path.isabs(path):
        raise FileFetchError(f"'{location}' is not an absolute path (set 'directory' to read names "
                             "relative to a folder)")
    return os.path.normpath(path)


def fetch_remote(url: str, http: requests.Session, timeout: float, *, headers: dict[str, str] | None = None,
                 auth: AuthBase | None = None, sharepoint: bool = False) -> FetchedFile:
    """Download ``url`` into a spooled temporary file, computing its md5 on the way."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FileFetchError("not an http:// or https:// URL")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed by FetchedFile
    try:
        with http.get(url, headers=headers, auth=auth, stream=True, timeout=(timeout, timeout)) as response:
            if response.status_code >= 400:
                raise FileFetchError(_status_reason(response, sharepoint))
            md5 = hashlib.md5(usedforsecurity=False)
            size = 0
            for chunk in response.iter_content(CHUNK):
                md5.update(chunk)
                spool.write(chunk)
                size += len(chunk)
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        spool.seek(0)
    except FileFetchError:
        spool.close()
        raise
    except requests.exceptions.Timeout:
        spool.close()
        raise FileFetchError(f"no answer within {timeout:g} seconds") from None
    except requests.exceptions.RequestException as error:
        spool.close()
        raise FileFetchError(_request_reason(error, timeout)) from None
    except OSError as error:  # the temporary file (disk full...)
        spool.close()
        raise FileFetchError(f"cannot write the temporary copy: {_os_reason(error)}") from None
    name = remote_name(url, content_type)
    return FetchedFile(spool, size, md5.hexdigest(), name, content_type or mimetypes.guess_type(name)[0] or _OCTET)


def remote_name(url: str, content_type: str | None) -> str:
    """The URL path's base name plus the extension of ``content_type``, unless it already has one
    for that type (the original always appends it: ``John.jpg.jpeg``)."""
    path = urlsplit(url).path
    base = _safe_name(unquote(path.rstrip("/").rsplit("/", 1)[-1])) if path.strip("/") else "file"
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind or kind == _OCTET:
        return base
    extension = mimetypes.guess_extension(kind)
    if not extension:
        return base
    suffix = os.path.splitext(base)[1].lower()
    if suffix and (suffix in mimetypes.guess_all_extensions(kind) or mimetypes.guess_type(base)[0] == kind):
        return base
    return base + extension


def _safe_name(name: str) -> str:
    """A file name without path separators or control characters (never empty)."""
    cleaned = "".join("_" if ch in "/\\" or ord(ch) < 32 else ch for ch in name).strip()
    return cleaned or "file"


def _status_reason(response: requests.Response, sharepoint: bool) -> str:
    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
    if sharepoint and response.status_code in (401, 403):
        challenge = response.headers.get("WWW-Authenticate", "")
        if "ntlm" in challenge.lower() or "negotiate" in challenge.lower():
            if HttpNtlmAuth is None:
                return reason + " (the server asks for NTLM: install the requests_ntlm package)"
            return reason + " (the SharePoint user name or password was refused)"
        if "basic" in challenge.lower():
            return reason + " (the SharePoint user name or password was refused)"
        host = (urlsplit(response.url).hostname or "").lower()
        if host.endswith(".sharepoint.com"):
            return reason + (" (SharePoint Online sign-in with a user name and password is not supported; "
                             "share the file with a link, or read it as a 'remote' file with headers)")
    return reason


def _request_reason(error: requests.exceptions.RequestException, timeout: float) -> str:
    text = str(error)
    if "timed out" in text.lower():
        return f"no data within {timeout:g} seconds"
    if isinstance(error, requests.exceptions.ConnectionError):
        for mark in ("Name or service not known", "nodename nor servname", "Connection refused",
                     "Connection reset", "Connection aborted", "RemoteDisconnected", "IncompleteRead"):
            if mark in text:
                return f"connection failed ({mark})"
        return "connection failed"
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                          requests.exceptions.InvalidSchema)):
        return "not a valid URL"
    return redact(type(error).__name__)


def _os_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    return redact(error.strerror or str(error))


# --------------------------------------------------------------------------------------------
# SharePoint: answer the server's challenge
# --------------------------------------------------------------------------------------------


class SharePointAuth(AuthBase):
    """Sends the credentials only when the server asks (a 401), in the scheme it asks for.

    NTLM (or Negotiate, answered with NTLM) through ``requests_ntlm`` when installed: that is what
    on-premises SharePoint wants and what the original agent's sp-request speaks. Basic otherwise.
    Waiting for the challenge costs one round trip per file but never sends a password in a scheme
    the server did not ask for. ``username`` may be ``DOMAIN\\user``.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.register_hook("response", self._answer)
        return request

    def _answer(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "").lower()
        if ("ntlm" in challenge or "negotiate" in challenge) and HttpNtlmAuth is not None:
            try:
                answered: requests.Response = HttpNtlmAuth(self.username, self.password).response_hook(
                    response, **kwargs)
            except Exception:  # no NTLM challenge came back, or the handshake broke: keep the 401
                return response
            return answered
        if "basic" not in challenge or "Authorization" in response.request.headers:
            return response
        _ = response.content  # read the 401 body so the connection can be reused
        response.close()
        retry = response.request.copy()
        HTTPBasicAuth(self.username, self.password)(retry)
        adapter = getattr(response, "connection", None)
        if adapter is None:
            return response
        answered = adapter.send(retry, **kwargs)
        answered.history.append(response)
        return answered
