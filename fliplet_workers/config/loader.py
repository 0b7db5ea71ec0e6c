"""Load a config file (dispatch by extension) and the validation both config formats share.

``load_config(path)`` reads ``.yml``/``.yaml`` files with :mod:`.yaml_config` and ``.py`` files with
:mod:`.code_config`. Both turn the file into plain values plus a map from *where* each value sits (a
key path such as ``("files", 0, "type")``) to its line, then read every option through a
:class:`Section`, which records a problem instead of raising. Every problem is collected and raised
together as one :class:`~fliplet_workers.errors.ConfigError`, each worded
``<file>:<line>: [operation N: ]option '<name>' <what is wrong>``. List items are named with 1-based
indexes (``files[2].type``), as operations are ("operation 2").

Values of secret options are wrapped in :class:`~fliplet_workers.secrets.Secret`, registered for
redaction, and never quoted in a problem.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fliplet_workers import secrets
from fliplet_workers.config.model import (
    DEFAULT_BATCH_SIZE,
    Config,
    Database,
    DeleteLimit,
    Encryption,
    FileColumn,
    Operation,
)
from fliplet_workers.errors import ConfigError
from fliplet_workers.schedule import validate_cron
from fliplet_workers.secrets import Secret

__all__ = ["load_config"]

#: Where a value sits in a config: mapping keys (as written) and 0-based list indexes.
Key = tuple[str | int, ...]

YAML_SUFFIXES = (".yml", ".yaml")
CODE_SUFFIXES = (".py",)

DRIVERS = ("mysql", "sqlite", "postgres", "mssql")
DRIVER_ALIASES = {"mariadb": "mysql", "postgresql": "postgres", "sqlserver": "mssql"}
MODES = ("update", "replace")
VERBOSITIES = ("debug", "info", "critical")
HOOKS = ("insert", "update")
FILE_TYPES = ("remote", "local", "sharepoint")

#: Operation options that only mean something for one kind of operation (canonical names).
PUSH_ONLY = (
    "query",
    "source",
    "primary_column",
    "case_insensitive_primary_column",
    "timestamp_column",
    "delete_column",
    "mode",
    "batch_size",
    "concurrency",
    "run_hooks",
    "merge",
    "files",
    "encrypt",
    "on_sync",
    "delete_limit",
)
PULL_ONLY = ("where", "attributes", "join", "distinct", "action")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a YAML (``.yml``/``.yaml``) or Python code config (``.py``).

    Raises :class:`ConfigError` listing every problem found.
    """
    # Imported here: both modules build on the helpers below.
    from fliplet_workers.config.code_config import load_code_config
    from fliplet_workers.config.yaml_config import load_yaml_config

    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return load_yaml_config(file)
    if suffix in CODE_SUFFIXES:
        return load_code_config(file)
    raise ConfigError(
        str(path),
        [f"{file.name}: unsupported config file type '{suffix or '(none)'}'; use .yml, .yaml or .py"],
    )


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


# --------------------------------------------------------------------------------------------------
# Problems and where they are


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

    def line(self, at: Key) -> int | None:
        """The line of ``at``, or of its nearest ancestor that has one."""
        while True:
            if at in self.lines:
                return self.lines[at]
            if not at:
                return None
            at = at[:-1]

    def add(self, message: str, at: Key = (), prefix: str = "") -> None:
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


# --------------------------------------------------------------------------------------------------
# Reading options


class _Absent:
    __slots__ = ()


ABSENT: Any = _Absent()

Spellings = Mapping[str, Sequence[str]]  # canonical name -> accepted spellings, preferred first


