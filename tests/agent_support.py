"""Helpers for end-to-end tests of the foreground agent: a source table in a real database, a data
source in the real sandbox, a YAML config pointing at both, and the real CLI to run it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from fliplet_workers.cli import main as cli_main
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer

COLUMNS = "id, email, name, updated_at AS \"updatedAt\", deleted_at"


@dataclass
class World:
    """One test's source table, data source and config file."""

    server: SandboxServer
    engine: sa.Engine
    table: str
    ds: int
    config_path: Path
    options: dict[str, Any]

    def write_config(self, **overrides: Any) -> Path:
        options = {**self.options, **overrides}
        options = {k: v for k, v in options.items() if v is not None}
        self.config_path.write_text(yaml.safe_dump(options, sort_keys=False))
        return self.config_path

    def run(self, *extra: str, **overrides: Any) -> int:
        self.write_config(**overrides)
        return cli_main(["start", str(self.config_path), *extra])

    def execute(self, sql: str, rows: Iterable[Mapping[str, Any]] | Mapping[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            if rows is None:
                conn.execute(sa.text(sql))
            elif isinstance(rows, Mapping):
                conn.execute(sa.text(sql), dict(rows))
            else:
                conn.execute(sa.text(sql), [dict(r) for r in rows])

    def insert(self, *rows: Mapping[str, Any]) -> None:
        full = [{"email": None, "name": None, "updated_at": "2024-01-01 00:00:00", "deleted_at": None, **r}
                for r in rows]
        self.execute(f"INSERT INTO {self.table} (id, email, name, updated_at, deleted_at) "
                     "VALUES (:id, :email, :name, :updated_at, :deleted_at)", full)

    def entries(self) -> list[dict[str, Any]]:
        return self.server.store.entries(self.ds)

    def data_by_key(self, key: str = "id") -> dict[Any, dict[str, Any]]:
        return {e["data"].get(key): e["data"] for e in self.entries()}

    def commits(self) -> int:
        return self.server.store.commit_count(self.ds)

    def last_commit(self) -> dict[str, Any]:
        return self.server.store.commits(self.ds)[-1]


def make_world(server: SandboxServer, engine: sa.Engine, db_options: dict[str, Any], tmp: Path, table: str,
               key_type: str = "INTEGER") -> World:
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(sa.text(f"CREATE TABLE {table} (id {key_type} NULL, email VARCHAR(200), name VARCHAR(200), "
                             "updated_at VARCHAR(40), deleted_at VARCHAR(40))"))
    ds = server.store.create_data_source(f"test {table}")
    options = {
        "auth_token": DEMO_TOKEN,
        "api_url": server.url,
        "datasource_id": ds,
        **db_options,
        "query": f"SELECT {COLUMNS} FROM {table} ORDER BY email",
        "primary_column": "id",
        "timestamp_column": "updatedAt",
        "delete_column": "deleted_at",
        "mode": "update",
        "batch_size": 7,
        "log_verbosity": "debug",
        "retries": 3,
    }
    return World(server, engine, table, ds, tmp / f"{table}.yml", options)
