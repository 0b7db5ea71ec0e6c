"""How the option table reads a value: one small parser per kind of value.

Each option of :mod:`.options` with a plain value names one of these (``whole(minimum=0)``,
``seconds()``, ``choice(MODES)``…). A parser is called as ``parse(section, canonical)`` and returns
the typed value, or ``None`` when the option is not given or wrong (the problem is recorded in the
section's report, worded by :class:`~.section.Section`). Options with structure (``files``,
``encrypt``, the database settings) or functions are read by their own readers instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from fliplet_workers.config.model import DeleteLimit
from fliplet_workers.config.problems import BROKEN, shown
from fliplet_workers.config.section import Section
from fliplet_workers.cron import validate_cron

__all__ = [
    "Parse",
    "auth_token",
    "choice",
    "cron",
    "delete_limit",
    "existing_file",
    "flag",
    "full_refresh",
    "http_url",
    "interval_seconds",
    "mapping",
    "seconds",
    "strings",
    "text",
    "time_zone",
    "whole",
]

#: ``parse(section, canonical)`` → the value, or ``None`` (absent, or wrong and reported).
Parse = Callable[[Section, str], Any]

_HTTP_URL = re.compile(r"^https?://[^/\s]+")


def text(*, strip: bool = False) -> Parse:
    """A string (numbers as written); ``strip``: without surrounding blanks."""

    def parse(sec: Section, canonical: str) -> str | None:
        value = sec.text(canonical)
        return value.strip() if strip and value is not None else value

    return parse


def whole(*, minimum: int = 1, maximum: int | None = None, required: bool = False) -> Parse:
    """A whole number of at least ``minimum``."""

    def parse(sec: Section, canonical: str) -> int | None:
        return sec.whole(canonical, minimum=minimum, maximum=maximum, required=required)

    return parse


def seconds() -> Parse:
    """A positive number of seconds."""

    def parse(sec: Section, canonical: str) -> float | None:
        return sec.number(canonical, what="a positive number of seconds")

    return parse


def flag() -> Parse:
    """``true`` or ``false``."""
    return Section.flag


def choice(choices: Sequence[str], *, ignore_case: bool = False) -> Parse:
    """One of ``choices``."""

    def parse(sec: Section, canonical: str) -> str | None:
        return sec.choice(canonical, choices, ignore_case=ignore_case)

    return parse


def strings(*, choices: Sequence[str] | None = None) -> Parse:
    """A list of strings (each one of ``choices`` when given)."""

    def parse(sec: Section, canonical: str) -> tuple[str, ...] | None:
        return sec.strings(canonical, choices=choices)

    return parse


def mapping() -> Parse:
    """A mapping of names to values, passed on as written."""
    return Section.mapping


def cron() -> Parse:
    """A cron expression (five fields), blanks normalised."""
    return Section.cron


def auth_token() -> Parse:
    """The Fliplet API token: required, worded as in the original's log table when missing."""

    def parse(sec: Section, canonical: str) -> str | None:
        token = sec.text(canonical)
        if token is None and sec.raw_value(canonical) is not BROKEN:  # an unset ${VAR} is reported
            # the original's log table: "Auth token is required"; the option and file/line say where
            empty = " is empty" if sec.given(canonical) else ""
            sec.report.add(
                f"Auth token is required (option '{sec.name(canonical)}'{empty})",
                sec.where(canonical),
                sec.prefix,
            )
        return token

    return parse


def http_url() -> Parse:
    """An ``http://`` or ``https://`` URL (a secret one is checked without blanks, and not quoted)."""

    def parse(sec: Section, canonical: str) -> str | None:
        value = sec.text(canonical)
        if value is None:
            return None
        if canonical in sec.secret:
            if _HTTP_URL.match(value.strip()):
                return value.strip()
            sec.problem(canonical, "must be an http:// or https:// URL")
            return None
        if _HTTP_URL.match(value):
            return value.strip()
        sec.problem(canonical, f"must be an http:// or https:// URL, got {shown(value)}")
        return None

    return parse


def existing_file() -> Parse:
    """The absolute path of a file that exists, relative to the config file's folder."""

    def parse(sec: Section, canonical: str) -> str | None:
        value = sec.text(canonical)
        if value is None:
            return None
        path = (sec.report.base_dir / os.path.expanduser(value)).resolve()
        if path.is_file():
            return str(path)
        sec.problem(canonical, f"names a file that does not exist: '{path}'")
        return None

    return parse


def time_zone() -> Parse:
    """An IANA time zone name (``Asia/Tokyo``), checked against the system's zone database."""

    def parse(sec: Section, canonical: str) -> str | None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        name = sec.text(canonical)
        if name is None:
            return None
        try:
            ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError):
            sec.problem(canonical, f"is not a known IANA time zone such as 'Europe/London', got {shown(name)}")
            return None
        return name.strip()

    return parse


_DELETE_LIMIT_OFF = ("none", "off", "unlimited")
_DELETE_LIMIT_WHAT = (
    "must be a whole number of entries (500), a percentage of the data source ('10%') or none"
)


def delete_limit() -> Parse:
    """A count (``500``), a percentage of the data source (``"10%"``) or ``none``."""

    def parse(sec: Section, canonical: str) -> DeleteLimit | None:
        if not sec.has(canonical):
            return None
        value = sec.raw_value(canonical)
        limit = None if isinstance(value, bool) else _delete_limit(value)
        if limit is None:
            sec.problem(canonical, f"{_DELETE_LIMIT_WHAT}, got {shown(value)}")
        return limit

    return parse


def _delete_limit(value: Any) -> DeleteLimit | None:
    if isinstance(value, int) and value >= 0:
        return DeleteLimit(count=value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _DELETE_LIMIT_OFF:
            return DeleteLimit(off=True)
        if text.isdigit():
            return DeleteLimit(count=int(text))
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
        if match and float(match.group(1)) <= 100:
            return DeleteLimit(percent=float(match.group(1)))
    return None


_INTERVAL = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def interval_seconds(text: str) -> float | None:
    """``"24h"``, ``"7d"``, ``"1d12h"``, ``"90m"`` → seconds; ``None`` when ``text`` is not one
    (units: s, m, h, d, w)."""
    compact = "".join(text.split()).lower()
    if not compact or _INTERVAL.sub("", compact):
        return None
    total = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _INTERVAL.findall(compact))
    return float(total) if total > 0 else None


def full_refresh() -> Parse:
    """A cron expression (``0 3 * * 0``) or an interval (``24h``, ``7d``): when an incremental
    operation compares everything instead."""

    def parse(sec: Section, canonical: str) -> str | None:
        value = sec.text(canonical)
        if value is None:
            return None
        if interval_seconds(value) is not None:
            return "".join(value.split()).lower()
        if len(value.split()) == 5 and validate_cron(value) is None:
            return " ".join(value.split())
        why = validate_cron(value) if len(value.split()) == 5 else None
        detail = f" ({why})" if why else ""
        sec.problem(canonical, f"must be a cron expression such as '0 3 * * 0' or an interval such as '24h' or "
                               f"'7d', got {shown(value)}{detail}")
        return None

    return parse