def spellings_of(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Spellings for options written exactly as their canonical name (the YAML format)."""
    return {n: (n,) for n in names}


class Section:
    """One mapping of options being read: unknown keys are reported on creation (with a suggestion),
    typed getters return ``None`` and record a problem when a value is wrong or missing.
    """

    def __init__(
        self,
        report: Report,
        data: Mapping[Any, Any],
        at: Key,
        spellings: Spellings,
        *,
        prefix: str = "",
        display: str = "",
    ) -> None:
        self.report = report
        self.at = at
        self.prefix = prefix
        self.display = display
        self.preferred = {canonical: names[0] for canonical, names in spellings.items()}
        self._values: dict[str, Any] = {}
        self._spelling: dict[str, str] = {}
        canonical_of = {name: canonical for canonical, names in spellings.items() for name in names}
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
        self, canonical: str, *, required: bool = False, secret: bool = False, empty_is_none: bool = True
    ) -> str | None:
        """A string; numbers are taken as written (``database_password: 123456``)."""
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
            secrets.register(result)
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

    def section(self, canonical: str, spellings: Spellings) -> Section | None:
        """A nested mapping option read as its own :class:`Section`."""
        value = self.mapping(canonical)
        if value is None:
            return None
        return Section(
            self.report,
            value,
            self.where(canonical),
            spellings,
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


# --------------------------------------------------------------------------------------------------
# Building the model


def read_settings(sec: Section, base_dir: Path) -> dict[str, Any]:
    """Config-level options shared by both formats, as ``Config`` keyword arguments."""
    out: dict[str, Any] = {}
    token = sec.text("auth_token", secret=True)
    if token is not None:
        out["auth_token"] = token
    elif sec.raw_value("auth_token") is not BROKEN:  # an unset ${VAR} is reported already
        # the original's log table: "Auth token is required"; the option and file/line say where
        empty = " is empty" if sec.given("auth_token") else ""
        sec.report.add(f"Auth token is required (option '{sec.name('auth_token')}'{empty})",
                       sec.where("auth_token"), sec.prefix)
    api_url = sec.text("api_url")
    if api_url is not None:
        if re.match(r"^https?://[^/\s]+", api_url):
            out["api_url"] = api_url.strip()
        else:
            sec.problem("api_url", f"must be an http:// or https:// URL, got {shown(api_url)}")
    ca_bundle = sec.text("ca_bundle")
    if ca_bundle is not None:
        bundle = (base_dir / os.path.expanduser(ca_bundle)).resolve()
        if bundle.is_file():
            out["ca_bundle"] = str(bundle)
        else:
            sec.problem("ca_bundle", f"names a file that does not exist: '{bundle}'")
    for name in ("sync_on_init", "is_dry_run"):
        if name in sec.preferred:
            value = sec.flag(name)
            if value is not None:
                out[name] = value
    verbosity = sec.choice("log_verbosity", VERBOSITIES, ignore_case=True)
    if verbosity is not None:
        out["log_verbosity"] = verbosity
    retries = sec.whole("retries", minimum=0)
    if retries is not None:
        out["retries"] = retries
    timeout = sec.number("timeout", what="a positive number of seconds")
    if timeout is not None:
        out["timeout"] = timeout
    if "retry_delay" in sec.preferred:
        delay = sec.number("retry_delay", what="a positive number of seconds")
        if delay is not None:
            out["retry_delay"] = delay
    if "query_timeout" in sec.preferred:
        query_timeout = sec.number("query_timeout", what="a positive number of seconds")
        if query_timeout is not None:
            out["query_timeout"] = query_timeout
    if "timezone" in sec.preferred:
        zone = read_timezone(sec, "timezone")
        if zone is not None:
            out["timezone"] = zone
    if "alert_webhook" in sec.preferred:
        hook = sec.text("alert_webhook", secret=True)
        if hook is not None:
            if re.match(r"^https?://[^/\s]+", hook.strip()):
                out["alert_webhook"] = hook.strip()
            else:
                sec.problem("alert_webhook", "must be an http:// or https:// URL")
    return out


def read_timezone(sec: Section, canonical: str) -> str | None:
    """An IANA time zone name (``Asia/Tokyo``), checked against the system's zone database."""
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


_DELETE_LIMIT_OFF = ("none", "off", "unlimited")


def read_delete_limit(sec: Section, canonical: str) -> DeleteLimit | None:
    """``delete_limit``: a count (``500``), a percentage of the data source (``"10%"``) or ``none``."""
    if not sec.has(canonical):
        return None
    value = sec.raw_value(canonical)
    what = "must be a whole number of entries (500), a percentage of the data source ('10%') or none"
    if isinstance(value, bool):
        sec.problem(canonical, f"{what}, got {shown(value)}")
        return None
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
    sec.problem(canonical, f"{what}, got {shown(value)}")
    return None


_URL_BACKENDS = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql"}
_URL_BACKENDS |= {"sqlite": "sqlite", "mssql": "mssql"}
#: Options that the URL already answers (names without the section's prefix).
_URL_PARTS = ("host", "port", "name", "username", "password")


def read_database(
    sec: Section,
    prefix: str,
    base_dir: Path,
    *,
    extra: Section | None = None,
    native_odbc: bool | None = None,
) -> Database | None:
    """Database settings from ``<prefix>driver``, ``<prefix>host``… (``extra`` may hold ``domain``,
    ``instance`` and ``encrypt``: the code format's ``dialectOptions``). ``None`` when none are given
    or something is wrong (reported)."""
    before = len(sec.report.problems)

    def opt(part: str) -> str:
        return prefix + part

    names = (
        "driver",
        "host",
        "port",
        "name",
        "username",
        "password",
        "domain",
        "instance",
        "encrypt",
        "native_odbc",
        "url",
    )
    if not any(sec.given(opt(n)) for n in names if opt(n) in sec.preferred) and extra is None:
        return None

    driver = sec.choice(opt("driver"), DRIVERS, aliases=DRIVER_ALIASES, ignore_case=True)
    url_text = sec.text(opt("url"), secret=True) if opt("url") in sec.preferred else None
    url_driver: str | None = None
    url_value: Secret | None = None
    if url_text is not None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(url_text.reveal() if isinstance(url_text, Secret) else url_text)
        except (ArgumentError, ValueError):
            sec.problem(
                opt("url"),
                "is not a valid SQLAlchemy URL (dialect+driver://user:password@host:port/database)",
            )
        else:
            url_driver = _URL_BACKENDS.get(url.get_backend_name())
            if url_driver is None:
                sec.problem(
                    opt("url"),
                    f"uses database '{url.get_backend_name()}', which is not supported ({', '.join(DRIVERS)})",
                )
            if url_driver == "sqlite" and url.database and url.database != ":memory:":
                database_file = Path(url.database).expanduser()
                if not database_file.is_absolute():
                    url = url.set(database=str((base_dir / database_file).resolve()))
            if driver is not None and url_driver is not None and driver != url_driver:
                sec.problem(
                    opt("driver"), f"is '{driver}' but '{sec.name(opt('url'))}' is a {url_driver} URL"
                )
            for part in _URL_PARTS:
                if sec.has(opt(part)):
                    sec.problem(opt(part), f"cannot be used together with '{sec.name(opt('url'))}'")
            url_value = Secret(url.render_as_string(hide_password=False))
            secrets.register(url_value)
            if url.password:
                secrets.register(str(url.password))
    elif driver is None and not sec.given(opt("driver")):
        first = next((opt(n) for n in names if opt(n) in sec.preferred and sec.given(opt(n))), None)
        sec.problem(opt("driver"), f"is required to connect to a database ({', '.join(DRIVERS)})", near=first)

    host = sec.text(opt("host"))
    port = sec.whole(opt("port"), maximum=65535, what="a port number (1-65535)")
    name = sec.text(opt("name"))
    username = sec.text(opt("username"))
    password = sec.text(opt("password"), secret=True)

    def dialect_option(part: str, reader: Callable[[Section, str], Any]) -> Any:
        if extra is not None and extra.given(part):
            return reader(extra, part)
        if opt(part) in sec.preferred:
            return reader(sec, opt(part))
        return None

    domain = dialect_option("domain", Section.text)
    instance = dialect_option("instance", Section.text)
    encrypt = dialect_option("encrypt", Section.flag)
    if opt("native_odbc") in sec.preferred and sec.given(opt("native_odbc")):
        native_odbc = sec.flag(opt("native_odbc"))

    final_driver = driver or url_driver
    if final_driver == "sqlite" and url_value is None:
        if name is None:
            if not sec.given(opt("name")):
                sec.problem(
                    opt("name"), "is required for sqlite: the path of the database file", near=opt("driver")
                )
        elif name != ":memory:":
            name = str((base_dir / os.path.expanduser(name)).resolve())
    if len(sec.report.problems) > before or final_driver is None:
        return None
    return Database(
        driver=final_driver,  # type: ignore[arg-type]  # one of DRIVERS, checked above
        host=host,
        port=port,
        name=name,
        username=username,
        password=Secret(password) if password is not None else None,
        domain=domain,
        instance=instance,
        encrypt=encrypt,
        native_odbc=bool(native_odbc),
        url=url_value,
    )


FILE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "column": ("column",),
    "type": ("type",),
    "directory": ("directory",),
    "headers": ("headers",),
    "username": ("username",),
    "password": ("password",),
    "file_type": ("fileType", "file_type"),
}
ENCRYPT_SPELLINGS = spellings_of(("fields", "key", "salt"))


