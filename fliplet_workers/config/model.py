"""Typed, frozen model of a config: what the loaders produce and everything else consumes.

Names follow the original agent's YAML options (``primary_column``, ``batch_size``…); the YAML loader
maps one to one, the Python code-config loader maps the original's JS camelCase names too.
Secrets are :class:`~fliplet_workers.redaction.Secret` so they never print.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fliplet_workers.redaction import Secret

Driver = Literal["sqlite", "postgres", "mysql", "mssql"]
Mode = Literal["update", "replace"]
Verbosity = Literal["debug", "info", "critical"]
FileType = Literal["remote", "local", "sharepoint"]

#: A code-config source function: returns (or yields) row dicts. ``ctx`` offers ``db`` and ``http``.
SourceFn = Callable[..., Iterable[Mapping[str, Any]]]

DEFAULT_BATCH_SIZE = 1000
DEFAULT_RETRIES = 5
DEFAULT_QUERY_TIMEOUT = 300.0


@dataclass(frozen=True)
class Database:
    """Connection settings for a SQL source. ``url`` (a SQLAlchemy URL) wins over the parts."""

    driver: Driver
    host: str | None = None
    port: int | None = None
    name: str | None = None
    username: str | None = None
    password: Secret | None = None
    domain: str | None = None
    instance: str | None = None
    encrypt: bool | None = None
    native_odbc: bool = False
    url: Secret | None = None


@dataclass(frozen=True)
class FileColumn:
    """A column whose value names a file to upload to Fliplet (see ``fliplet_workers.pipeline.steps.files``)."""

    column: str
    type: FileType
    directory: str | None = None
    headers: Mapping[str, Secret] = field(default_factory=dict)
    username: str | None = None
    password: Secret | None = None
    file_type: str | None = None  # sharepoint ``fileType``: "inherit" keeps the file's own name


@dataclass(frozen=True)
class Encryption:
    """Fields to encrypt in the CryptoJS format. No ``key`` → the organization keystore provides one."""

    fields: tuple[str, ...]
    key: Secret | None = None
    salt: Secret | None = None


@dataclass(frozen=True)
class DeleteLimit:
    """How many entries one run may delete (``delete_limit``). ``count`` caps the number, ``percent``
    the share of the data source's entries; ``off`` (``delete_limit: none``) disables the guard.
    An operation without the option (``Operation.delete_limit is None``) gets the default guard."""

    count: int | None = None
    percent: float | None = None
    off: bool = False


@dataclass(frozen=True)
class Operation:
    """One push or pull operation of a config (a YAML config has exactly one)."""

    type: Literal["push", "pull"]
    datasource_id: int
    description: str = ""
    frequency: str | None = None
    # push: where rows come from (exactly one of query / source)
    query: str | None = None
    source: SourceFn | None = None
    primary_column: str | None = None
    case_insensitive_primary_column: bool = False
    timestamp_column: str | None = None
    delete_column: str | None = None
    mode: Mode = "update"
    batch_size: int = DEFAULT_BATCH_SIZE
    concurrency: int = 1
    run_hooks: tuple[str, ...] = ()
    merge: bool = False
    files: tuple[FileColumn, ...] = ()
    encrypt: Encryption | None = None
    on_sync: Callable[[dict[str, Any]], Any] | None = None
    delete_limit: DeleteLimit | None = None  # None: the default guard (see core.guard)
    #: Read only rows newer than the watermark; ``full_refresh``: when a run compares everything instead.
    incremental: bool = False
    full_refresh: str | None = None  # a cron expression or an interval such as "24h" (see parsers.full_refresh)
    # pull: the query sent to Fliplet and what to do with the entries
    where: Mapping[str, Any] | None = None
    attributes: tuple[str, ...] | None = None
    join: Mapping[str, Any] | None = None
    distinct: bool | None = None
    action: Callable[..., Any] | None = None

    @property
    def label(self) -> str:
        """Short name for logs: the description, or the type and data source."""
        return self.description or f"{self.type} to data source {self.datasource_id}"


@dataclass(frozen=True)
class Config:
    """A whole config file: connection settings plus one or more operations."""

    name: str  # the file name without extension; prefixes every log line
    path: str
    auth_token: Secret
    operations: tuple[Operation, ...]
    database: Database | None = None
    api_url: str | None = None
    ca_bundle: str | None = None
    sync_on_init: bool = False
    log_verbosity: Verbosity = "debug"
    retries: int = DEFAULT_RETRIES
    retry_delay: float = 1.0  # first backoff in seconds; doubles per try
    timeout: float = 60.0
    is_dry_run: bool = False
    #: IANA time zone of ``frequency``; None: ``FLIPLET_TIMEZONE``, else the host's local time.
    timezone: str | None = None
    #: Seconds a database may take to connect or to answer one statement/fetch before the run fails.
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    #: A URL that receives a JSON POST when a run fails and when the next one recovers.
    alert_webhook: str | None = None
