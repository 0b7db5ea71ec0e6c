"""Logging as the original agent does it: terminal + ``~/fliplet-agent.log`` (appended), every
line prefixed with the config's name, filtered by ``log_verbosity``, and scrubbed of secrets.

``FLIPLET_AGENT_LOG`` overrides the log file path (``-`` or empty disables the file).

At the default verbosity (``debug``) the agent writes one or two lines per source row, so a line
must cost next to nothing (issue 9). :class:`AgentHandler` therefore formats each record once,
queues the line, and writes the terminal and the file through one in-memory buffer that is flushed
at once for a warning or worse, when it grows past :data:`BUFFER_BYTES`, at least every
:data:`FLUSH_SECONDS` (a writer thread), at the end of a run (:func:`flush`) and at exit. A full
buffer's copy for the log file is written by the writer thread, so that the file writes overlap the
work that logs (the terminal is shared with other writers: it is written by the logging thread). The plain ``debug``/``info`` calls of
:class:`OperationLog` skip building a ``LogRecord`` when that handler is the only place their lines
can go, and queue the very line the formatter would have written, its head (time, level, name) made
once per millisecond; the diff's two lines about a row go in one call (``lines``).

Redaction happens once per flush, on the joined text that both streams then receive: a secret or a
URL password never spans a line break (see :func:`fliplet_workers.redaction.redact`), so that is the
same as redacting each line, at a fraction of the cost (a substring test per secret per 64 KiB).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Any

from fliplet_workers.redaction import redact

ROOT = "fliplet_workers"
#: ``log_verbosity`` → the lowest level shown. As in the original, ``critical`` filters out only info
#: and debug lines: errors (a skipped row) and warnings (no primary key) always show.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "critical": logging.WARNING}
_FORMAT = "%(asctime)s %(levelname)s %(message)s"
#: Buffered lines are written out once they reach this size...
BUFFER_BYTES = 1 << 16
#: ...or this long after the last write, whichever comes first.
FLUSH_SECONDS = 1.0
#: Full buffers the writer thread may fall behind by in writing the log file before the logging thread
#: writes them itself.
BACKLOG_BUFFERS = 16


class RedactFilter(logging.Filter):
    """Last line of defence: no registered secret reaches a handler (used on handlers that are not
    an :class:`AgentHandler`, e.g. Celery's in the fleet)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


#: Wraps each write to the terminal while something else draws on it (the progress bar): given the
#: stream, returns a context that clears the drawing before the write and redraws it after.
TerminalGuard = Callable[[IO[str]], AbstractContextManager[Any]]


class AgentHandler(logging.Handler):
    """Formats each record once, queues the line, and writes the queue, redacted once, to every
    stream (the terminal and the log file) when flushed. See the module docstring for when."""

    def __init__(self, owner: logging.Logger, terminal: IO[str] | None, files: list[IO[str]]) -> None:
        super().__init__()
        self.owner = owner  # the package logger, whose only handler this is meant to be
        self.terminal = terminal
        self.files = files  # owned: closed by :meth:`close`
        self.guard: TerminalGuard | None = None
        # Appends and pops of a deque are atomic: writers never wait for a lock. ``_size`` is only
        # a hint of when to flush (a lost increment under a race merely delays that).
        self._lines: deque[str] = deque()
        self._size = 0
        self._write_lock = threading.Lock()  # one flush at a time, so the buffers go out in order
        self._file_lock = threading.Lock()  # one write to the files at a time, in order
        self._file_texts: deque[str] = deque()  # flushed text the writer thread is to write to the files
        self._flushed_at = time.monotonic()
        self._stop = False
        self._wake = threading.Event()  # set when there is text for the files: the writer writes it
        self._timer = threading.Thread(target=self._tick, name="fliplet-log-flush", daemon=True)
        self._timer.start()
        # (second, its asctime as ``logging.Formatter`` writes it, in local time): one tuple, so
        # that threads never pair one second with another's text.
        self._stamp: tuple[int, str] = (-1, "")

    # -- writing lines -------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # as logging does: report a broken record, never raise into the caller
            self.handleError(record)
            return
        self.add(line, urgent=record.levelno >= logging.WARNING)

    def line(self, route: Route, message: Any) -> bool:
        """Queue ``prefix + message`` at the route's level exactly as :meth:`emit` would format it,
        without a ``LogRecord``: the fast path of :class:`OperationLog`. Only when this handler is
        the only place the line can go (no other handler, filter or propagation that would want a
        real record) and the level is enabled; else False, and nothing is done.

        Why so terse: at ``debug`` this runs once or twice per source row (issue 9). The line's head
        (time, level, prefix) is made once per millisecond and reused by every line of that
        millisecond."""
        logger, owner = route.logger, self.owner
        if (logger.handlers or logger.filters or self.filters or owner.propagate or logger.parent is not owner
                or len(owner.handlers) != 1 or owner.handlers[0] is not self or not logger.isEnabledFor(route.level)):
            return False
        millis = int(_clock() * 1000)
        cached = route.cached
        if cached[0] != millis:
            cached = route.cached = (millis, self._head(millis, route.level, route.prefix))
        line = cached[1] + (message if type(message) is str else str(message))
        self._lines.append(line)
        self._size += len(line)
        if self._size >= BUFFER_BYTES:
            self._full()
        return True

    def lines(self, route: Route, messages: tuple[str, ...]) -> bool:
        """:meth:`line` for several messages at once: one routing check, one clock read, one
        queued text (the diff's two lines about a row that exists remotely)."""
        logger, owner = route.logger, self.owner
        if (logger.handlers or logger.filters or self.filters or owner.propagate or logger.parent is not owner
                or len(owner.handlers) != 1 or owner.handlers[0] is not self or not logger.isEnabledFor(route.level)):
            return False
        millis = int(_clock() * 1000)
        cached = route.cached
        if cached[0] != millis:
            cached = route.cached = (millis, self._head(millis, route.level, route.prefix))
        head = cached[1]
        text = head + ("\n" + head).join(messages)
        self._lines.append(text)
        self._size += len(text)
        if self._size >= BUFFER_BYTES:
            self._full()
        return True

    def _head(self, millis: int, level: int, prefix: str) -> str:
        """``2024-01-02 03:04:05,678 DEBUG [name] ``: what ``logging.Formatter`` writes before the
        message (``asctime`` in local time, as it does)."""
        second, stamp = self._stamp
        if millis // 1000 != second:
            second = millis // 1000
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = (second, stamp)
        return f"{stamp},{_MILLIS[millis % 1000]} {_NAMES[level]} {prefix}"

    def add(self, line: str, *, urgent: bool) -> None:
        self._lines.append(line)
        self._size += len(line)
        if urgent:
            self.flush()
        elif self._size >= BUFFER_BYTES:
            self._full()

    def _full(self) -> None:
        """The buffer is full: written out now, by this thread, to the terminal; the log file's copy
        is handed to the writer thread (a file write releases the GIL, so it overlaps the work that
        logs). The terminal is written here because other code writes to it too (the progress
        display's redraws, ``print``, a traceback): a text stream must not be written from two
        threads at once."""
        self.flush(hand_off=True)

    # -- flushing ------------------------------------------------------------------------------
    def flush(self, *, hand_off: bool = False) -> None:
        """Write every queued line, redacted, to each stream, then flush the streams. With
        ``hand_off`` the files' copy may be left to the writer thread (at most
        :data:`BACKLOG_BUFFERS` texts wait for it; else this thread writes them)."""
        with self._write_lock:
            queued, pop = len(self._lines), self._lines.popleft
            self._size = 0
            self._flushed_at = time.monotonic()
            text = redact("\n".join([pop() for _ in range(queued)]) + "\n") if queued else None
            if text is not None and self.terminal is not None:
                guard = self.guard
                if guard is None:
                    self._write(self.terminal, text)
                else:
                    with guard(self.terminal):
                        self._write(self.terminal, text)
            if (text is not None and hand_off and self.files and len(self._file_texts) < BACKLOG_BUFFERS
                    and self._timer.is_alive()):
                self._file_texts.append(text)
                self._wake.set()
            else:
                self._write_files(text)

    def _write_files(self, text: str | None = None) -> None:
        """Write the texts waiting for the writer thread, then ``text``, to the files, in order."""
        with self._file_lock:
            while self._file_texts:
                waiting = self._file_texts.popleft()
                for stream in self.files:
                    self._write(stream, waiting)
            if text is not None:
                for stream in self.files:
                    self._write(stream, text)

    @staticmethod
    def _write(stream: IO[str], text: str) -> None:
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as error:  # a closed pipe or file: say so where it can still be read
            print(f"--- Logging error: could not write to {getattr(stream, 'name', stream)}: {error}",
                  file=sys.__stderr__)

    def _tick(self) -> None:
        """The writer thread: writes the texts handed to it to the files, and flushes the buffer at
        least every :data:`FLUSH_SECONDS` (no line waits longer)."""
        while not self._stop:
            woken = self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self._write_files()
            if self._lines and (not woken or time.monotonic() - self._flushed_at >= FLUSH_SECONDS):
                self.flush()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        try:
            self.flush()
        finally:
            for stream in self.files:
                stream.close()
            self.files = []
            global _fast
            if _fast is self:
                _fast = None
            super().close()


_clock = time.time


class Route:
    """Where one :class:`OperationLog` writes at one level, and the head of its lines in the last
    millisecond it wrote (one tuple, so that threads never pair a millisecond with another's head)."""

    __slots__ = ("cached", "level", "logger", "prefix")

    def __init__(self, logger: logging.Logger, level: int, prefix: str) -> None:
        self.logger, self.level, self.prefix = logger, level, prefix
        self.cached: tuple[int, str] = (-1, "")


#: "000" to "999": the milliseconds of a timestamp without a format spec (measurably cheaper).
_MILLIS = [f"{ms:03d}" for ms in range(1000)]
_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO"}

#: The handler that :func:`setup` installed, while it is the package logger's only one.
_fast: AgentHandler | None = None


class OperationLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with ``[config name]`` like the original (since 2.0.0)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['name']}] {msg}" if self.extra else msg, kwargs

    def __init__(self, logger: logging.Logger, extra: dict[str, Any] | None = None) -> None:
        super().__init__(logger, extra)
        self._prefix = f"[{extra['name']}] " if extra else ""
        # Per instance, so that ``log.debug`` handed to the diff as its note is a plain function
        # with everything bound, and carries ``lines`` (see :data:`fliplet_workers.core.diff.Note`).
        self.debug = self._writer(logging.DEBUG, super().debug)  # type: ignore[method-assign]
        self.info = self._writer(logging.INFO, super().info)  # type: ignore[method-assign]

    def _writer(self, level: int, slow: Callable[..., None]) -> Callable[..., None]:
        """``debug``/``info``: the handler's fast path (:meth:`AgentHandler.line`) when it can take
        the line, else ``logging``'s own way (a ``LogRecord`` for every handler and filter)."""
        route = Route(self.logger, level, self._prefix)

        def write(msg: Any, *args: Any, **kwargs: Any) -> None:
            handler = _fast
            if handler is None or args or kwargs or not handler.line(route, msg):
                slow(msg, *args, **kwargs)

        def lines(*messages: str) -> None:
            handler = _fast
            if handler is None or not handler.lines(route, messages):
                for message in messages:
                    slow(message)

        write.lines = lines  # type: ignore[attr-defined]
        return write


