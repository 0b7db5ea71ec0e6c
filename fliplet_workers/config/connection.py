"""Reading the database settings into a :class:`~.model.Database`, for both formats.

A YAML config writes them flat (``database_driver``, ``database_host``…), a code config as a
``database`` dict in Sequelize's words (``dialect``, ``host``, ``dialectOptions``…); both arrive here
as a :class:`~.section.Section` and a name prefix. A ``url`` (SQLAlchemy) replaces the parts: it is
checked, its sqlite path made absolute, and the whole URL and its password registered as secrets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fliplet_workers import redaction
from fliplet_workers.config.model import Database
from fliplet_workers.config.options import DATABASE_PARTS, DRIVER_ALIASES, DRIVERS
from fliplet_workers.config.section import Section
from fliplet_workers.redaction import Secret

__all__ = ["read_database"]

_URL_BACKENDS = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql"}
_URL_BACKENDS |= {"sqlite": "sqlite", "mssql": "mssql"}
#: Options that the URL already answers (names without the section's prefix).
_URL_PARTS = ("host", "port", "name", "username", "password")


@dataclass(frozen=True)
class _Prefixed:
    """The database options of one section: ``sec`` and the prefix of their names in it."""

    sec: Section
    prefix: str

    def opt(self, part: str) -> str:
        return self.prefix + part

    def offers(self, part: str) -> bool:
        """Whether this format has the option at all."""
        return self.opt(part) in self.sec.preferred


def read_database(
    sec: Section,
    prefix: str,
    *,
    extra: Section | None = None,
    native_odbc: bool | None = None,
) -> Database | None:
    """Database settings from ``<prefix>driver``, ``<prefix>host``… (``extra`` may hold ``domain``,
    ``instance`` and ``encrypt``: the code format's ``dialectOptions``). ``None`` when none are given
    or something is wrong (reported)."""
    before = len(sec.report.problems)
    db = _Prefixed(sec, prefix)
    if not any(sec.given(db.opt(n)) for n in DATABASE_PARTS if db.offers(n)) and extra is None:
        return None
    driver = sec.choice(db.opt("driver"), DRIVERS, aliases=DRIVER_ALIASES, ignore_case=True)
    url_text = sec.text(db.opt("url")) if db.offers("url") else None  # a secret: registered
    url_driver, url_value = _read_url(db, driver, url_text) if url_text is not None else (None, None)
    if url_text is None and driver is None and not sec.given(db.opt("driver")):
        first = next((db.opt(n) for n in DATABASE_PARTS if db.offers(n) and sec.given(db.opt(n))), None)
        sec.problem(
            db.opt("driver"), f"is required to connect to a database ({', '.join(DRIVERS)})", near=first
        )
    parts = _read_parts(db, extra, native_odbc)
    final_driver = driver or url_driver
    if final_driver == "sqlite" and url_value is None:
        parts["name"] = _sqlite_file(db, parts["name"])
    if len(sec.report.problems) > before or final_driver is None:
        return None
    return Database(
        driver=final_driver,  # type: ignore[arg-type]  # one of DRIVERS, checked above
        url=url_value,
        **parts,
    )


def _read_url(db: _Prefixed, driver: str | None, text: str) -> tuple[str | None, Secret | None]:
    """``url``: the driver it names and the URL to use (a relative sqlite path made absolute)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    sec, name = db.sec, db.opt("url")
    try:
        url = make_url(text.reveal() if isinstance(text, Secret) else text)
    except (ArgumentError, ValueError):
        sec.problem(name, "is not a valid SQLAlchemy URL (dialect+driver://user:password@host:port/database)")
        return None, None
    url_driver = _URL_BACKENDS.get(url.get_backend_name())
    if url_driver is None:
        sec.problem(
            name, f"uses database '{url.get_backend_name()}', which is not supported ({', '.join(DRIVERS)})"
        )
    if url_driver == "sqlite" and url.database and url.database != ":memory:":
        database_file = Path(url.database).expanduser()
        if not database_file.is_absolute():
            url = url.set(database=str((sec.report.base_dir / database_file).resolve()))
    if driver is not None and url_driver is not None and driver != url_driver:
        sec.problem(db.opt("driver"), f"is '{driver}' but '{sec.name(name)}' is a {url_driver} URL")
    for part in _URL_PARTS:
        if sec.has(db.opt(part)):
            sec.problem(db.opt(part), f"cannot be used together with '{sec.name(name)}'")
    value = Secret(url.render_as_string(hide_password=False))
    redaction.register(value)
    if url.password:
        redaction.register(str(url.password))
    return url_driver, value


def _read_parts(db: _Prefixed, extra: Section | None, native_odbc: bool | None) -> dict[str, Any]:
    """The connection parts as ``Database`` keyword arguments (``None`` where not given or wrong)."""
    sec = db.sec
    parts: dict[str, Any] = {
        "host": sec.text(db.opt("host")),
        "port": sec.whole(db.opt("port"), maximum=65535, what="a port number (1-65535)"),
        "name": sec.text(db.opt("name")),
        "username": sec.text(db.opt("username")),
        "password": sec.text(db.opt("password")),  # a secret: registered by the section
    }

    def dialect_option(part: str, reader: Callable[[Section, str], Any]) -> Any:
        if extra is not None and extra.given(part):
            return reader(extra, part)
        if db.offers(part):
            return reader(sec, db.opt(part))
        return None

    parts["domain"] = dialect_option("domain", Section.text)
    parts["instance"] = dialect_option("instance", Section.text)
    parts["encrypt"] = dialect_option("encrypt", Section.flag)
    if db.offers("native_odbc") and sec.given(db.opt("native_odbc")):
        native_odbc = sec.flag(db.opt("native_odbc"))
    parts["native_odbc"] = bool(native_odbc)
    return parts


def _sqlite_file(db: _Prefixed, name: str | None) -> str | None:
    """sqlite's ``name`` is the database file: required, and made absolute from the config's folder."""
    if name is None:
        if not db.sec.given(db.opt("name")):
            db.sec.problem(
                db.opt("name"), "is required for sqlite: the path of the database file", near=db.opt("driver")
            )
        return None
    if name == ":memory:":
        return name
    return str((db.sec.report.base_dir / os.path.expanduser(name)).resolve())
