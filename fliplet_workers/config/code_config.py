"""Python code configs: the equivalent of the original agent's JavaScript "advanced mode".

A ``.py`` file defines the settings and a ``setup`` function that adds operations::

    config = {"authToken": "eu--123", "database": {"dialect": "postgres", "host": "db", ...}}

    def setup(agent):
        agent.push({"targetDataSourceId": 123, "sourceQuery": "SELECT id, email FROM users",
                    "primaryColumnName": "id", "frequency": "*/15 * * * *"})
        agent.pull({"targetDataSourceId": 456, "where": {"syncedAt": ""}, "action": save})

Keys may be written in the original's camelCase (``authToken``, ``primaryColumnName``...) or in the
YAML format's snake_case (``auth_token``, ``primary_column``...); see ``configs/examples/code_config.py``.
Where rows come from, for a push:

* ``sourceQuery``: a SQL string (→ ``Operation.query``), or a function ``sourceQuery(db)`` returning
  rows, where ``db.query(sql, params=None)`` yields dict rows;
* ``source``: a function ``source(http)`` (or ``source()``) returning an iterable of row dicts, where
  ``http`` is a ``requests.Session``-like object. Returning a ``requests.Response`` is fine too: its
  JSON body is used, as the original used an axios response's ``data``.

Both kinds of functions become ``Operation.source``, called by the runtime as ``source(ctx)`` with a
:class:`SourceContext`. ``onSync(result)`` and pull ``action(entries, db)`` callbacks are wrapped so the
runtime always calls them with those arguments whatever the user's function takes. A function may be
``async``: it is run to completion.

Unlike YAML, ``${NAME}`` is not substituted: Python code reads ``os.environ`` itself. Settings the
original defaults differently in its JS mode keep that default here: ``syncOnInit`` is true unless set.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib.util
import inspect
import logging
import re
import sys
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fliplet_workers.config.loader import (
    DEFAULT_BATCH_SIZE,
    Key,
    Report,
    Section,
    fail_if_problems,
    read_database,
    read_operation,
    read_settings,
    read_text,
    shown,
)
from fliplet_workers.config.model import Config, Database, Operation
from fliplet_workers.errors import SourceError
from fliplet_workers.secrets import redact

__all__ = [
    "CONFIG_SPELLINGS",
    "DATABASE_SPELLINGS",
    "OPERATION_SPELLINGS",
    "SourceContext",
    "SourceDB",
    "load_code_config",
]

CONFIG_SPELLINGS: dict[str, tuple[str, ...]] = {
    "auth_token": ("authToken", "auth_token"),
    "is_dry_run": ("isDryRun", "is_dry_run"),
    "sync_on_init": ("syncOnInit", "sync_on_init"),
    "log_verbosity": ("logVerbosity", "log_verbosity"),
    "batch_size": ("batchSize", "batch_size"),  # default for every push operation
    "database": ("database",),
    "api_url": ("baseURL", "apiUrl", "api_url"),  # baseURL: the original's name
    "ca_bundle": ("caBundle", "ca_bundle"),
    "retries": ("retries",),
    "timeout": ("timeout",),
    "retry_delay": ("retryDelay", "retry_delay"),
    "query_timeout": ("queryTimeout", "query_timeout"),
    "timezone": ("timezone", "timeZone"),
    "alert_webhook": ("alertWebhook", "alert_webhook"),
}
DATABASE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "driver": ("dialect", "driver"),
    "host": ("host",),
    "port": ("port",),
    "name": ("database", "name", "storage"),  # storage: Sequelize's name for the sqlite file
    "username": ("username",),
    "password": ("password",),
    "url": ("url",),
    "domain": ("domain",),
    "instance": ("instanceName", "instance"),
    "encrypt": ("encrypt",),
    "native_odbc": ("nativeOdbc", "native_odbc"),
    "dialect_module_path": ("dialectModulePath",),
    "dialect_options": ("dialectOptions", "dialect_options"),
}
DIALECT_OPTION_SPELLINGS: dict[str, tuple[str, ...]] = {
    "domain": ("domain",),
    "instance": ("instanceName", "instance"),
    "encrypt": ("encrypt",),
}
OPERATION_SPELLINGS: dict[str, tuple[str, ...]] = {
    "datasource_id": ("targetDataSourceId", "datasource_id"),
    "description": ("description",),
    "frequency": ("frequency",),
    "query": ("sourceQuery", "source_query", "query"),
    "source": ("source",),
    "primary_column": ("primaryColumnName", "primary_column"),
    "case_insensitive_primary_column": ("caseInsensitivePrimaryColumn", "case_insensitive_primary_column"),
    "timestamp_column": ("timestampColumnName", "timestamp_column"),
    "delete_column": ("deleteColumnName", "delete_column"),
    "mode": ("mode",),
    "batch_size": ("batchSize", "batch_size"),
    "concurrency": ("concurrency",),
    "run_hooks": ("runHooks", "run_hooks"),
    "merge": ("merge",),
    "files": ("files",),
    "encrypt": ("encrypt",),
    "on_sync": ("onSync", "on_sync"),
    "delete_limit": ("deleteLimit", "delete_limit"),
    "where": ("where",),
    "attributes": ("attributes",),
    "join": ("join",),
    "distinct": ("distinct",),
    "action": ("action",),
}
_ODBC_MODULE = "sequelize-odbc-mssql"


# --------------------------------------------------------------------------------------------------
# What the runtime hands to source functions


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


def _settle(result: Any) -> Any:
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


@dataclass(frozen=True)
class QuerySource:
    """``sourceQuery(db)`` as an ``Operation.source``."""

    fn: Callable[..., Any]
    name: str = "sourceQuery"

    def __call__(self, ctx: SourceContext) -> Iterable[Mapping[str, Any]]:
        if ctx.db is None:
            raise SourceError(f"{self.name}(db) needs a database, but the config defines none")
        return _rows(_settle(self.fn(ctx.db)), f"{self.name}(db)")


@dataclass(frozen=True)
class FunctionSource:
    """``source(http)`` (or ``source()``) as an ``Operation.source``."""

    fn: Callable[..., Any]
    takes_http: bool = True
    name: str = "source"

    def __call__(self, ctx: SourceContext) -> Iterable[Mapping[str, Any]]:
        result = self.fn(ctx.http) if self.takes_http else self.fn()
        return _rows(_settle(result), f"{self.name}({'http' if self.takes_http else ''})")


@dataclass(frozen=True)
class SyncCallback:
    """``onSync(result)`` (or ``onSync()``), always callable as ``callback(result)``."""

    fn: Callable[..., Any]
    takes_result: bool = True

    def __call__(self, result: dict[str, Any]) -> Any:
        return _settle(self.fn(result) if self.takes_result else self.fn())


@dataclass(frozen=True)
class PullAction:
    """A pull ``action(entries, db)`` (or ``action(entries)``), always callable with both."""

    fn: Callable[..., Any]
    takes_db: bool = True

    def __call__(self, entries: list[dict[str, Any]], db: SourceDB | None = None) -> Any:
        return _settle(self.fn(entries, db) if self.takes_db else self.fn(entries))


# --------------------------------------------------------------------------------------------------
# Running the file


@dataclass
class _Call:
    kind: str
    options: Any
    line: int | None


class AgentApi:
    """``agent.api`` in code configs: Fliplet API calls made with the config's own token, base URL and
    CA bundle (the original hands actions an axios instance). ``request(url=..., method=..., data=...)``
    returns the parsed JSON answer; failures raise the agent's typed errors."""

    def __init__(self) -> None:
        self._config: Config | None = None
        self._client: Any = None

    def bind(self, config: Config) -> None:
        self._config = config

    def request(self, url: str, method: str = "GET", data: Any = None,
                params: Mapping[str, Any] | None = None) -> Any:
        if self._config is None:
            raise RuntimeError("agent.api can be used while operations run (in source, action, onSync), "
                               "not in setup() itself")
        if self._client is None:
            from fliplet_workers.fliplet.client import FlipletClient  # the config layer stays HTTP-free

            config = self._config
            self._client = FlipletClient(config.auth_token, config.api_url, ca_bundle=config.ca_bundle,
                                         timeout=config.timeout)
        return self._client.json(method.upper(), url, json=data, params=params)


