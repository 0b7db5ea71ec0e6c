"""``fliplet-agent demo``: the whole agent end to end, offline, in one command.

Seeds a SQLite database, starts the local sandbox, then runs ``configs/demo.yml`` four times and
shows what landed after each step: a dry run, the first sync, a re-run with nothing changed (no
commit is sent), and a run after one row was edited and another flagged as deleted.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from fliplet_workers import logs
from fliplet_workers.config import load_config
from fliplet_workers.run import run_config
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer

USERS = [(i, f"user{i}@example.org", f"User {i}", "2024-01-01T09:00:00Z") for i in range(1, 26)]


def seed(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS users")
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, full_name TEXT, "
                   "updated_at TEXT, deleted_at TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, NULL)", USERS)


def show(server: SandboxServer, title: str) -> None:
    entries = server.store.entries(1)
    commits = server.store.commit_count(1)
    print(f"\n== {title}: data source 1 has {len(entries)} entries ({commits} commit(s) received so far)")
    for entry in entries[:3]:
        print(f"   #{entry['id']}: {entry['data']}")
    if len(entries) > 3:
        print(f"   ... and {len(entries) - 3} more")


def main(config_path: str = "configs/demo.yml", workdir: str = "var") -> int:
    db_path = Path(workdir).resolve() / "demo.db"
    seed(db_path)
    os.environ.setdefault("FLIPLET_AGENT_LOG", str(Path(workdir).resolve() / "fliplet-agent.log"))
    logs.setup("info")
    with SandboxServer(port=0) as server:
        os.environ["FLIPLET_API_URL"] = server.url
        os.environ["FLIPLET_AUTH_TOKEN"] = DEMO_TOKEN
        os.environ["DEMO_DB"] = str(db_path)
        config = load_config(config_path)
        print(f"Sandbox (a local Fliplet API) at {server.url}; source database {db_path}")

        run_config(config, dry_run=True)
        show(server, "1. dry run (--test): nothing sent")
        first = run_config(config)[0]
        show(server, f"2. first sync: {first.inserted} inserted")
        again = run_config(config)[0]
        show(server, f"3. re-run, nothing changed: {again.unchanged} unchanged, {again.affected} affected")
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE users SET full_name = 'Ada Lovelace', updated_at = '2024-06-01T10:00:00Z' WHERE id = 1")
            db.execute("UPDATE users SET deleted_at = '2024-06-01T10:00:00Z' WHERE id = 2")
        last = run_config(config)[0]
        show(server, f"4. one row edited, one flagged deleted: {last.updated} updated, {last.deleted} deleted")
        ok = all(s.ok for s in (first, again, last)) and len(server.store.entries(1)) == len(USERS) - 1
    print("\nDemo finished: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