def log_file_path() -> str | None:
    path = os.environ.get("FLIPLET_AGENT_LOG")
    if path is None:
        return os.path.join(os.path.expanduser("~"), "fliplet-agent.log")
    return None if path in ("", "-") else path


def setup(verbosity: str = "debug", *, to_terminal: bool = True) -> None:
    """Configure the package logger once per process (idempotent): one :class:`AgentHandler` writing
    to stderr (unless ``to_terminal`` is false) and to the log file (unless disabled)."""
    global _fast
    logger = logging.getLogger(ROOT)
    logger.setLevel(LEVELS.get(verbosity, logging.DEBUG))
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    path = log_file_path()
    # backslashreplace, as the terminal does: text that cannot be encoded (a lone surrogate in a
    # key) must not cost the file the whole buffer it is in
    files: list[IO[str]] = [open(path, "a", encoding="utf-8", errors="backslashreplace")] if path else []  # noqa: SIM115 - the handler owns it
    handler = AgentHandler(logger, sys.stderr if to_terminal else None, files)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)
    _fast = handler


def flush() -> None:
    """Write out every buffered line now (the end of a run; also done at exit by ``logging``)."""
    for handler in logging.getLogger(ROOT).handlers:
        handler.flush()


@contextmanager
def terminal_guard(guard: TerminalGuard) -> Iterator[None]:
    """While inside, log lines reach the terminal through ``guard`` (e.g. tqdm's
    ``external_write_mode``, which lifts the progress bar off the screen and redraws it after)."""
    handlers = [h for h in logging.getLogger(ROOT).handlers if isinstance(h, AgentHandler)]
    for handler in handlers:
        handler.flush()
        handler.guard = guard
    try:
        yield
    finally:
        for handler in handlers:
            handler.flush()
            handler.guard = None


def for_config(name: str) -> OperationLog:
    return OperationLog(logging.getLogger(f"{ROOT}.agent"), {"name": name})
