"""Problems found in a config file, and where they are: what every reader of a config writes to.

Validation never stops at the first problem: readers record each one in a :class:`Report` (with the
line of the key path it is about, looked up by the format's parser), and :func:`fail_if_problems`
raises them all together as one :class:`~fliplet_workers.errors.ConfigError`, each worded
``<file>:<line>: [operation N: ]option '<name>' <what is wrong>``. List items are named with 1-based
indexes (``files[2].type``), as operations are ("operation 2").

This module knows nothing about options or formats, so both formats and every reader can build on it
without importing each other. ``${NAME}`` substitution lives here too: an unset variable is a
problem like any other, but one that :class:`NeedsEnvironment` lets ``status`` tell apart.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fliplet_workers.errors import ConfigError

__all__ = [
    "BROKEN",
    "Key",
    "NeedsEnvironment",
    "Report",
    "display_path",
    "fail_if_problems",
    "read_text",
    "shown",
    "substitute_env",
    "suggest",
]

#: Where a value sits in a config: mapping keys (as written) and 0-based list indexes.
Key = tuple[str | int, ...]


def read_text(file: Path, report: Report) -> str | None:
    """The file's text, or ``None`` after recording why it cannot be read."""
    try:
        return file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        report.add(f"the config file does not exist (looked for {file.absolute()})")
    except IsADirectoryError:
        report.add("the config path is a directory, not a file")
    except UnicodeDecodeError as exc:
        report.add(f"the config file is not UTF-8 text (byte {exc.start})")
    except OSError as exc:
        report.add(f"the config file cannot be read: {exc.strerror or exc}")
    return None


def display_path(at: Key) -> str:
    """``("files", 0, "type")`` → ``files[1].type`` (1-based list indexes)."""
    out = ""
    for part in at:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class Report:
    """The problems found so far in one file, and the line of every key path we know."""

    label: str  # the file name as shown in problems
    lines: dict[Key, int] = field(default_factory=dict)
    #: YAML only: the source text of scalars, so ``password: 0123`` stays "0123", ``yes`` stays "yes".
    raw: dict[Key, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: The problems that are only an unset ``${NAME}``, and each one's NAME (see :class:`NeedsEnvironment`).
    unset: dict[str, str] = field(default_factory=dict)
    #: The config file's folder: relative paths in options (``ca_bundle``, a sqlite file) start here.
    base_dir: Path = Path(".")

    def line(self, at: Key) -> int | None:
        """The line of ``at``, or of its nearest ancestor that has one."""
        while True:
            if at in self.lines:
                return self.lines[at]
            if not at:
                return None
            at = at[:-1]

    def add(self, message: str, at: Key = (), prefix: str = "") -> None:
        """Record ``message`` at the line of ``at`` (or at the file when no line is known)."""
        line = self.line(at)
        where = f"{self.label}:{line}" if line else self.label
        self.problems.append(f"{where}: {prefix}{message}")


class _Broken:
    """Stands for a value whose environment substitution failed (already reported)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset environment variable>"


BROKEN: Any = _Broken()

_ENV = re.compile(r"\$(?P<escape>\$)?\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def substitute_env(value: Any, at: Key, report: Report, environ: Mapping[str, str] | None = None) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of ``value`` (recursively).

    ``$${NAME}`` is a literal ``${NAME}``. A variable that is unset (or empty, when a default is
    given) without a default is reported and the string becomes :data:`BROKEN`.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group("escape"):
                return match.group(0)[1:]
            name, default = match.group("name"), match.group("default")
            current = env.get(name)
            if default is not None:
                return current if current else default
            if current is None:
                missing.append(name)
                return ""
            return current

        result = _ENV.sub(replace, value)
        for name in missing:
            report.add(
                f"option '{display_path(at)}' uses environment variable '{name}', which is not set "
                f"(write '${{{name}:-default}}' to give a default)",
                at,
            )
            report.unset[report.problems[-1]] = name
        return BROKEN if missing else result
    if isinstance(value, dict):
        return {k: substitute_env(v, (*at, k), report, env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, (*at, i), report, env) for i, v in enumerate(value)]
    return value


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest known spelling of ``word`` (case-insensitive), if any is close enough."""
    by_lower = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def shown(value: Any) -> str:
    """A short rendering of a (non-secret) value for a problem text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"'{text}'"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if callable(value):
        return "a function"
    return f"a {type(value).__name__}"


def fail_if_problems(path: Path, report: Report) -> None:
    """Raise every problem found so far, whole-file ones first, then in line order."""
    if report.problems:
        prefix = re.compile(re.escape(report.label) + r":(\d+):")

        def line(problem: str) -> int:
            match = prefix.match(problem)
            return int(match.group(1)) if match else 0

        problems = sorted(report.problems, key=line)
        if report.unset:
            raise NeedsEnvironment(str(path), problems, report.unset)
        raise ConfigError(str(path), problems)


class NeedsEnvironment(ConfigError):
    """A config that uses ``${NAME}`` variables unset in this environment. ``needs`` names them;
    ``others`` are its other problems: with none, the file is fine where those variables are set
    (``fliplet-agent status``, run without the workers' secrets, says "needs NAME", not "invalid")."""

    def __init__(self, path: str, problems: list[str], unset: dict[str, str]) -> None:
        super().__init__(path, problems)
        self.needs = sorted(set(unset.values()))
        self.others = [p for p in problems if p not in unset]
