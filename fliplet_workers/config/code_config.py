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

The keys each dict accepts are the option table's code spellings (:mod:`.options`); the file is run
by :mod:`.code_file` and its functions wrapped by :mod:`.code_functions`, so this module only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fliplet_workers.config.code_file import RecordingAgent, execute, record_lines, run_setup
from fliplet_workers.config.code_functions import (
    FunctionSource,
    PullAction,
    QuerySource,
    SourceContext,
    SourceDB,
    SyncCallback,
)
from fliplet_workers.config.connection import read_database
from fliplet_workers.config.model import DEFAULT_BATCH_SIZE, Config, Database, Operation
from fliplet_workers.config.operations import read_operation, read_settings
from fliplet_workers.config.options import CODE_DATABASE, CODE_OPERATION, CODE_SETTINGS, DIALECT_OPTIONS
from fliplet_workers.config.problems import Key, Report, fail_if_problems, read_text, shown
from fliplet_workers.config.section import Section

__all__ = [
    "FunctionSource",
    "PullAction",
    "QuerySource",
    "SourceContext",
    "SourceDB",
    "SyncCallback",
    "load_code_config",
]

_ODBC_MODULE = "sequelize-odbc-mssql"


def load_code_config(path: Path) -> Config:
    """Run a Python code config and validate what it defines. Raises ``ConfigError``."""
    given, path = path, path.absolute()
    report = Report(label=path.name, base_dir=path.resolve().parent)
    settings, agent = _run_file(path, given, report)

    sec = Section(report, settings, ("config",), CODE_SETTINGS)
    config_kwargs = read_settings(sec, "code")
    config_kwargs.setdefault("sync_on_init", True)  # the original's JS-mode default
    batch_size = config_kwargs.pop("batch_size", None) or DEFAULT_BATCH_SIZE
    database, has_database = _read_database(sec)

    operations: list[Operation] = []
    for index, call in enumerate(agent.calls):
        at: Key = ("operations", index)
        prefix = f"operation {index + 1}: "
        if not isinstance(call.options, Mapping):
            report.add(f"agent.{call.kind}() takes a dict of options, got {shown(call.options)}", at, prefix)
            continue
        op_sec = Section(report, call.options, at, CODE_OPERATION, prefix=prefix)
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


def _run_file(path: Path, given: Path, report: Report) -> tuple[Mapping[Any, Any], RecordingAgent]:
    """Run the file and its ``setup(agent)``: its ``config`` dict and the operations it added (with
    their lines recorded). Raises ``ConfigError`` (as ``given``) when that fails."""
    source = read_text(path, report)
    fail_if_problems(given, report)
    assert source is not None
    module = execute(path, report)
    fail_if_problems(given, report)
    assert module is not None
    settings = getattr(module, "config", None)
    if settings is None:
        report.add("the file does not define config = {...} with the agent's settings (such as 'authToken')")
    elif not isinstance(settings, Mapping):
        report.add(f"config must be a dict of settings, got {shown(settings)}")
    agent = run_setup(module, path, report)
    fail_if_problems(given, report)
    assert isinstance(settings, Mapping) and agent is not None
    record_lines(source, report, agent.calls)
    return settings, agent


def _read_database(sec: Section) -> tuple[Database | None, bool]:
    """``config["database"]``: the database (or None) and whether one was meant to be defined."""
    value = sec.raw_value("database")
    if value is None or (isinstance(value, Mapping) and not value):
        return None, False  # the original skips an empty database too
    db = sec.section("database", CODE_DATABASE)
    if db is None:
        return None, True
    extra = db.section("dialect_options", DIALECT_OPTIONS)
    native_odbc = None
    module_path = db.text("dialect_module_path")
    if module_path is not None:
        if module_path == _ODBC_MODULE:
            native_odbc = True
        else:
            db.problem(
                "dialect_module_path", f"only '{_ODBC_MODULE}' is understood (it turns on native ODBC)"
            )
    return read_database(db, "", extra=extra, native_odbc=native_odbc), True


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