@dataclass
class RecordingAgent:
    """The ``agent`` handed to ``setup(agent)``: records each ``push``/``pull`` and where it was made;
    its ``api`` serves the operations' functions once the config is loaded."""

    filename: str
    calls: list[_Call] = field(default_factory=list)
    api: AgentApi = field(default_factory=AgentApi)

    def push(self, options: Mapping[str, Any] | None = None, /, **kwargs: Any) -> RecordingAgent:
        """Add a push operation: ``agent.push({...})`` or ``agent.push(key=value, ...)``."""
        self._record("push", options, kwargs)
        return self

    def pull(self, options: Mapping[str, Any] | None = None, /, **kwargs: Any) -> RecordingAgent:
        """Add a pull operation: ``agent.pull({...})`` or ``agent.pull(key=value, ...)``."""
        self._record("pull", options, kwargs)
        return self

    def _record(self, kind: str, options: Any, kwargs: dict[str, Any]) -> None:
        line = next(
            (f.lineno for f in reversed(traceback.extract_stack()) if f.filename == self.filename),
            None,
        )
        if options is None:
            value: Any = dict(kwargs)
        elif isinstance(options, Mapping):
            value = {**options, **kwargs}
        else:
            value = options
        self.calls.append(_Call(kind, value, line))


def _error_text(exc: BaseException) -> str:
    """The last line of a traceback, e.g. ``KeyError: 'DB_HOST'`` (secrets redacted)."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    message = str(exc)
    return redact(f"{name}: {message}" if message else name)


def _error_line(exc: BaseException, filename: str) -> int | None:
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return frames[-1].lineno if frames else None


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.blake2b(str(path).encode(), digest_size=4).hexdigest()
    return f"fliplet_config_{stem}_{digest}"


def _execute(path: Path, report: Report) -> types.ModuleType | None:
    filename = str(path)
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, filename)
    if spec is None or spec.loader is None:
        report.add("the file cannot be loaded as Python code")
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        line = _error_line(exc, filename)
        where = f"{report.label}:{line}" if line else report.label
        if isinstance(exc, SyntaxError) and exc.filename == filename:
            report.problems.append(f"{where}: Python syntax error: {exc.msg}")
        else:
            report.problems.append(f"{where}: running the config file failed: {_error_text(exc)}")
        return None
    return module


def _run_setup(module: types.ModuleType, path: Path, report: Report) -> RecordingAgent | None:
    setup = getattr(module, "setup", None)
    if not callable(setup):
        report.add(
            "the file does not define a setup(agent) function that adds operations with "
            "agent.push({...}) or agent.pull({...})"
        )
        return None
    agent = RecordingAgent(str(path))
    try:
        signature = inspect.signature(setup)
        takes_options = _accepts(signature, 2)
        if not takes_options and not _accepts(signature, 1):
            report.add("setup must take one argument, agent (or two: agent, options)")
            return None
    except (TypeError, ValueError):
        takes_options = False
    options = types.SimpleNamespace(log=logging.getLogger(f"fliplet_workers.config.{path.stem}"))
    try:
        _settle(setup(agent, options) if takes_options else setup(agent))
    except (Exception, SystemExit) as exc:
        line = _error_line(exc, str(path))
        where = f"{report.label}:{line}" if line else report.label
        report.problems.append(f"{where}: setup(agent) failed: {_error_text(exc)}")
        return None
    if not agent.calls:
        report.add("setup(agent) adds no operation; call agent.push({...}) or agent.pull({...}) in it")
        return None
    return agent


def _accepts(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Line numbers from the source


def _record_lines(source: str, report: Report, calls: list[_Call]) -> None:
    """Map option key paths to lines: the ``config = {...}`` literal and each push/pull call's dict."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id == "config" and value is not None:
            report.lines[("config",)] = node.lineno
            _literal_lines(value, ("config",), report)
    by_line: dict[int, list[ast.Call]] = {}
    for found_node in ast.walk(tree):
        if (
            isinstance(found_node, ast.Call)
            and isinstance(found_node.func, ast.Attribute)
            and found_node.func.attr in ("push", "pull")
        ):
            by_line.setdefault(found_node.lineno, []).append(found_node)
    for index, call in enumerate(calls):
        at: Key = ("operations", index)
        if call.line is None:
            continue
        report.lines[at] = call.line
        found = [
            c
            for c in by_line.get(call.line, [])
            if isinstance(c.func, ast.Attribute) and c.func.attr == call.kind
        ]
        if not found:
            continue
        if found[0].args:
            _literal_lines(found[0].args[0], at, report)
        for keyword in found[0].keywords:
            if keyword.arg is not None:
                report.lines[(*at, keyword.arg)] = keyword.lineno
                _literal_lines(keyword.value, (*at, keyword.arg), report)


