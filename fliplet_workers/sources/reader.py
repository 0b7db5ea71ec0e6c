"""Where a push operation's rows come from: a SQL query, or a code config's ``source`` function.

Code-config functions get a :class:`SourceContext` with ``db`` (the SQL source, or None) and
``http`` (a ``requests.Session`` from :func:`~fliplet_workers.fliplet.sessions.new_session`: the
config's CA bundle, the environment's proxies, the agent's User-Agent), the Python equivalents of
the original's Sequelize handle and axios.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from fliplet_workers.config.model import Config, Operation
from fliplet_workers.errors import AgentError, SourceError
from fliplet_workers.fliplet.sessions import new_session
from fliplet_workers.redaction import redact


@dataclass
class SourceContext:
    db: Any  # fliplet_workers.sources.sql.SqlSource | None
    http: requests.Session
    config: Config
    #: An incremental run: read the rows whose ``timestamp_column`` is after ``watermark``
    #: (None: every row, a full run). Code sources that take a ``watermark`` keyword receive it.
    incremental: bool = False
    watermark: Any = None

    @classmethod
    def open(cls, config: Config, db: Any = None) -> SourceContext:
        """A context whose ``http`` session is made for ``config``; the caller closes it."""
        return cls(db=db, http=new_session(ca_bundle=config.ca_bundle), config=config)

    def close(self) -> None:
        """Close the ``http`` session (``db`` belongs to the run, which closes it)."""
        self.http.close()


def open_database(config: Config) -> Any:
    """Connect the config's database (raises SourceConnectError), or return None if it has none."""
    if config.database is None:
        return None
    from fliplet_workers.sources.sql import SqlSource

    source = SqlSource(config.database, base_dir=os.path.dirname(os.path.abspath(config.path)),
                       query_timeout=config.query_timeout)
    source.connect()
    return source


def iter_source_rows(op: Operation, ctx: SourceContext) -> Iterator[Mapping[str, Any]]:
    """Stream the operation's source rows (not normalised yet); on an incremental run only those newer
    than the watermark (see :mod:`.sql_watermark`)."""
    if op.query is not None:
        if ctx.db is None:
            raise SourceError("The operation has a 'query' but the config defines no database.")
        if ctx.incremental and op.timestamp_column is not None:
            from fliplet_workers.sources.sql_watermark import watermark_query

            sql, params = watermark_query(op.query, op.timestamp_column, ctx.watermark, ctx.db.engine.dialect)
            yield from ctx.db.rows(sql, params)
            return
        yield from ctx.db.rows(op.query)
        return
    if op.source is None:
        raise SourceError("The operation defines neither a 'query' nor a 'source'.")
    rows = _function_rows(op, ctx)
    if ctx.incremental and ctx.watermark is not None and op.timestamp_column is not None:
        rows = _newer(rows, op.timestamp_column, ctx.watermark)
    yield from rows


def _function_rows(op: Operation, ctx: SourceContext) -> Iterator[Mapping[str, Any]]:
    assert op.source is not None
    try:
        produced = op.source(ctx)
        if isinstance(produced, requests.Response):
            produced = produced.json()
        if isinstance(produced, Mapping):
            produced = produced.get("data") or produced.get("entries") or [produced]
        for number, row in enumerate(produced, start=1):
            if not isinstance(row, Mapping):
                raise SourceError(f"The source function returned row {number} as {type(row).__name__}, "
                                  "expected a mapping of column names to values.")
            yield row
    except AgentError:
        raise
    except Exception as error:  # a user's function: report its words, never crash the agent
        raise SourceError(f"The source function failed: {type(error).__name__}: {redact(str(error))}") from None


def _newer(rows: Iterator[Mapping[str, Any]], column: str, since: Any) -> Iterator[Mapping[str, Any]]:
    """A code source's rows newer than ``since`` (it may not filter them itself). A row whose
    timestamp cannot be compared with the watermark (missing, another type) is kept: the diff decides."""
    for row in rows:
        value = row.get(column)
        try:
            if value is not None and value <= since:
                continue
        except TypeError:
            pass
        yield row
