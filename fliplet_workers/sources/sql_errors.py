"""A database failure in the database's own words, with every password redacted.

Why here, and why so careful: drivers echo connection strings, DSNs and sometimes the password itself
in their messages, and SQLAlchemy wraps them with the SQL and its parameters. :func:`driver_reason` keeps the
server's message only; :class:`Redactor` hides this database's passwords in every form a driver may
print them (URL-quoted too, and ``password=…`` pairs). No driver exception is ever chained.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy import URL, make_url
from sqlalchemy.exc import SQLAlchemyError, StatementError

from fliplet_workers.config.model import Database
from fliplet_workers.redaction import redact
from fliplet_workers.sources.sql_url import reveal

__all__ = ["Redactor", "driver_reason"]

#: pip package to install when a driver module is missing.
_DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
    "pymssql": "pymssql",
    "pyodbc": "pyodbc",
}

#: ``password=…`` / ``pwd=…`` pairs as connection strings print them.
_KV_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)(\{[^}]*\}|'[^']*'|\"[^\"]*\"|[^\s;,&)]+)")


class Redactor:
    """``redaction.redact`` plus one database's own password(s), however short, and key=value pairs."""

    def __init__(self, db: Database) -> None:
        self.values = _secret_values(db)

    def __call__(self, text_: str) -> str:
        out = redact(text_)
        for value in self.values:
            if len(value) >= 4:
                out = out.replace(value, "***")
            else:  # a very short password: only where it stands alone, not inside other words
                out = re.sub(rf"(?<![\w]){re.escape(value)}(?![\w])", "***", out)
        return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)


def _secret_values(db: Database) -> list[str]:
    """Every form in which this database's passwords could show up in a driver's message."""
    values: set[str] = set()
    if db.password:
        values.add(reveal(db.password))
    if db.url:
        raw = reveal(db.url)
        try:
            password = make_url(raw).password
        except Exception:
            values.add(raw)  # a URL that does not parse: hide the whole thing
        else:
            if password:
                values.add(str(password))
    for value in list(values):
        values.update({quote(value, safe=""), quote_plus(value)})
    return sorted((v for v in values if v), key=len, reverse=True)


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def driver_reason(exc: BaseException, url: URL | None) -> str:
    """The database's own words for ``exc`` (not SQLAlchemy's wrapper with SQL and parameters)."""
    source: BaseException = exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, BaseException):
        source = exc.orig
    if isinstance(source, ImportError):
        module = (source.name or "").split(".")[0]
        package = _DRIVER_PACKAGES.get(module, module or "the driver")
        dialect = url.drivername if url is not None else "this database"
        return f"the Python driver for {dialect} is not installed ({source}): pip install {package}"
    args: tuple[Any, ...] = tuple(getattr(source, "args", ()))
    if len(args) == 1 and isinstance(args[0], tuple):  # pymssql wraps (code, message) once more
        args = args[0]
    diag = getattr(source, "diag", None)  # psycopg2: the server's message without our DECLARE wrapper
    primary = getattr(diag, "message_primary", None)
    if primary:
        detail, hint = getattr(diag, "message_detail", None), getattr(diag, "message_hint", None)
        text_ = str(primary) + (f" ({detail})" if detail else "") + (f" (hint: {hint})" if hint else "")
    elif len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str | bytes):
        # PyMySQL / pymssql: (error code, message)
        lines = dict.fromkeys(line.strip() for line in _text(args[1]).splitlines() if line.strip())
        text_ = f"{' '.join(lines)} (error {args[0]})"  # FreeTDS repeats its lines: keep each once
    elif isinstance(source, SQLAlchemyError):
        text_ = _text(args[0]) if args else ""  # str() would add SQLAlchemy's "background" link
    else:
        text_ = str(source)
    text_ = re.sub(r"\s*\n\s*", " ", text_.strip())  # one line, for the log table
    return text_ or type(source).__name__