def read_files(sec: Section, canonical: str) -> tuple[FileColumn, ...] | None:
    items = sec.items(canonical)
    if items is None:
        return None if sec.has(canonical) else ()
    out: list[FileColumn] = []
    ok = True
    for item, at, label in items:
        if not isinstance(item, Mapping):
            sec.report.add(
                f"option '{label}' must be a mapping with 'column' and 'type', got {shown(item)}",
                at,
                sec.prefix,
            )
            ok = False
            continue
        before = len(sec.report.problems)
        entry = Section(sec.report, item, at, FILE_SPELLINGS, prefix=sec.prefix, display=f"{label}.")
        column = entry.text("column", required=True)
        kind = entry.choice("type", FILE_TYPES, required=True)
        directory = entry.text("directory")
        username = entry.text("username")
        password = entry.text("password", secret=True)
        file_type = entry.text("file_type")
        headers: dict[str, Secret] = {}
        header_map = entry.mapping("headers")
        for header, value in (header_map or {}).items():
            at_header = (*entry.where("headers"), header)
            text = value if isinstance(value, str) else entry.report.raw.get(at_header)
            if text is None and isinstance(value, int | float) and not isinstance(value, bool):
                text = str(value)
            if value is BROKEN:
                continue
            if not isinstance(text, str):
                entry.report.add(
                    f"option '{entry.name('headers')}.{header}' must be a string", at_header, sec.prefix
                )
                continue
            secrets.register(text)
            headers[str(header)] = Secret(text)
        if kind is not None:
            misplaced = {
                "directory": kind != "local",
                "headers": kind != "remote",
                "username": kind != "sharepoint",
                "password": kind != "sharepoint",
                "file_type": kind != "sharepoint",
            }
            for option, wrong in misplaced.items():
                if wrong and entry.given(option):
                    entry.problem(option, f"does not apply to {kind} files")
            if kind == "sharepoint":
                for option, value in (("username", username), ("password", password)):
                    if value is None and not entry.given(option):
                        entry.problem(option, "is required for sharepoint files")
        if len(sec.report.problems) > before or column is None or kind is None:
            ok = False
            continue
        out.append(
            FileColumn(
                column=column,
                type=kind,  # type: ignore[arg-type]  # one of FILE_TYPES
                directory=directory,
                headers=headers,
                username=username,
                password=Secret(password) if password is not None else None,
                file_type=file_type,
            )
        )
    return tuple(out) if ok else None


