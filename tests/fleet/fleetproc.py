"""Real fleet processes for the tests and the benchmark: Celery workers, beat and Flower.

Each process is ``python -m celery -A fliplet_workers ...`` in its own session (so that a SIGKILL of
its process group takes its pool children with it, like a host that dies), with its output in a log
file, on 127.0.0.1, configured by environment variables only, as in production.
Nothing here depends on pytest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "eu--sandbox-token"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def fleet_env(redis_url: str, config_dir: str, **overrides: Any) -> dict[str, str]:
    """The environment of every fleet process (fast settings for tests; override what you need)."""
    env = dict(os.environ)
    env.update({
        "FLIPLET_BROKER_URL": redis_url,
        "FLIPLET_CONFIG_DIR": config_dir,
        "FLIPLET_TIMEZONE": "UTC",
        "FLIPLET_AGENT_LOG": "-",
        "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the worker and its pool processes)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def stop(self) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Fleet:
    """The processes started for one test session; all stopped by :meth:`stop_all`."""

    env: dict[str, str]
    log_dir: str
    procs: list[Proc] = field(default_factory=list)
    _count: int = 0

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Proc:
        self._count += 1
        log = os.path.join(self.log_dir, f"{name}-{self._count}.log")
        out = open(log, "ab")  # noqa: SIM115 - the child keeps it open
        popen = subprocess.Popen([sys.executable, "-m", "celery", "-A", "fliplet_workers", *args],
                                 stdout=out, stderr=subprocess.STDOUT, env=dict(env or self.env),
                                 cwd=self.log_dir, start_new_session=True)
        out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker(self, concurrency: int = 1, pool: str = "prefork", wait: bool = True,
               env: Mapping[str, str] | None = None) -> Proc:
        name = f"w{self._count + 1}"
        proc = self._spawn(name, ["worker", "-l", "info", "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h",
                                  "--without-mingle", "--without-gossip"], env)
        if wait:
            wait_for(lambda: _ready(proc, "ready."), f"worker {name} to start:\n{proc.tail()}", 60)
        return proc

    def beat(self, env: Mapping[str, str] | None = None) -> Proc:
        proc = self._spawn("beat", ["beat", "-l", "debug"], env)
        wait_for(lambda: _ready(proc, "beat: Starting..."), f"beat to start:\n{proc.tail()}", 60)
        return proc

    def flower(self, port: int, env: Mapping[str, str] | None = None) -> Proc:
        return self._spawn("flower", ["flower", f"--port={port}", "--address=127.0.0.1"], env)

    def call(self, task: str, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None) -> str:
        """``celery -A fliplet_workers call <task> --args=... --kwargs=...``; returns the task id."""
        import json

        cmd = [sys.executable, "-m", "celery", "-A", "fliplet_workers", "call", task, f"--args={json.dumps(list(args))}"]
        if kwargs:
            cmd.append(f"--kwargs={json.dumps(dict(kwargs))}")
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip().splitlines()[-1]

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


def _ready(proc: Proc, marker: str) -> bool:
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
    return marker in proc.text()


# ------------------------------------------------------------------------------------ data


def make_source(path: str, rows: int, table: str = "users") -> None:
    """A sqlite table ``users(id, email, name, score)`` with ``rows`` rows, ids 1..rows."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, email TEXT, name TEXT, score INTEGER)")
        db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?)",
                       ((i, f"user{i}@example.org", f"User {i}", i % 97) for i in range(1, rows + 1)))
        db.commit()


def write_config(config_dir: str, name: str, *, api_url: str, datasource_id: int, database: str,
                 batch_size: int = 1000, frequency: str | None = None, **extra: Any) -> str:
    """A YAML push config reading ``users`` from the sqlite file ``database``; returns its path."""
    doc: dict[str, Any] = {
        "auth_token": TOKEN,
        "api_url": api_url,
        "database_driver": "sqlite",
        "database_name": database,
        "type": "push",
        "datasource_id": datasource_id,
        "primary_column": "id",
        "query": "SELECT id, email, name, score FROM users",
        "batch_size": batch_size,
        "retry_delay": 0.2,
        "log_verbosity": "info",
    }
    if frequency:
        doc["frequency"] = frequency
    doc.update(extra)
    path = os.path.join(config_dir, f"{name}.yml")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(doc, fh)
    os.replace(tmp, path)  # atomic: beat never sees half a file
    return path