def _literal_lines(node: ast.expr, at: Key, report: Report) -> None:
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                report.lines[(*at, key.value)] = key.lineno
                _literal_lines(value, (*at, key.value), report)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        for keyword in node.keywords:
            if keyword.arg is not None:
                report.lines[(*at, keyword.arg)] = keyword.lineno
                _literal_lines(keyword.value, (*at, keyword.arg), report)
    elif isinstance(node, ast.List | ast.Tuple):
        for index, item in enumerate(node.elts):
            report.lines[(*at, index)] = item.lineno
            _literal_lines(item, (*at, index), report)


# --------------------------------------------------------------------------------------------------
# Building the model


def load_code_config(path: Path) -> Config:
    """Run a Python code config and validate what it defines. Raises ``ConfigError``."""
    given, path = path, path.absolute()
    report = Report(label=path.name)
    source = read_text(path, report)
    fail_if_problems(given, report)
    assert source is not None

    module = _execute(path, report)
    fail_if_problems(given, report)
    assert module is not None
    settings = getattr(module, "config", None)
    if settings is None:
        report.add("the file does not define config = {...} with the agent's settings (such as 'authToken')")
    elif not isinstance(settings, Mapping):
        report.add(f"config must be a dict of settings, got {shown(settings)}")
    agent = _run_setup(module, path, report)
    fail_if_problems(given, report)
    assert isinstance(settings, Mapping) and agent is not None
    _record_lines(source, report, agent.calls)

    base_dir = path.resolve().parent
    sec = Section(report, settings, ("config",), CONFIG_SPELLINGS)
    config_kwargs = read_settings(sec, base_dir)
    config_kwargs.setdefault("sync_on_init", True)  # the original's JS-mode default
    batch_size = sec.whole("batch_size") or DEFAULT_BATCH_SIZE
    database, has_database = _read_database(sec, base_dir)

    operations: list[Operation] = []
    for index, call in enumerate(agent.calls):
        at: Key = ("operations", index)
        prefix = f"operation {index + 1}: "
        if not isinstance(call.options, Mapping):
            report.add(f"agent.{call.kind}() takes a dict of options, got {shown(call.options)}", at, prefix)
            continue
        op_sec = Section(report, call.options, at, OPERATION_SPELLINGS, prefix=prefix)
        hook = _callables(has_database)
        operation = read_operation(
            op_sec, call.kind, has_database=has_database, default_batch_size=batch_size, hook=hook
        )
        if operation is not None:
            operations.append(operation)
    fail_if_problems(given, report)
    config = Config(
        name=path.stem,
        path=str(path.resolve()),
        operations=tuple(operations),
        database=database,
        **config_kwargs,
    )
    agent.api.bind(config)
    return config


