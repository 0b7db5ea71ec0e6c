"""Normalise source rows into JSON-ready values and index them by primary key.

Why normalise: the original agent serialises rows with JavaScript's ``JSON.stringify``, so the data
that lands in Fliplet has JavaScript's shapes. We reproduce them, so that a switch from the original
changes nothing in the data source and so that local and remote values compare equal:

* ``datetime`` → ISO 8601 in UTC with milliseconds and ``Z`` (naive datetimes are taken as UTC),
  ``date`` → midnight UTC in the same format, ``time`` → ``HH:MM:SS``.
* ``Decimal`` and floats → numbers; a whole-valued float becomes an int (JavaScript has one number
  type, so Fliplet returns ``1`` for ``1.0``); NaN and infinities become ``null`` as in JSON.
* ``bytes`` → base64 text; ``UUID`` → its text; anything else unknown → ``str(value)``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gc
import math
import uuid
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: A normalised primary key: text (lower-cased when case-insensitive), a number, or ``(bool, value)``
#: for ``true``/``false`` (see :func:`normalise_key`).
Key = Hashable

_UTC = dt.UTC


def iso_utc(value: dt.datetime) -> str:
    """Format like JavaScript's ``Date.prototype.toJSON``: ``2024-01-02T03:04:05.678Z``."""
    if value.tzinfo is not None:
        value = value.astimezone(_UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def normalise_value(value: Any) -> Any:
    """One value as the original's JSON would carry it (see the module docstring)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, dt.date):
        return iso_utc(dt.datetime(value.year, value.month, value.day, tzinfo=_UTC))
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): normalise_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise_value(v) for v in value]
    return str(value)


_PLAIN = frozenset({str, int, bool, type(None)})


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a plain dict of JSON-ready values, column names as strings.

    Most values are already plain (text, whole numbers, null): those are kept without a call, which
    makes a million-row read about twice as fast.
    """
    plain = _PLAIN
    return {k if type(k) is str else str(k): v if type(v) in plain else normalise_value(v) for k, v in row.items()}


def normalise_key(value: Any, case_insensitive: bool) -> Key:
    """The key used to match a row with an entry: types are kept exactly, as in the original.

    "2" is not 2, and ``true`` is not 1: Python hashes ``True == 1`` (and ``False == 0``), so a boolean
    key is tagged with its type; a text, whole or fractional number is its own key (JavaScript has one
    number type, so ``1`` and ``1.0`` are the same key, as in Fliplet). Text is lower-cased when the
    match is case-insensitive. Callers check :func:`is_invalid_key` first (dicts and lists are
    unhashable).
    """
    if type(value) is str:
        return value.lower() if case_insensitive else value
    if type(value) is bool:
        return (bool, value)
    return value


def is_missing_key(value: Any) -> bool:
    """A key is missing only when null or empty text.

    Unlike the original (JavaScript truthiness), ``0``, ``false`` and text of blanks are keys: they are
    values a source can hold, and skipping them would leave those rows out of every sync.
    """
    return value is None or (type(value) is str and not value)


def is_invalid_key(value: Any) -> bool:
    """A key that cannot identify a row: an object or a list (JSON columns), which has no identity
    to compare and cannot be looked up."""
    return isinstance(value, (dict, list))


def is_flagged(value: Any) -> bool:
    """Truthiness of a delete flag, judged as the original does (JavaScript truthiness)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    return not (isinstance(value, str) and value == "")


def timestamp_seconds(value: Any) -> int | None:
    """A timestamp at one-second precision, or None when it cannot be read.

    Accepts ISO 8601 text (with ``Z`` or an offset; naive = UTC), datetimes, dates, and numbers
    (milliseconds since the epoch, as a JavaScript ``Date`` takes them).
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value // 1000)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=_UTC)
        return math.floor(moment.timestamp())
    if isinstance(value, dt.date):
        return math.floor(dt.datetime(value.year, value.month, value.day, tzinfo=_UTC).timestamp())
    if isinstance(value, str):
        text = value.strip()
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_UTC)
        return math.floor(moment.timestamp())
    return None


@dataclass(slots=True)
class LocalRow:
    """One source row, ready for the diff."""

    data: dict[str, Any]
    raw_key: Any = None  # the key as the source gave it (normalised value, original case)
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Skip:
    """A row that will not be sent, and why (shown to the user, counted in the summary)."""

    reason: str  # "missing_key" | "duplicate_key" | "invalid_key"
    message: str


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small, acyclic dicts.

    Each generation-2 pass walks every live object; with a million rows in memory the passes
    triggered by allocation cost more than the work itself. Rows hold no cycles, so nothing leaks.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def brief(data: Mapping[str, Any], limit: int = 300) -> str:
    """A row shortened for a log line."""
    text = ", ".join(f"{k}={v!r}" for k, v in data.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"
