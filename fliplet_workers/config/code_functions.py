"""The functions a code config hands over, wrapped so the runtime calls each one the same way.

A code config's ``sourceQuery(db)``, ``source(http)``/``source()``, ``onSync(result)``/``onSync()``
and pull ``action(entries, db)``/``action(entries)`` may each take fewer arguments, be ``async`` or
return a ``requests.Response``. The loader wraps each in one of the classes here, so that the
runtime only ever calls ``Operation.source(ctx)``, ``on_sync(result)`` and ``action(entries, db)``
and gets plain values back. Nothing here reads options: :mod:`.code_config` decides which wrapper.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fliplet_workers.config.problems import shown
from fliplet_workers.errors import SourceError

__all__ = [
    "FunctionSource",
    "PullAction",
    "QuerySource",
    "SourceContext",
    "SourceDB",
    "SyncCallback",
    "settle",
    "takes_watermark",
]


class SourceDB(Protocol):
    """The database handle a ``sourceQuery(db)`` function (and a pull ``action``) receives."""

    def query(self, sql: str, params: Any = None) -> Iterable[Mapping[str, Any]]: ...


class SourceContext(Protocol):
    """What ``Operation.source(ctx)`` is called with by the runtime."""

    @property
    def db(self) -> SourceDB | None: ...

    @property
    def http(self) -> Any:  # a requests.Session-like object
        ...


def settle(result: Any) -> Any:
    """Run an ``async`` function's result to completion."""
    if inspect.isawaitable(result):
        awaitable: Awaitable[Any] = result

        async def wait() -> Any:
            return await awaitable

        return asyncio.run(wait())
    return result


def _rows(result: Any, label: str) -> Iterable[Mapping[str, Any]]:
    if hasattr(result, "json") and hasattr(result, "status_code") and hasattr(result, "raise_for_status"):
        result.raise_for_status()  # a requests.Response: use its JSON body
        result = result.json()
    if result is None or isinstance(result, str | bytes | Mapping) or not isinstance(result, Iterable):
        raise SourceError(f"{label} must return a list (or iterable) of row dicts, got {shown(result)}")
    return result


def takes_watermark(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a ``watermark`` keyword (or any keyword): an incremental operation's
    source functions then receive it (None on a full run)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "watermark" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
               for p in parameters)


def _watermark(fn: Callable[..., Any], ctx: Any) -> dict[str, Any]:
    """``{"watermark": ...}`` for a function that takes it, on an incremental operation's run."""
    return {"watermark": ctx.watermark} if getattr(ctx, "incremental", False) and takes_watermark(fn) else {}


@dataclass(frozen=True)
class QuerySource:
    """``sourceQuery(db)`` (or ``sourceQuery(db, watermark=None)``) as an ``Operation.source``."""

    fn: Callable[..., Any]
    name: str = "sourceQuery"

    def __call__(self, ctx: SourceContext) -> Iterable[Mapping[str, Any]]:
        if ctx.db is None:
            raise SourceError(f"{self.name}(db) needs a database, but the config defines none")
        return _rows(settle(self.fn(ctx.db, **_watermark(self.fn, ctx))), f"{self.name}(db)")


@dataclass(frozen=True)
class FunctionSource:
    """``source(http)`` (or ``source()``) as an ``Operation.source``."""

    fn: Callable[..., Any]
    takes_http: bool = True
    name: str = "source"

    def __call__(self, ctx: SourceContext) -> Iterable[Mapping[str, Any]]:
        extra = _watermark(self.fn, ctx)
        result = self.fn(ctx.http, **extra) if self.takes_http else self.fn(**extra)
        return _rows(settle(result), f"{self.name}({'http' if self.takes_http else ''})")


@dataclass(frozen=True)
class SyncCallback:
    """``onSync(result)`` (or ``onSync()``), always callable as ``callback(result)``."""

    fn: Callable[..., Any]
    takes_result: bool = True

    def __call__(self, result: dict[str, Any]) -> Any:
        return settle(self.fn(result) if self.takes_result else self.fn())


@dataclass(frozen=True)
class PullAction:
    """A pull ``action(entries, db)`` (or ``action(entries)``), always callable with both."""

    fn: Callable[..., Any]
    takes_db: bool = True

    def __call__(self, entries: list[dict[str, Any]], db: SourceDB | None = None) -> Any:
        return settle(self.fn(entries, db) if self.takes_db else self.fn(entries))