def read_encrypt(sec: Section, canonical: str, primary_column: str | None) -> Encryption | None:
    enc = sec.section(canonical, ENCRYPT_SPELLINGS)
    if enc is None:
        return None
    before = len(sec.report.problems)
    fields = enc.strings("fields", non_empty=True)
    key = enc.text("key", secret=True)
    salt = enc.text("salt", secret=True)
    if key is not None and salt is not None:
        enc.problem(
            "salt",
            f"cannot be used together with '{enc.name('key')}': the salt only protects a key Fliplet manages",
        )
    if fields and primary_column is not None and primary_column in fields:
        enc.problem(
            "fields", f"lists the primary column '{primary_column}': You cannot encrypt the Primary Key"
        )
    if len(sec.report.problems) > before or not fields:
        return None
    return Encryption(
        fields=fields, key=key if key is None else Secret(key), salt=salt if salt is None else Secret(salt)
    )


OperationHook = Callable[[Section, str, dict[str, Any]], None]


def read_operation(
    sec: Section,
    kind: str,
    *,
    has_database: bool,
    default_batch_size: int = DEFAULT_BATCH_SIZE,
    hook: OperationHook | None = None,
) -> Operation | None:
    """One operation's options (shared by both formats). ``hook`` reads where rows come from and the
    callbacks (the code format); without it, a push takes its rows from ``query`` (the YAML format).
    ``None`` when a problem was found (reported)."""
    before = len(sec.report.problems)
    kwargs: dict[str, Any] = {"type": kind}
    datasource_id = sec.whole("datasource_id", required=True)
    kwargs["datasource_id"] = datasource_id
    description = sec.text("description")
    if description is not None:
        kwargs["description"] = description.strip()
    kwargs["frequency"] = sec.cron("frequency")

    wrong_kind = PULL_ONLY if kind == "push" else PUSH_ONLY
    for name in wrong_kind:
        if name in sec.preferred and sec.given(name):
            sec.problem(name, f"only applies to {'pull' if kind == 'push' else 'push'} operations")

    if kind == "push":
        primary = sec.text("primary_column")
        kwargs["primary_column"] = primary
        kwargs["case_insensitive_primary_column"] = bool(sec.flag("case_insensitive_primary_column"))
        kwargs["timestamp_column"] = sec.text("timestamp_column")
        kwargs["delete_column"] = sec.text("delete_column")
        kwargs["mode"] = sec.choice("mode", MODES) or "update"
        kwargs["batch_size"] = sec.whole("batch_size") or default_batch_size
        kwargs["concurrency"] = sec.whole("concurrency") or 1
        kwargs["run_hooks"] = sec.strings("run_hooks", choices=HOOKS) or ()
        kwargs["merge"] = bool(sec.flag("merge"))
        kwargs["files"] = read_files(sec, "files") or ()
        kwargs["encrypt"] = read_encrypt(sec, "encrypt", primary)
        kwargs["delete_limit"] = read_delete_limit(sec, "delete_limit")
        if hook is not None:
            hook(sec, kind, kwargs)
        else:
            kwargs["query"] = sec.text("query", required=True)
            if not has_database:
                sec.report.add(
                    "a push operation needs a database: set 'database_driver' (and the other database_* "
                    "options) or 'database_url'",
                    (),
                    sec.prefix,
                )
    else:
        kwargs["where"] = sec.mapping("where") if "where" in sec.preferred else None
        attributes = sec.strings("attributes")
        kwargs["attributes"] = attributes
        kwargs["join"] = sec.mapping("join") if "join" in sec.preferred else None
        kwargs["distinct"] = sec.flag("distinct") if "distinct" in sec.preferred else None
        if hook is not None:
            hook(sec, kind, kwargs)
    if len(sec.report.problems) > before or datasource_id is None:
        return None
    return Operation(**kwargs)


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
