"""``fliplet-agent demo``: the whole agent end to end, offline, in one command.

Seeds a SQLite database, starts the local sandbox, then runs ``configs/demo.yml`` four times: a dry
run, the first sync, a re-run with nothing changed (no commit is sent), and a run after one row was
edited and another flagged as deleted. Each step's heading comes first, then the agent's log lines,
then what landed; the demo ends with the console's URL, where every commit shows each entry's change
(before → after). On a terminal the sandbox keeps serving until Ctrl+C; otherwise its state is saved
(``var/demo-sandbox.json``) for ``fliplet-agent sandbox --data`` to show later.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fliplet_workers import logs
from fliplet_workers.config import load_config
from fliplet_workers.pipeline.agent import run_config
from fliplet_workers.sandbox import DEFAULT_PORT, DEMO_TOKEN, SandboxServer

USERS = [(i, f"user{i}@example.org", f"User {i}", "2024-01-01T09:00:00Z") for i in range(1, 26)]


def seed(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS users")
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, full_name TEXT, "
                   "updated_at TEXT, deleted_at TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, NULL)", USERS)


def heading(title: str) -> None:
    """A step's heading, printed (and flushed) before the step's log lines."""
    print(f"\n== {title}", flush=True)


def show(server: SandboxServer, outcome: str) -> None:
    """What landed after a step (the agent's log lines are flushed by the end of each run)."""
    sys.stderr.flush()
    entries = server.store.entries(1)
    commits = server.store.commit_count(1)
    print(f"-> {outcome}: data source 1 has {len(entries)} entries ({commits} commit(s) received so far)")
    for entry in entries[:3]:
        print(f"   #{entry['id']}: {entry['data']}")
    if len(entries) > 3:
        print(f"   ... and {len(entries) - 3} more")
    sys.stdout.flush()


def edit_source(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE users SET full_name = 'Ada Lovelace', updated_at = '2024-06-01T10:00:00Z' WHERE id = 1")
        db.execute("UPDATE users SET deleted_at = '2024-06-01T10:00:00Z' WHERE id = 2")


def steps(server: SandboxServer, config_path: str, db_path: Path) -> bool:
    """The four runs, each announced first; True when all of them did what they should."""
    config = load_config(config_path)
    heading("1. Dry run (--test): the plan and the commits it would send; nothing is sent")
    run_config(config, dry_run=True)
    show(server, "nothing sent")
    heading("2. First sync: every row is inserted")
    first = run_config(config)[0]
    show(server, f"{first.inserted} inserted")
    heading("3. Re-run with nothing changed: no commit is sent")
    again = run_config(config)[0]
    show(server, f"{again.unchanged} unchanged, {again.affected} affected")
    heading("4. One row edited (id 1), one flagged deleted (id 2)")
    edit_source(db_path)
    last = run_config(config)[0]
    show(server, f"{last.updated} updated, {last.deleted} deleted")
    return all(s.ok for s in (first, again, last)) and len(server.store.entries(1)) == len(USERS) - 1


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _start_sandbox(data_file: Path, interactive: bool) -> SandboxServer:
    """On a terminal the usual port (so the URL is the one the README shows), else any free port."""
    data_file.unlink(missing_ok=True)
    if interactive:
        try:
            return SandboxServer(port=DEFAULT_PORT, data_file=str(data_file)).start()
        except OSError:
            pass  # the port is taken (another sandbox): any free one will do
    return SandboxServer(port=0, data_file=str(data_file)).start()


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(config_path: str = "configs/demo.yml", workdir: str = "var",
         wait: Callable[[], None] | None = None) -> int:
    """Run the demo; ``wait`` (default: until Ctrl+C, on a terminal only) keeps the sandbox serving
    at the end so that its console can be opened."""
    work = Path(workdir).resolve()
    db_path, data_file = work / "demo.db", work / "demo-sandbox.json"
    seed(db_path)
    os.environ.setdefault("FLIPLET_AGENT_LOG", str(work / "fliplet-agent.log"))
    logs.setup("info")
    interactive = _interactive()
    server = _start_sandbox(data_file, interactive)
    try:
        os.environ.update(FLIPLET_API_URL=server.url, FLIPLET_AUTH_TOKEN=DEMO_TOKEN, DEMO_DB=str(db_path))
        print(f"Sandbox (a local Fliplet API) at {server.url}; source database {db_path}", flush=True)
        ok = steps(server, config_path, db_path)
        print("\nDemo finished: " + ("OK" if ok else "FAILED"))
        if wait is None and interactive:
            wait = _until_interrupted
        if wait is not None:
            print(f"Every commit, before → after, is in the console (token {DEMO_TOKEN}); Ctrl+C stops it:")
            print(server.url, flush=True)
            wait()
    finally:
        server.stop()
    if wait is None:
        print(f"Every commit, before → after, is in the console: run `fliplet-agent sandbox --data "
              f"{_relative(data_file)}`, log in with {DEMO_TOKEN} at")
        print(f"http://127.0.0.1:{DEFAULT_PORT}/", flush=True)
    return 0 if ok else 1


def _until_interrupted() -> None:
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nSandbox stopped.")


if __name__ == "__main__":
    sys.exit(main())
