"""Logging as the original agent does it: terminal + ``~/fliplet-agent.log`` (appended), every
line prefixed with the config's name, filtered by ``log_verbosity``, and scrubbed of secrets.

``FLIPLET_AGENT_LOG`` overrides the log file path (``-`` or empty disables the file).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from fliplet_workers.secrets import redact

ROOT = "fliplet_workers"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "critical": logging.CRITICAL}
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class RedactFilter(logging.Filter):
    """Last line of defence: no registered secret reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class OperationLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with ``[config name]`` like the original (since 2.0.0)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['name']}] {msg}" if self.extra else msg, kwargs


def log_file_path() -> str | None:
    path = os.environ.get("FLIPLET_AGENT_LOG")
    if path is None:
        return os.path.join(os.path.expanduser("~"), "fliplet-agent.log")
    return None if path in ("", "-") else path


def setup(verbosity: str = "debug", *, to_terminal: bool = True) -> None:
    """Configure the package logger once per process (idempotent)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(LEVELS.get(verbosity, logging.DEBUG))
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT)
    if to_terminal:
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setFormatter(formatter)
        terminal.addFilter(RedactFilter())
        logger.addHandler(terminal)
    path = log_file_path()
    if path:
        file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        file_handler.setFormatter(formatter)
        file_handler.addFilter(RedactFilter())
        logger.addHandler(file_handler)


def for_config(name: str) -> OperationLog:
    return OperationLog(logging.getLogger(f"{ROOT}.agent"), {"name": name})
