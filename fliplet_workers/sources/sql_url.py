"""SQLAlchemy URLs from a config's ``database_*`` options, and the local checks made before connecting.

* :func:`engine_url` turns a :class:`~fliplet_workers.config.model.Database` into a SQLAlchemy URL:
  ``database_url`` wins, else the driver and parts (built with ``URL.create`` so any character in a
  password is safe). Relative SQLite paths are resolved against the config file's folder.
* Plain ``database_url`` schemes get the shipped drivers (:func:`with_shipped_driver`):
  ``postgresql://`` and ``postgres://`` → psycopg2, ``mysql://`` and ``mariadb://`` → PyMySQL,
  ``mssql://`` → pymssql.
* A missing SQLite file is an error (:func:`check_sqlite_file`), not a new empty database.
"""

from __future__ import annotations

import os

from sqlalchemy import URL, make_url

from fliplet_workers.config.model import Database
from fliplet_workers.redaction import Secret

__all__ = ["ODBC_DRIVER", "SqliteFileMissing", "check_sqlite_file", "engine_url", "reveal", "with_shipped_driver"]

#: The ODBC driver named in ``mssql+pyodbc`` URLs built from parts (``database_native_odbc``).
ODBC_DRIVER = "ODBC Driver 18 for SQL Server"

_DIALECTS = {"postgres": "postgresql+psycopg2", "mysql": "mysql+pymysql"}

#: Plain ``database_url`` schemes and the shipped driver each one means. SQLAlchemy's own defaults
#: (psycopg2 for PostgreSQL but MySQLdb for MySQL, and no ``postgres`` at all) would need drivers the
#: package does not install; an explicit ``+driver`` is always kept.
_PLAIN_SCHEMES = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mssql": "mssql+pymssql",
}


def engine_url(db: Database, base_dir: str) -> URL:
    """The SQLAlchemy URL for ``db``. Relative SQLite paths are resolved against ``base_dir``.

    Raises ``ValueError`` (with a message free of secrets) when the settings cannot make a URL.
    """
    if db.url:
        try:
            url = make_url(reveal(db.url))
        except Exception:
            raise ValueError(
                "database_url is not a valid SQLAlchemy URL (expected dialect+driver://user:password@host:port/name)"
            ) from None
        return _resolve_sqlite(with_shipped_driver(url), base_dir)

    if db.driver == "sqlite":
        if not db.name:
            raise ValueError("the sqlite driver needs database_name: the path of the database file")
        return _resolve_sqlite(URL.create("sqlite", database=db.name), base_dir)

    password = reveal(db.password) if db.password is not None else None
    host = db.host or "localhost"
    username = db.username
    query: dict[str, str] = {}
    if db.driver in _DIALECTS:
        drivername = _DIALECTS[db.driver]
        if db.driver == "mysql":
            query["charset"] = "utf8mb4"
    elif db.driver == "mssql":
        if db.instance:
            host = f"{host}\\{db.instance}"
        if db.domain and username:
            username = f"{db.domain}\\{username}"
        if db.native_odbc:
            drivername = "mssql+pyodbc"
            query["driver"] = ODBC_DRIVER
            if db.encrypt is not None:
                query["Encrypt"] = "yes" if db.encrypt else "no"
        else:
            drivername = "mssql+pymssql"
            if db.encrypt is not None:
                query["encryption"] = "require" if db.encrypt else "off"
    else:
        raise ValueError(f"unknown database driver {db.driver!r}: use one of sqlite, postgres, mysql, mssql")
    return URL.create(
        drivername, username=username, password=password, host=host, port=db.port, database=db.name, query=query
    )


def with_shipped_driver(url: URL) -> URL:
    """``url`` with a plain scheme (``postgresql://``, ``mysql://``…) mapped to the driver this package
    installs (see ``_PLAIN_SCHEMES``); a URL naming its driver (``dialect+driver://``) is unchanged."""
    if "+" in url.drivername:
        return url
    drivername = _PLAIN_SCHEMES.get(url.drivername)
    return url.set(drivername=drivername) if drivername else url



class SqliteFileMissing(Exception):
    """The SQLite database file named in the config does not exist."""


def reveal(value: str) -> str:
    return value.reveal() if isinstance(value, Secret) else str(value)


def _resolve_sqlite(url: URL, base_dir: str) -> URL:
    """Resolve a relative SQLite path against ``base_dir`` (the config file's folder)."""
    if url.get_backend_name() != "sqlite":
        return url
    name = url.database or ""
    if not name or name == ":memory:" or name.startswith("file:") or url.query.get("uri"):
        return url
    path = os.path.expanduser(name)
    if not os.path.isabs(path):
        path = os.path.join(os.path.abspath(base_dir), path)
    return url.set(database=os.path.normpath(path))


def check_sqlite_file(url: URL) -> None:
    """SQLite would silently create a missing file (then fail on "no such table"): say so instead."""
    if url.get_backend_name() != "sqlite":
        return
    name = url.database or ""
    if not name or name == ":memory:" or name.startswith("file:") or url.query.get("uri"):
        return
    if not os.path.isfile(name):
        raise SqliteFileMissing(f"SQLite database file not found: {name}")

