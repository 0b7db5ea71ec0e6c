"""End to end: the real CLI runs YAML configs against real SQLite, PostgreSQL and MariaDB databases
and the real sandbox over HTTP; each step checks what landed in the data source."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from agent_support import World, make_world

from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer


def _sqlite(tmp_path: Path) -> tuple[sa.Engine, dict[str, Any]]:
    path = tmp_path / "source.db"
    return sa.create_engine(f"sqlite:///{path}"), {"database_driver": "sqlite", "database_name": str(path)}


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def world(request: pytest.FixtureRequest, sandbox: SandboxServer, tmp_path: Path) -> Iterator[World]:
    table = f"users_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        engine, options = _sqlite(tmp_path)
    else:
        params = request.getfixturevalue(f"{request.param}_params")
        engine, options = sa.create_engine(params.url), params.options()
    yield make_world(sandbox, engine, options, tmp_path, table)
    engine.dispose()


@pytest.fixture
def sqlite_world(sandbox: SandboxServer, tmp_path: Path) -> Iterator[World]:
    engine, options = _sqlite(tmp_path)
    yield make_world(sandbox, engine, options, tmp_path, "users")
    engine.dispose()


def test_sync_lifecycle(world: World) -> None:
    world.insert(*({"id": i, "email": f"u{i:02d}@x.org", "name": f"User {i}"} for i in range(1, 21)))

    # dry run: nothing sent
    assert world.run("--test") == 0
    assert world.commits() == 0 and world.entries() == []

    # first sync inserts all, in batches of 7
    assert world.run() == 0
    data = world.data_by_key()
    assert sorted(data) == list(range(1, 21))
    assert data[3]["email"] == "u03@x.org" and data[3]["updatedAt"] == "2024-01-01 00:00:00"
    assert world.commits() == 3

    # a re-run with nothing changed sends no commit at all
    assert world.run() == 0
    assert world.commits() == 3

    # a changed timestamp updates exactly that row
    world.execute(f"UPDATE {world.table} SET name = 'Renamed', updated_at = '2024-02-01 00:00:00' WHERE id = 5")
    assert world.run() == 0
    assert world.commits() == 4
    body = world.last_commit()
    assert [e["data"]["id"] for e in body["entries"]] == [5] and "id" in body["entries"][0]
    assert world.data_by_key()[5]["name"] == "Renamed"
    assert len(world.entries()) == 20

    # a set delete column deletes the entry
    world.execute(f"UPDATE {world.table} SET deleted_at = '2024-03-01' WHERE id = 6")
    assert world.run() == 0
    assert 6 not in world.data_by_key() and len(world.entries()) == 19
    assert len(world.last_commit()["delete"]) == 1


def test_replace_mode_removes_orphans(sqlite_world: World) -> None:
    w = sqlite_world
    w.insert({"id": 1, "email": "a"}, {"id": 2, "email": "b"})
    assert w.run() == 0
    w.execute(f"DELETE FROM {w.table} WHERE id = 2")
    assert w.run(mode="update") == 0
    assert sorted(w.data_by_key()) == [1, 2]  # update mode keeps the orphan
    assert w.run(mode="replace") == 0
    assert sorted(w.data_by_key()) == [1]


def test_case_insensitive_keys_match(sandbox: SandboxServer, tmp_path: Path) -> None:
    engine, options = _sqlite(tmp_path)
    w = make_world(sandbox, engine, options, tmp_path, "people", key_type="VARCHAR(20)")
    w.insert({"id": "ABC", "email": "a"}, {"id": "Def", "email": "d"})
    assert w.run(primary_column="id", case_insensitive_primary_column=True) == 0
    assert w.run(primary_column="id", case_insensitive_primary_column=True) == 0
    assert len(w.entries()) == 2
    w.execute(f"UPDATE {w.table} SET id = 'abc', updated_at = '2024-05-05 00:00:00' WHERE id = 'ABC'")
    assert w.run(case_insensitive_primary_column=True) == 0
    assert sorted(w.data_by_key()) == ["Def", "abc"]  # matched and updated, not inserted again
    # case-sensitive: 'def' is a new key
    w.execute(f"UPDATE {w.table} SET id = 'def' WHERE id = 'Def'")
    assert w.run(case_insensitive_primary_column=False) == 0
    assert sorted(w.data_by_key()) == ["Def", "abc", "def"]


def test_merge_keeps_remote_only_columns(sqlite_world: World) -> None:
    w = sqlite_world
    w.insert({"id": 1, "email": "a", "name": "Ann"})
    assert w.run(merge=True) == 0
    entry = w.entries()[0]
    w.server.store.commit(DEMO_TOKEN, w.ds, {"append": True, "entries": [{"id": entry["id"], "data": {"appNote": "kept"}}],
                                 "extend": True})
    w.execute(f"UPDATE {w.table} SET name = 'Anne', updated_at = '2024-09-09 00:00:00'")
    assert w.run(merge=True) == 0
    data = w.entries()[0]["data"]
    assert data["name"] == "Anne" and data["appNote"] == "kept"
    assert w.last_commit()["extend"] is True


def test_missing_and_duplicate_keys_are_skipped_and_counted(sqlite_world: World,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    w.insert({"id": 1, "email": "a"}, {"id": None, "email": "b"}, {"id": 1, "email": "c"},
             {"id": 0, "email": "d"})
    assert w.run() == 0
    assert sorted(w.data_by_key()) == [0, 1]
    err = capsys.readouterr().err
    assert "A row is missing its primary key value from the database. Skipping" in err
    assert "same primary key 1" in err
    assert "skipped 2" in err


def test_commit_faults_end_with_every_row_exactly_once(sqlite_world: World) -> None:
    w = sqlite_world
    w.insert(*({"id": i, "email": f"e{i:02d}"} for i in range(1, 11)))
    w.server.faults.set(commit=["error", "error", "drop-after-apply"])
    try:
        assert w.run(batch_size=100) == 0
    finally:
        w.server.faults.set()
    keys = [e["data"]["id"] for e in w.entries()]
    assert sorted(keys) == list(range(1, 11))  # exactly once: the drop was re-planned, not re-sent
    assert w.server.store.applied_commit_count(w.ds) == 1


def test_commit_that_keeps_failing_exits_non_zero(sqlite_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    w.insert({"id": 1, "email": "a"})
    w.server.faults.set(commit=["error"] * 10)
    try:
        assert w.run(retries=1) == 1
    finally:
        w.server.faults.set()
    assert "Cannot sync data to Fliplet servers" in capsys.readouterr().err
    assert w.entries() == []


def test_no_primary_key_appends_with_warning(sqlite_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    w.insert({"id": 1, "email": "a"})
    assert w.run(primary_column=None) == 0
    assert w.run(primary_column=None) == 0
    assert len(w.entries()) == 2
    assert "A primary key has not been set" in capsys.readouterr().err
