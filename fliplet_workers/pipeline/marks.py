"""Watermarks of incremental operations: what they are, how they are stored and when a run is full.

A watermark is the highest ``timestamp_column`` value that an operation's last successful run read
and committed. It is kept as the source gave it (a datetime with or without its zone, a date, a
number, a decimal or a string), in a JSON-safe typed form (:func:`encode` / :func:`decode`), so
that the next run binds it back to the query with the same type and the database compares like
with like.

Where: the foreground agent keeps one JSON state file (:class:`FileMarks`, next to the log file; see
:func:`state_file_path`), one entry per config path + operation index + data source id, written
atomically under a file lock; the fleet keeps one Redis key per config and operation
(``fliplet_workers.fleet.watermarks``). Both answer :class:`MarkStore`.

When a run compares everything instead (:func:`full_reason`): the first run (no watermark), another
data source, ``start --full``, or ``full_refresh`` due (a cron or an interval since the last full run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from fliplet_workers.config.model import Operation
from fliplet_workers.config.parsers import interval_seconds
from fliplet_workers.cron import next_run
from fliplet_workers.logs import log_file_path

__all__ = ["FileMarks", "Mark", "MarkStore", "decode", "encode", "full_reason", "state_file_path"]

STATE_ENV = "FLIPLET_AGENT_STATE"


def encode(value: Any) -> dict[str, Any] | None:
    """A timestamp as ``{"type", "value"}`` (JSON-safe); ``None`` for a type that cannot be kept."""
    if isinstance(value, dt.datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return {"type": "number", "value": value}
    if isinstance(value, decimal.Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, str):
        return {"type": "string", "value": value}
    return None


def decode(typed: Any) -> Any:
    """The value :func:`encode` kept, with its type (a datetime keeps its zone, or its lack of one)."""
    if not isinstance(typed, dict):
        return None
    kind, value = typed.get("type"), typed.get("value")
    try:
        if kind == "datetime":
            return dt.datetime.fromisoformat(str(value))
        if kind == "date":
            return dt.date.fromisoformat(str(value))
        if kind == "decimal":
            return decimal.Decimal(str(value))
    except (ValueError, decimal.InvalidOperation):
        return None
    return value if kind in ("number", "string") else None


def shown(value: Any) -> str:
    """A watermark as the logs and ``status`` show it."""
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Mark:
    """An operation's watermark: the value (typed), the data source it is for, the data source's
    entry count after that run as far as known (the delete guard's base on incremental runs), when
    the last full comparison ran, and when the mark was written (ISO times, UTC)."""

    value: Any
    datasource_id: int
    entries: int | None = None
    full_at: str | None = None
    updated_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"watermark": encode(self.value), "datasourceId": self.datasource_id, "entries": self.entries,
                "fullAt": self.full_at, "updatedAt": self.updated_at}

    @classmethod
    def from_json(cls, doc: Any) -> Mark | None:
        if not isinstance(doc, dict) or not isinstance(doc.get("datasourceId"), int):
            return None
        entries = doc.get("entries")
        return cls(value=decode(doc.get("watermark")), datasource_id=doc["datasourceId"],
                   entries=entries if isinstance(entries, int) else None,
                   full_at=doc.get("fullAt"), updated_at=doc.get("updatedAt"))


class MarkStore(Protocol):
    """Where an operation's watermark is kept between runs."""

    def load(self, config_path: str, index: int, datasource_id: int) -> Mark | None: ...

    def save(self, config_path: str, index: int, mark: Mark) -> None: ...


def full_reason(op: Operation, mark: Mark | None, *, forced: bool, tz: str = "UTC",
                now: dt.datetime | None = None) -> str | None:
    """Why this run of an incremental operation compares everything, or ``None``: it reads only newer rows."""
    if forced:
        return "a full comparison was asked for (--full)"
    if mark is None or mark.value is None:
        return "there is no watermark yet"
    if mark.datasource_id != op.datasource_id:
        return f"the watermark was kept for data source {mark.datasource_id}"
    if op.full_refresh is None:
        return None
    now = now or utc_now()
    last = dt.datetime.fromisoformat(mark.full_at) if mark.full_at else None
    if last is None:
        return f"full_refresh ({op.full_refresh}) is due: no full comparison was recorded"
    seconds = interval_seconds(op.full_refresh)
    due = (now - last).total_seconds() >= seconds if seconds is not None else \
        next_run(op.full_refresh, last, tz) <= now
    return f"full_refresh ({op.full_refresh}) is due" if due else None


def state_file_path() -> Path:
    """The foreground's state file: ``FLIPLET_AGENT_STATE``, else next to the log file, named after it
    (``~/fliplet-agent.log`` → ``~/fliplet-agent.state.json``), else in the home folder."""
    given = os.environ.get(STATE_ENV)
    if given:
        return Path(given)
    log = log_file_path()
    if log:
        path = Path(log)
        return path.with_name(path.stem + ".state.json")
    return Path.home() / "fliplet-agent.state.json"


class FileMarks:
    """The watermarks in one JSON file, each a key ``<config path>#<operation index>#<data source id>``.
    Each write reads the file, changes one entry and replaces the file atomically, under an exclusive
    lock on ``<file>.lock`` (several agents may share the file)."""

    _thread_lock = threading.Lock()

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_file_path()

    @staticmethod
    def key(config_path: str, index: int, datasource_id: int) -> str:
        return f"{config_path}#{index}#{datasource_id}"

    def load(self, config_path: str, index: int, datasource_id: int) -> Mark | None:
        return Mark.from_json(self._read().get(self.key(config_path, index, datasource_id)))

    def save(self, config_path: str, index: int, mark: Mark) -> None:
        with self._locked():
            marks = self._read()
            marks[self.key(config_path, index, mark.datasource_id)] = mark.to_json()
            self._write(marks)

    def _read(self) -> dict[str, Any]:
        try:
            doc = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (orjson.JSONDecodeError, OSError) as error:
            raise OSError(f"The state file {self.path} cannot be read ({error}); move it away to start "
                          "every incremental operation with a full comparison.") from None
        marks = doc.get("watermarks") if isinstance(doc, dict) else None
        return dict(marks) if isinstance(marks, dict) else {}

    def _write(self, marks: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({"version": 1, "watermarks": marks}, option=orjson.OPT_INDENT_2)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
