"""The SQL of an incremental run: the user's query, narrowed to the rows newer than the watermark.

Two ways, as the user chooses:

* the query uses ``:watermark`` itself: it runs as written with ``watermark`` bound (``None`` on a full
  run, so write ``WHERE :watermark IS NULL OR updated_at > :watermark``, or a ``COALESCE``);
* otherwise it is wrapped: ``SELECT * FROM (<query>) AS q WHERE q.<column> > :watermark``, the column
  quoted by the database's own rules (it is the query's result label, matched exactly). A full run
  runs the query as written.

The watermark is bound as a parameter with the type the source gave it (a datetime, a date, a number,
a string), never pasted into the text. SQL Server refuses an ``ORDER BY`` inside a derived table:
there, write the condition with ``:watermark`` in the query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Dialect

__all__ = ["PARAMETER", "uses_watermark", "watermark_query"]

PARAMETER = "watermark"
_USES = re.compile(r"(?<![:\w]):watermark\b")


def uses_watermark(query: str) -> bool:
    """Whether the user's query binds ``:watermark`` itself."""
    return _USES.search(query) is not None


def watermark_query(query: str, column: str, since: Any, dialect: Dialect,
                    ) -> tuple[str, Mapping[str, Any] | None]:
    """The SQL to run and its parameters: ``since`` None (a full run) reads every row."""
    if uses_watermark(query):
        return query, {PARAMETER: since}
    if since is None:
        return query, None
    inner = query.strip().rstrip(";").rstrip()
    quoted = dialect.identifier_preparer.quote_identifier(column)
    return f"SELECT * FROM (\n{inner}\n) AS q WHERE q.{quoted} > :{PARAMETER}", {PARAMETER: since}
