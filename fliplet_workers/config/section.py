"""Reading one mapping of options: :class:`Section`, the typed getters every reader uses.

A section is built from the mapping as written and the :class:`Names` it accepts (derived from the
option table in :mod:`.options`, never listed here). Building it reports unknown keys with a
did-you-mean and the same option given under two spellings; each getter then returns a typed value,
or ``None`` after recording why the value is wrong, so that one pass finds every problem.

Values of secret options are wrapped in :class:`~fliplet_workers.redaction.Secret`, registered for
redaction, and never quoted in a problem: which options are secret comes from :class:`Names` too.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fliplet_workers import redaction
from fliplet_workers.config.problems import BROKEN, Key, Report, shown, suggest
from fliplet_workers.cron import validate_cron
from fliplet_workers.redaction import Secret

__all__ = ["ABSENT", "Names", "Section"]


class _Absent:
    __slots__ = ()


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Names:
    """The options one mapping accepts: canonical name → spellings (preferred first), and the
    canonical names whose values are secrets."""

    spellings: Mapping[str, tuple[str, ...]]
    secret: frozenset[str] = frozenset()


class Section:
    """One mapping of options being read: unknown keys are reported on creation (with a suggestion),
    typed getters return ``None`` and record a problem when a value is wrong or missing.
    """

    def __init__(
        self,
        report: Report,
        data: Mapping[Any, Any],
        at: Key,
        names: Names,
        *,
        prefix: str = "",
        display: str = "",
    ) -> None:
        self.report = report
        self.at = at
        self.prefix = prefix
        self.display = display
        self.secret = names.secret
        self.preferred = {canonical: spelled[0] for canonical, spelled in names.spellings.items()}
        self._values: dict[str, Any] = {}
        self._spelling: dict[str, str] = {}
        canonical_of = {name: canonical for canonical, spelled in names.spellings.items() for name in spelled}
        for key, value in data.items():
            name = str(key)
            canonical = canonical_of.get(name) if isinstance(key, str) else None
            if canonical is None:
                hint = suggest(name, canonical_of)
                tail = f"; did you mean '{display}{hint}'?" if hint else ""
                report.add(f"option '{display}{name}' is not known{tail}", (*at, key), prefix)
            elif canonical in self._spelling:
                first = self._spelling[canonical]
                report.add(
                    f"option '{display}{name}' is the same option as '{display}{first}'; give it once",
                    (*at, key),
                    prefix,
                )
            else:
                self._spelling[canonical] = name
                self._values[canonical] = value

    # -- plumbing

    def name(self, canonical: str) -> str:
        """The option's name as the user wrote it (or its preferred spelling), with its parents."""
        return self.display + self._spelling.get(canonical, self.preferred.get(canonical, canonical))

    def where(self, canonical: str) -> Key:
        spelling = self._spelling.get(canonical)
        return (*self.at, spelling) if spelling is not None else self.at

    def problem(self, canonical: str, message: str, *, near: str | None = None) -> None:
        """Record a problem with an option; if it is not written, point at option ``near`` instead."""
        at = self.where(canonical)
        if canonical not in self._spelling and near is not None:
            at = self.where(near)
        self.report.add(f"option '{self.name(canonical)}' {message}", at, self.prefix)

    def given(self, canonical: str) -> bool:
        """Whether the option is written at all (even empty)."""
        return canonical in self._values

    def has(self, canonical: str) -> bool:
        """Whether the option has a usable value (not missing, empty or broken)."""
        value = self._values.get(canonical)
        return value is not None and value is not BROKEN and value != ""

    def raw_value(self, canonical: str) -> Any:
        return self._values.get(canonical)

    def _get(self, canonical: str, required: bool) -> Any:
        value = self._values.get(canonical, ABSENT)
        if value is BROKEN:
            return ABSENT
        if value is None or value is ABSENT:
            if required:
                self.problem(canonical, "is required")
            return ABSENT
        return value

    # -- scalars

    def text(
        self, canonical: str, *, required: bool = False, empty_is_none: bool = True
    ) -> str | None:
        """A string; numbers are taken as written (``database_password: 123456``). The value of a
        secret option is registered for redaction and returned as a :class:`Secret`."""
        secret = canonical in self.secret
        value = self._get(canonical, required)
        if value is ABSENT:
            return None
        raw = self.report.raw.get(self.where(canonical))
        if isinstance(value, str):
            result = value
        elif isinstance(value, bool | int | float) and raw is not None:
            result = raw
        elif isinstance(value, int | float) and not isinstance(value, bool):
            result = str(value)
        else:
            self.problem(canonical, "must be a string" if secret else f"must be a string, got {shown(value)}")
            return None
        if not result.strip() and empty_is_none:
            if required:
                self.problem(canonical, "must not be empty")
            return None
        if secret:
            redaction.register(result)
            return Secret(result)
        return result

    def whole(
        self,
        canonical: str,
        *,
        minimum: int = 1,
        maximum: int | None = None,
        required: bool = False,
        what: str | None = None,
    ) -> int | None:
        """A whole number (digits in a string, e.g. from an environment variable, are accepted)."""
        value = self._get(canonical, required)
        if value is ABSENT:
            return None
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            number = int(value)
        if number is None or number < minimum or (maximum is not None and number > maximum):
            if what is None:
                what = "a positive whole number" if minimum == 1 else f"a whole number of at least {minimum}"
            self.problem(canonical, f"must be {what}, got {shown(value)}")
            return None
        return number

    def number(self, canonical: str, *, what: str = "a positive number") -> float | None:
        """A number greater than zero."""
        value = self._get(canonical, False)
        if value is ABSENT:
            return None
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not number > 0 or number == float("inf"):
            self.problem(canonical, f"must be {what}, got {shown(value)}")
            return None
        return number

    _TRUE = frozenset({"true", "yes", "on", "1"})
    _FALSE = frozenset({"false", "no", "off", "0"})

    def flag(self, canonical: str) -> bool | None:
        """``true``/``false`` (also the words from an environment variable, and 0/1)."""
        value = self._get(canonical, False)
        if value is ABSENT:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in self._TRUE | self._FALSE:
            return value.strip().lower() in self._TRUE
        self.problem(canonical, f"must be true or false, got {shown(value)}")
        return None

    def choice(
        self,
        canonical: str,
        choices: Sequence[str],
        *,
        aliases: Mapping[str, str] | None = None,
        required: bool = False,
        ignore_case: bool = False,
    ) -> str | None:
        value = self.text(canonical, required=required)
        if value is None:
            return None
        key = value.strip().lower() if ignore_case else value.strip()
        if aliases and key in aliases:
            return aliases[key]
        if key in choices:
            return key
        self.problem(canonical, f"must be one of {', '.join(choices)}, got {shown(value)}")
        return None

    def cron(self, canonical: str) -> str | None:
        value = self.text(canonical)
        if value is None:
            return None
        why = validate_cron(value)
        if why:
            self.problem(canonical, f"is not a valid cron expression '{value}': {why}")
            return None
        return " ".join(value.split())

    # -- containers

    def items(self, canonical: str) -> list[tuple[Any, Key, str]] | None:
        """The items of a list option as ``(value, key path, display name)``."""
        value = self._get(canonical, False)
        if value is ABSENT:
            return None
        if not isinstance(value, list | tuple):
            self.problem(canonical, f"must be a list, got {shown(value)}")
            return None
        base = self.where(canonical)
        return [(item, (*base, i), f"{self.name(canonical)}[{i + 1}]") for i, item in enumerate(value)]

    def strings(
        self, canonical: str, *, choices: Sequence[str] | None = None, non_empty: bool = False
    ) -> tuple[str, ...] | None:
        """A list of strings (each one of ``choices`` when given); duplicates are dropped."""
        items = self.items(canonical)
        if items is None:
            if non_empty and not self.given(canonical):
                self.problem(canonical, "is required")
            return None
        if non_empty and not items:
            self.problem(canonical, "must list at least one entry")
            return None
        out: list[str] = []
        ok = True
        for item, at, label in items:
            if item is BROKEN:
                ok = False
                continue
            text = item if isinstance(item, str) else self.report.raw.get(at) if item is not None else None
            if not isinstance(text, str) or isinstance(item, list | tuple | Mapping):
                self.report.add(f"option '{label}' must be a string, got {shown(item)}", at, self.prefix)
                ok = False
            elif choices is not None and text not in choices:
                self.report.add(
                    f"option '{label}' must be one of {', '.join(choices)}, got {shown(text)}",
                    at,
                    self.prefix,
                )
                ok = False
            elif text not in out:
                out.append(text)
        return tuple(out) if ok else None

    def mapping(self, canonical: str) -> Mapping[Any, Any] | None:
        value = self._get(canonical, False)
        if value is ABSENT:
            return None
        if not isinstance(value, Mapping):
            self.problem(canonical, f"must be a mapping of names to values, got {shown(value)}")
            return None
        return value

    def section(self, canonical: str, names: Names) -> Section | None:
        """A nested mapping option read as its own :class:`Section`."""
        value = self.mapping(canonical)
        if value is None:
            return None
        return Section(
            self.report,
            value,
            self.where(canonical),
            names,
            prefix=self.prefix,
            display=f"{self.name(canonical)}.",
        )

    def function(self, canonical: str, *arities: int, shape: str) -> tuple[Callable[..., Any], int] | None:
        """A callable and how many positional arguments to call it with (the first of ``arities``
        it accepts). ``shape`` shows the expected signature in problems, e.g. "source(http)"."""
        value = self._get(canonical, False)
        if value is ABSENT:
            return None
        if not callable(value):
            self.problem(canonical, f"must be a function like {shape}, got {shown(value)}")
            return None
        try:
            signature = inspect.signature(value)
        except (TypeError, ValueError):  # some builtins: trust them with the first arity
            return value, arities[0]
        for arity in arities:
            try:
                signature.bind(*range(arity))
            except TypeError:
                continue
            return value, arity
        self.problem(canonical, f"must be a function like {shape}: it cannot be called that way")
        return None


