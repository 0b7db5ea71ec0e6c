"""Running a code config file: executing it, calling ``setup(agent)``, and finding its lines.

The file is imported as a fresh module; ``setup(agent)`` gets a :class:`RecordingAgent` that only
records each ``agent.push({...})``/``agent.pull({...})`` and the line it was made on. A failure while
running becomes a problem with the file's line and the last line of the traceback (secrets
redacted), not a traceback on the terminal. The source is then parsed (``ast``) to map each option's
key path to its line, so the option checks can say where a wrong value is written.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import logging
import re
import sys
import traceback
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fliplet_workers.config.code_functions import settle
from fliplet_workers.config.model import Config
from fliplet_workers.config.problems import Key, Report
from fliplet_workers.redaction import redact

__all__ = ["AgentApi", "Call", "RecordingAgent", "execute", "record_lines", "run_setup"]


@dataclass
class Call:
    """One ``agent.push``/``agent.pull`` made by ``setup``: its options and the line it was made on."""

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
    calls: list[Call] = field(default_factory=list)
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
        self.calls.append(Call(kind, value, line))


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


def execute(path: Path, report: Report) -> types.ModuleType | None:
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


def run_setup(module: types.ModuleType, path: Path, report: Report) -> RecordingAgent | None:
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
        settle(setup(agent, options) if takes_options else setup(agent))
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


def record_lines(source: str, report: Report, calls: list[Call]) -> None:
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


