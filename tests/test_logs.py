"""Cheap per-row logging (issue 9): each line formatted once, the buffer redacted once for both the
terminal and the log file, flushed at once for warnings, by a timer, at the end of a run and at exit
(also after an exception); and the progress display, drawn only on a terminal."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from fliplet_workers import logs, redaction
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer

SECRET = "s3cr3t-Value-for-logs"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[cfg\] .*$")


def _wait_for(predicate: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_each_line_is_redacted_in_both_outputs_by_one_redaction_per_flush(
        capsys: pytest.CaptureFixture[str], _agent_log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redaction.register(SECRET)
    calls: list[str] = []

    def counting(text: str) -> str:
        calls.append(text)
        return redaction.redact(text)

    monkeypatch.setattr(logs, "redact", counting)
    logs.setup("debug")
    log = logs.for_config("cfg")
    log.debug(f"Row {SECRET} has been marked for inserting.")  # the fast path (no LogRecord)
    log.info(f"token={SECRET} and postgres://user:pw-in-url@db:5432/x")
    log.debug("with %s args", SECRET)  # the standard path (a LogRecord, then the formatter)
    log.error(f"error {SECRET}")  # flushes: one redaction for the four lines, for both outputs
    assert len(calls) == 1
    terminal, logfile = capsys.readouterr().err, _agent_log_file.read_text()
    assert terminal == logfile
    lines = logfile.splitlines()
    assert len(lines) == 4 and all(LINE.match(line) for line in lines), lines
    assert SECRET not in logfile and "pw-in-url" not in logfile
    assert lines[0].endswith("DEBUG [cfg] Row *** has been marked for inserting.")
    assert "token=*** and postgres://user:***@db:5432/x" in lines[1]
    assert lines[2].endswith("DEBUG [cfg] with *** args") and lines[3].endswith("ERROR [cfg] error ***")


def test_the_fast_path_writes_what_the_formatter_would(_agent_log_file: Path) -> None:
    logs.setup("info")
    log = logs.for_config("cfg")
    log.debug("hidden at info")
    log.info("fast")
    logs._fast = None  # every line now goes through a LogRecord and logging.Formatter
    log.info("standard")
    logs.flush()
    first, second = _agent_log_file.read_text().splitlines()
    assert first.endswith(" INFO [cfg] fast") and second.endswith(" INFO [cfg] standard")
    assert LINE.match(first) and LINE.match(second)
    assert "hidden" not in _agent_log_file.read_text()


def test_another_handler_still_gets_records(_agent_log_file: Path) -> None:
    """With a second handler on the package logger the fast path steps aside: it receives every line."""
    logs.setup("debug", to_terminal=False)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logging.getLogger(logs.ROOT).addHandler(Keep())
    logs.for_config("cfg").debug("to both")
    logs.flush()
    assert seen == ["[cfg] to both"] and "DEBUG [cfg] to both" in _agent_log_file.read_text()


def test_a_warning_flushes_at_once_and_lines_wait_for_it(_agent_log_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "FLUSH_SECONDS", 60.0)  # no timer flush during this test
    logs.setup("debug", to_terminal=False)
    log = logs.for_config("cfg")
    log.debug("buffered row line")
    log.info("buffered info line")
    assert _agent_log_file.read_text() == ""  # buffered
    log.warning("a warning")
    text = _agent_log_file.read_text()  # no flush() call: the warning wrote the buffer out
    assert text.index("buffered row line") < text.index("buffered info line") < text.index("a warning")


def test_the_timer_flushes_an_idle_buffer(_agent_log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "FLUSH_SECONDS", 0.2)
    logs.setup("debug", to_terminal=False)
    logs.for_config("cfg").debug("waiting line")
    assert _wait_for(lambda: "waiting line" in _agent_log_file.read_text(), 3.0)


def test_a_big_buffer_is_written_before_the_timer(_agent_log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "FLUSH_SECONDS", 60.0)
    logs.setup("debug", to_terminal=False)
    log = logs.for_config("cfg")
    for number in range(2000):
        log.debug(f"Row {number} has been marked for inserting.")
    # > BUFFER_BYTES went out, written by the writer thread long before its 60 s timer
    assert _wait_for(lambda: "Row 0 has been marked" in _agent_log_file.read_text(), 3.0)


def test_a_logging_thread_that_outruns_the_writer_writes_itself(_agent_log_file: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "FLUSH_SECONDS", 60.0)
    monkeypatch.setattr(logs, "BACKLOG_BUFFERS", 0)  # no text may wait for the writer thread
    logs.setup("debug", to_terminal=False)
    log = logs.for_config("cfg")
    for number in range(2000):
        log.debug(f"Row {number} has been marked for inserting.")
    assert "Row 0 has been marked" in _agent_log_file.read_text()  # written by this thread, at once


def test_several_lines_in_one_call_are_the_lines_one_by_one(_agent_log_file: Path) -> None:
    """``debug.lines`` (the diff's two lines about a row) writes what two ``debug`` calls would,
    with the same head, and steps aside like ``debug`` when another handler wants records."""
    logs.setup("debug", to_terminal=False)
    log = logs.for_config("cfg")
    log.debug.lines("Row 1 already exists", "Row 1 already exists and does not require updating.")  # type: ignore[attr-defined]
    log.debug("Row 2 has been marked for inserting.")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logging.getLogger(logs.ROOT).addHandler(Keep())
    log.debug.lines("first", "second")  # type: ignore[attr-defined]
    logs.flush()
    lines = _agent_log_file.read_text().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert [line.split(" DEBUG ")[1] for line in lines] == [
        "[cfg] Row 1 already exists", "[cfg] Row 1 already exists and does not require updating.",
        "[cfg] Row 2 has been marked for inserting.", "[cfg] first", "[cfg] second"]
    assert seen == ["[cfg] first", "[cfg] second"]


def test_a_line_that_cannot_be_encoded_costs_the_file_nothing_else(_agent_log_file: Path) -> None:
    logs.setup("debug", to_terminal=False)
    log = logs.for_config("cfg")
    log.debug("Row before has been marked for inserting.")
    log.debug("Row \ud800 has been marked for inserting.")  # a lone surrogate (JSON "\\ud800" in a key)
    log.debug("Row after has been marked for inserting.")
    logs.flush()
    text = _agent_log_file.read_text()
    assert "Row before" in text and "Row \\ud800 has been" in text and "Row after" in text


def test_buffered_lines_reach_the_file_when_the_process_dies_of_an_exception(tmp_path: Path) -> None:
    log_file = tmp_path / "crash.log"
    script = ("from fliplet_workers import logs\n"
              "logs.FLUSH_SECONDS = 600.0\n"
              "logs.setup('debug')\n"
              "log = logs.for_config('cfg')\n"
              "for n in range(5000):\n"
              "    log.debug(f'Row {n} has been marked for inserting.')\n"
              "raise RuntimeError('boom')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FLIPLET_AGENT_LOG": str(log_file)})
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr
    for output in (log_file.read_text(), proc.stderr):
        assert "Row 0 has been marked" in output and "Row 4999 has been marked for inserting." in output
        assert output.count("has been marked for inserting.") == 5000


def _config(sandbox: SandboxServer, tmp_path: Path, rows: int, **extra: object) -> Path:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(n, f"value {n}") for n in range(1, rows + 1)])
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump({
        "auth_token": DEMO_TOKEN, "api_url": sandbox.url, "datasource_id": sandbox.store.create_data_source("logs"),
        "database_driver": "sqlite", "database_name": str(db), "query": "SELECT id, v FROM t",
        "primary_column": "id", "batch_size": 10, **extra}))
    return config


def test_a_failed_run_still_writes_its_buffered_lines(sandbox: SandboxServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that raises (an unknown data source here) has written every line before the error."""
    from fliplet_workers.config import load_config
    from fliplet_workers.errors import AgentError
    from fliplet_workers.pipeline.agent import run_config

    monkeypatch.setattr(logs, "FLUSH_SECONDS", 600.0)
    log_file = tmp_path / "agent.log"
    monkeypatch.setenv("FLIPLET_AGENT_LOG", str(log_file))
    config = _config(sandbox, tmp_path, 5)
    config.write_text(config.read_text().replace("datasource_id: 3", "datasource_id: 987654"))
    logs.setup("debug", to_terminal=False)
    with pytest.raises(AgentError):
        run_config(load_config(str(config)))
    text = log_file.read_text()
    assert "DEBUG [cfg] Regional URL has been set to" in text and "Fetching data via Fliplet API" in text


def test_no_progress_display_when_stderr_is_not_a_terminal(sandbox: SandboxServer, tmp_path: Path) -> None:
    config = _config(sandbox, tmp_path, 30)
    proc = subprocess.run([sys.executable, "-m", "fliplet_workers.cli", "start", str(config)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "FLIPLET_AGENT_LOG": str(tmp_path / "a.log")})
    assert proc.returncode == 0, proc.stderr
    assert "Rows judged" not in proc.stderr and "batches committed" not in proc.stderr and "\r" not in proc.stderr
    assert "cfg operation 1: inserted 30" in proc.stderr


def _run_in_pty(config: Path, log_file: Path) -> tuple[int, str]:
    """``fliplet-workers start`` with stdout and stderr on a pseudo-terminal; all it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a new pty has 0 columns
    proc = subprocess.Popen([sys.executable, "-m", "fliplet_workers.cli", "start", str(config)],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**os.environ, "FLIPLET_AGENT_LOG": str(log_file)})
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(10), b"".join(chunks).decode(errors="replace")


def test_the_progress_display_on_a_terminal_has_totals_and_log_lines_stay_whole(
        sandbox: SandboxServer, tmp_path: Path) -> None:
    config = _config(sandbox, tmp_path, 2500, log_verbosity="debug")
    first, first_screen = _run_in_pty(config, tmp_path / "first.log")  # a first sync: 2500 entries now exist
    assert first == 0
    code, screen = _run_in_pty(config, tmp_path / "again.log")  # a re-run judges 2500 rows of 2500
    assert code == 0, screen
    assert re.search(r"Rows judged: +\d+%\|.*\| *[0-9.]+k?/2\.50k \[[0-9:]+<[0-9:?]+, .* rows/s, batches committed 0/0\]",
                     screen), screen[-2000:]
    assert "cfg operation 1: inserted 0, updated 0, deleted 0, unchanged 2500" in screen
    # Every log line is whole on its own line, not glued onto a progress bar's text.
    logged = [line for line in re.split(r"[\r\n]+", screen) if " DEBUG [cfg] " in line]
    assert len(logged) >= 5000
    bad = [line for line in logged if not LINE.match(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line))]
    assert not bad, [repr(b) for b in bad[:3]]
    # The first sync (no remote entries: no total) showed the batches committed of those cut.
    drawn = re.findall(r"Rows judged: ([0-9.]+k?) rows \[.*?rows/s, batches committed (\d+)/(\d+)\]", first_screen)
    assert any(int(cut) > 0 for _, _, cut in drawn), drawn
    assert all(int(done) <= int(cut) <= 250 for _, done, cut in drawn), drawn
    text = (tmp_path / "again.log").read_text()
    assert "Rows judged" not in text and text.count(" DEBUG [cfg] Row ") == 5000