def _read_database(sec: Section, base_dir: Path) -> tuple[Database | None, bool]:
    """``config["database"]``: the database (or None) and whether one was meant to be defined."""
    value = sec.raw_value("database")
    if value is None or (isinstance(value, Mapping) and not value):
        return None, False  # the original skips an empty database too
    db = sec.section("database", DATABASE_SPELLINGS)
    if db is None:
        return None, True
    extra = db.section("dialect_options", DIALECT_OPTION_SPELLINGS)
    native_odbc = None
    module_path = db.text("dialect_module_path")
    if module_path is not None:
        if module_path == _ODBC_MODULE:
            native_odbc = True
        else:
            db.problem(
                "dialect_module_path", f"only '{_ODBC_MODULE}' is understood (it turns on native ODBC)"
            )
    return read_database(db, "", base_dir, extra=extra, native_odbc=native_odbc), True


def _callables(has_database: bool) -> Callable[[Section, str, dict[str, Any]], None]:
    """Read the function options of one operation into ``Operation`` keyword arguments."""

    def hook(sec: Section, kind: str, kwargs: dict[str, Any]) -> None:
        if kind == "pull":
            action = sec.function("action", 2, 1, shape=f"{sec.name('action')}(entries, db) or (entries)")
            if action is not None:
                kwargs["action"] = PullAction(action[0], takes_db=action[1] == 2)
            return
        query_value = sec.raw_value("query")
        uses_db = False
        if callable(query_value):
            fn = sec.function("query", 1, shape=f"{sec.name('query')}(db)")
            if fn is not None:
                kwargs["source"] = QuerySource(fn[0], name=sec.name("query"))
            uses_db = True
        elif sec.given("query"):
            kwargs["query"] = sec.text("query", required=True)
            uses_db = True
        if sec.given("source"):
            fn = sec.function("source", 1, 0, shape="source(http) or source()")
            if fn is not None:
                kwargs["source"] = FunctionSource(fn[0], takes_http=fn[1] == 1)
            if sec.given("query"):
                sec.problem("source", f"cannot be used together with '{sec.name('query')}'; pick one")
        elif not sec.given("query"):
            sec.problem("query", "(or 'source') is required for a push operation: where do rows come from?")
        if uses_db and not has_database:
            sec.problem("query", "needs a database: add a 'database' dict to config (or use 'source')")
        on_sync = sec.function("on_sync", 1, 0, shape=f"{sec.name('on_sync')}(result) or ()")
        if on_sync is not None:
            kwargs["on_sync"] = SyncCallback(on_sync[0], takes_result=on_sync[1] == 1)

    return hook
