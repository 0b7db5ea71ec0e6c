"""Driver rows as plain dicts, with the few values the core cannot take as they come fixed.

Values are the drivers' Python types, which ``core.rows`` normalises: Decimal, float, int, str,
datetime (tz-aware for ``timestamptz``), date, time, bytes, UUID/str, dict/list for JSON. Fixed here:
``memoryview`` (PostgreSQL ``bytea``) becomes ``bytes``, and ``timedelta`` (MySQL ``TIME``,
PostgreSQL ``interval``) becomes a ``time`` when it is a time of day, else ``[-]H:MM:SS`` text as
MySQL prints it. MySQL ``JSON`` columns (text on the wire) are decoded to dict/list.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import Any

from sqlalchemy import URL
from sqlalchemy.engine import CursorResult

__all__ = ["RowShaper", "json_columns"]

#: MySQL's wire type code for JSON columns (``pymysql.constants.FIELD_TYPE.JSON``).
_MYSQL_JSON = 245


def json_columns(result: CursorResult[Any], url: URL | None) -> frozenset[int]:
    """Positions of MySQL JSON columns, which PyMySQL hands over as text."""
    if url is None or url.get_backend_name() not in ("mysql", "mariadb"):
        return frozenset()
    description = getattr(result.cursor, "description", None) or ()
    return frozenset(i for i, col in enumerate(description) if len(col) > 1 and col[1] == _MYSQL_JSON)


_NEEDS_FIX = (memoryview, bytearray, dt.timedelta)


class RowShaper:
    """Turns driver rows into dicts, converting what the core cannot take as is (buffers, durations,
    MySQL JSON text).

    Why a class: a column's non-null values always have the same Python type, so which columns need
    converting is learnt from the first non-null value of each; every other row then takes the fast
    path, a plain ``dict(zip(...))`` (a million rows read about twice as fast).
    """

    def __init__(self, keys: list[str], json_columns: frozenset[int]) -> None:
        self.keys = keys
        self.json_columns = json_columns
        self.convert = bool(json_columns)
        self.unknown = set(range(len(keys))) - set(json_columns)

    def __call__(self, row: Any) -> dict[str, Any]:
        if self.unknown:
            self._learn(row)
        if not self.convert:
            return dict(zip(self.keys, row, strict=True))
        return _row_dict(self.keys, row, self.json_columns)

    def _learn(self, row: Any) -> None:
        for index in list(self.unknown):
            value = row[index]
            if value is not None:
                self.unknown.discard(index)
                self.convert = self.convert or isinstance(value, _NEEDS_FIX)


def _row_dict(keys: list[str], row: Any, json_columns: frozenset[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (key, value) in enumerate(zip(keys, row, strict=True)):
        if isinstance(value, memoryview | bytearray):
            value = bytes(value)
        elif isinstance(value, dt.timedelta):
            value = _time_of(value)
        elif i in json_columns and isinstance(value, str | bytes):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[key] = value
    return out


def _time_of(value: dt.timedelta) -> dt.time | str:
    """A duration as a time of day when it is one, else MySQL's ``[-]H:MM:SS[.ffffff]`` text."""
    if dt.timedelta(0) <= value < dt.timedelta(days=1):
        return (dt.datetime.min + value).time()
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.days * 86400 + value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    frac = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}{frac}"
