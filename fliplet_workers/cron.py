"""Cron schedules: validate an operation's ``frequency`` and work out when it runs next.

The original agent scheduled operations with the npm ``cron`` package and the classic 5-field unix
syntax: ``[minute] [hour] [day of month] [month] [day of week]``, each field a ``*``, a number, a
``a-b`` range or a ``*/n`` / ``a-b/n`` step, comma-separated lists of those, and month/day names
(``JAN``-``DEC``, ``SUN``-``SAT``, any case). That is exactly what :func:`validate_cron` accepts.

Validation is our own small parser because it can say *why* an expression is wrong, field by field
("minute value 61 is out of range 0-59"), and because it rejects the extensions ``croniter`` would
otherwise let through (``@hourly``, ``L``, ``W``, ``#``, ``?``, ``H``, a seconds column) which the
original never understood, so a config stays portable between the two agents.

Computing the next run time is left to ``croniter``: it gets the parts that are easy to get subtly
wrong by hand right, namely month lengths and leap years, the unix rule that a restricted day of month
and a restricted day of week are OR-ed, and daylight-saving transitions when the schedule runs in a
local time zone (a wall-clock time that does not exist or happens twice). It is already a dependency
of the fleet and is small and pure Python.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

__all__ = [
    "Schedule", "default_timezone", "host_timezone", "next_run", "schedule_timezone", "seconds_until_next",
    "validate_cron",
]

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTHS)}),
    # 7 is Sunday too, as in the original and in Vixie cron.
    _Field("day of week", 0, 7, {n: i for i, n in enumerate(_DAYS)}),
)

_ITEM = re.compile(r"^(?P<range>\*|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>[^/]*))?$")


def _value(text: str, spec: _Field) -> tuple[int | None, str | None]:
    """Parse one number or name of a field: ``(value, None)`` or ``(None, reason)``."""
    if text.isdigit():
        number = int(text)
        if not spec.low <= number <= spec.high:
            return None, f"{spec.name} value {number} is out of range {spec.low}-{spec.high}"
        return number, None
    upper = text.upper()
    if upper in spec.names:
        return spec.names[upper], None
    if spec.names:
        known = ", ".join(spec.names)
        return (
            None,
            f"{spec.name} value '{text}' is neither a number ({spec.low}-{spec.high}) nor a name ({known})",
        )
    return None, f"{spec.name} value '{text}' is not a number ({spec.low}-{spec.high})"


def _check_field(text: str, spec: _Field) -> str | None:
    for item in text.split(","):
        if not item:
            return f"{spec.name} field '{text}' has an empty list item"
        match = _ITEM.match(item)
        if not match:
            return f"{spec.name} field has an invalid item '{item}'"
        step = match.group("step")
        if step is not None and (not step.isdigit() or int(step) == 0):
            return f"{spec.name} step '/{step}' must be a whole number of at least 1"
        part = match.group("range")
        if part == "*":
            continue
        bounds = part.split("-")
        values: list[int] = []
        for bound in bounds:
            number, why = _value(bound, spec)
            if why:
                return why
            assert number is not None
            values.append(number)
        if len(values) == 2 and values[0] > values[1]:
            return f"{spec.name} range '{part}' starts after it ends"
    return None


def validate_cron(expr: object) -> str | None:
    """Return ``None`` if ``expr`` is a valid 5-field cron expression, else the reason it is not."""
    if not isinstance(expr, str):
        return f"expected a text like '*/15 * * * *', got {type(expr).__name__}"
    parts = expr.split()
    if len(parts) != len(_FIELDS):
        return (
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
            if parts
            else "the expression is empty"
        )
    for text, spec in zip(parts, _FIELDS, strict=True):
        why = _check_field(text, spec)
        if why:
            return why
    try:
        croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError as exc:  # e.g. "0 0 30 2 *": syntactically fine, never happens
        if "find next date" in str(exc):
            return "it never matches a real date (such as 31 April or 30 February)"
        return str(exc)
    return None


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone '{tz}'") from exc


def _checked(expr: str) -> str:
    why = validate_cron(expr)
    if why:
        raise ValueError(f"invalid cron expression '{expr}': {why}")
    return " ".join(expr.split())


def next_run(expr: str, after: datetime, tz: str = "UTC") -> datetime:
    """The first time strictly after ``after`` that matches ``expr``, evaluated in time zone ``tz``.

    A naive ``after`` is read as a wall-clock time in ``tz``; an aware one is converted. The result is
    aware, in ``tz``. Raises ``ValueError`` for an invalid expression or an unknown time zone.
    """
    return _next(_checked(expr), after, _zone(tz))


def _next(expr: str, after: datetime, zone: ZoneInfo) -> datetime:
    start = after.replace(tzinfo=zone) if after.tzinfo is None else after.astimezone(zone)
    result = croniter(expr, start).get_next(datetime)
    assert isinstance(result, datetime)
    # croniter keeps the zone object; normalise so the offset is right after a DST change.
    return result.astimezone(zone)


def seconds_until_next(expr: str, now: datetime, tz: str = "UTC") -> float:
    """Seconds from ``now`` until ``expr`` next fires (always > 0): how long a foreground loop sleeps."""
    return Schedule(expr, tz).seconds_until_next(now)


class Schedule:
    """One validated cron schedule in a time zone, for the foreground agent's loop.

    >>> s = Schedule("*/15 * * * *")
    >>> s.seconds_until_next(datetime(2024, 1, 1, 10, 7, 30))
    450.0
    """

    def __init__(self, expr: str, tz: str = "UTC") -> None:
        self.expr = _checked(expr)
        self.tz = tz
        self._zone = _zone(tz)

    def __repr__(self) -> str:
        return f"Schedule({self.expr!r}, tz={self.tz!r})"

    def next_run(self, after: datetime) -> datetime:
        """The first matching time strictly after ``after`` (see :func:`next_run`)."""
        return _next(self.expr, after, self._zone)

    def seconds_until_next(self, now: datetime) -> float:
        """Seconds from ``now`` to :meth:`next_run`; a naive ``now`` is a wall-clock time in ``tz``."""
        aware_now = now.replace(tzinfo=self._zone) if now.tzinfo is None else now
        delta: timedelta = self.next_run(aware_now) - aware_now
        return delta.total_seconds()


# --------------------------------------------------------------------------------------------------
# Which time zone a ``frequency`` is read in: one rule for the foreground agent and the fleet.


def schedule_timezone(config_zone: str | None, default: str | None = None) -> str:
    """The zone an operation's cron ``frequency`` is evaluated in. First match wins:

    1. the config's own ``timezone`` option (it travels with the config: the same file means the
       same times on every host);
    2. ``FLIPLET_TIMEZONE`` (one setting for every config of an agent or a fleet);
    3. the host's local time (``TZ``, else ``/etc/localtime``), which is what the original did.

    ``default`` is steps 2-3 already worked out (the fleet reads them once, in its settings).
    """
    return config_zone or default or default_timezone()


def default_timezone(env: Mapping[str, str] | None = None) -> str:
    """``FLIPLET_TIMEZONE`` if set, else the host's local time zone (steps 2-3 above)."""
    env = os.environ if env is None else env
    return (env.get("FLIPLET_TIMEZONE") or "").strip() or host_timezone(env)


def host_timezone(env: Mapping[str, str] | None = None, localtime: str = "/etc/localtime") -> str:
    """The IANA name of the host's local time zone, as the C library finds it: ``TZ`` first (a name
    such as ``Asia/Tokyo``, optionally ``:``-prefixed), then the ``/etc/localtime`` symlink, then
    Debian's ``/etc/timezone``. ``UTC`` when none of them names a known zone (e.g. a POSIX rule such
    as ``TZ=JST-9``, or a copied ``/etc/localtime``): cron needs a real zone for DST rules.
    """
    env = os.environ if env is None else env
    candidates = []
    tz = env.get("TZ")
    if tz:
        candidates.append(tz.lstrip(":"))
    else:
        target = os.path.realpath(localtime)
        if "/zoneinfo/" in target:
            candidates.append(target.split("/zoneinfo/", 1)[1])
        try:
            with open(os.path.join(os.path.dirname(localtime), "timezone"), encoding="utf-8") as handle:
                candidates.append(handle.read().strip())
        except OSError:
            pass
    for name in candidates:
        if "/zoneinfo/" in name:  # TZ=/usr/share/zoneinfo/Asia/Tokyo
            name = name.split("/zoneinfo/", 1)[1]
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        return name
    return "UTC"
