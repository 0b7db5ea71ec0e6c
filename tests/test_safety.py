"""Never harm the data source, never call a failure a success (issue 7, items 1-3, 11, 14).

The delete guard's rule as pure unit tests; then the real CLI against the real sandbox and real
SQLite/PostgreSQL: a misspelt key column sends nothing and exits 1, misspelt timestamp and delete
columns warn, a run that skips every row fails, replace runs that would delete too much delete
nothing and exit 1 (and ``delete_limit`` lets them through), duplicated keys are healed, and keys
keep their types (``true`` is not ``1``, blanks are a key, an object is an error).
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from agent_support import World, make_world

from fliplet_workers.cli import main as cli_main
from fliplet_workers.config.model import DeleteLimit
from fliplet_workers.core import guard
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer

# -- the rule (pure) -----------------------------------------------------------------------------


def test_default_limit_refuses_all_entries_and_more_than_half_above_the_floor() -> None:
    assert guard.most_deletes(0, None) == 0
    assert guard.most_deletes(1, None) == 0  # deleting the only entry is deleting all of them
    assert guard.most_deletes(5, None) == 4
    assert guard.most_deletes(11, None) == 10  # under the floor, the half rule does not apply
    assert guard.most_deletes(20, None) == 10
    assert guard.most_deletes(21, None) == 10
    assert guard.most_deletes(1000, None) == 500
    verdicts = {n: guard.judge_deletes(n, 20, None).ok for n in (0, 10, 11, 19, 20)}
    assert verdicts == {0: True, 10: True, 11: False, 19: False, 20: False}
    assert guard.judge_deletes(0, 0, None).ok  # nothing to delete from an empty data source


def test_explicit_limits_replace_the_default() -> None:
    assert guard.most_deletes(20, DeleteLimit(count=20)) == 20  # a count may allow every entry
    assert guard.most_deletes(20, DeleteLimit(count=0)) == 0
    assert guard.most_deletes(30, DeleteLimit(percent=10)) == 3
    assert guard.most_deletes(5, DeleteLimit(percent=10)) == 0
    assert guard.most_deletes(7, DeleteLimit(percent=100)) == 7
    assert guard.most_deletes(7, DeleteLimit(off=True)) is None
    assert guard.judge_deletes(10**6, 10**6, DeleteLimit(off=True)).ok
    refused = guard.judge_deletes(4, 30, DeleteLimit(percent=10))
    assert not refused.ok and refused.allowed == 3 and not refused.default


def test_plan_failures_come_from_the_counts_alone() -> None:
    sound = {"rows": 3, "skipped": 1, "withheld": 0, "remote": 9}
    assert guard.plan_failures(sound) == []
    assert guard.plan_failures({"rows": 0, "skipped": 0}) == []  # an empty source is not "all skipped"
    refused = guard.plan_failures({"rows": 3, "skipped": 0, "withheld": 12, "remote": 20, "delete_allowed": 10,
                                   "delete_default": 1})
    assert refused == [
        "Refusing to delete 12 of the data source's 20 entries: this run may delete at most 10 (the default "
        "limit: never every entry, nor more than half of them once more than 10 would go). No entry was "
        "deleted: only the deletions were held back. If these deletions are intended, set the option "
        "'delete_limit' to a higher count, a percentage such as \"100%\", or none."]
    explicit = guard.plan_failures({"rows": 3, "withheld": 4, "remote": 30, "delete_allowed": 3, "delete_default": 0})
    assert "at most 3 (set by the option 'delete_limit')" in explicit[0]
    skipped = guard.plan_failures({"rows": 2, "skipped": 2, "withheld": 5, "remote": 5})
    assert skipped == ["All 2 source row(s) were skipped (each is logged with its reason: a missing, duplicate or "
                       "invalid primary key value), so nothing was synced; the 5 deletion(s) it planned were not "
                       "sent."]


# -- through the CLI -----------------------------------------------------------------------------


def _sqlite(tmp_path: Path) -> tuple[sa.Engine, dict[str, Any]]:
    path = tmp_path / "source.db"
    return sa.create_engine(f"sqlite:///{path}"), {"database_driver": "sqlite", "database_name": str(path)}


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, sandbox: SandboxServer, tmp_path: Path) -> Iterator[World]:
    table = f"safe_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        engine, options = _sqlite(tmp_path)
    else:
        params = request.getfixturevalue("postgres_params")
        engine, options = sa.create_engine(params.url), params.options()
    yield make_world(sandbox, engine, options, tmp_path, table)
    engine.dispose()


@pytest.fixture
def sqlite_world(sandbox: SandboxServer, tmp_path: Path) -> Iterator[World]:
    engine, options = _sqlite(tmp_path)
    yield make_world(sandbox, engine, options, tmp_path, "users")
    engine.dispose()


def _seed(w: World, count: int) -> None:
    w.insert(*({"id": i, "email": f"u{i:03d}@x.org", "name": f"User {i}"} for i in range(1, count + 1)))


COLUMNS_SHOWN = "(columns: id, email, name, updatedAt, deleted_at)"


def test_a_misspelt_key_column_in_replace_mode_deletes_nothing_and_exits_1(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    _seed(w, 5)
    assert w.run(mode="replace") == 0
    before, commits = w.entries(), w.commits()
    w.execute(f"DELETE FROM {w.table} WHERE id = 5")
    w.execute(f"UPDATE {w.table} SET name = 'Changed', updated_at = '2024-06-01 00:00:00' WHERE id = 1")
    capsys.readouterr()
    assert w.run(mode="replace", primary_column="ID") == 1
    assert w.entries() == before and w.commits() == commits  # nothing sent at all
    err = capsys.readouterr().err
    assert (f"There was an error running your config file: primary_column 'ID' is not a column of the query's "
            f"result {COLUMNS_SHOWN}; did you mean 'id'?") in err
    assert w.run("--test", mode="replace", primary_column="ID") == 1  # a dry run says so too
    # spelt right, the same run deletes the one orphan and updates the changed row
    assert w.run(mode="replace") == 0
    assert sorted(w.data_by_key()) == [1, 2, 3, 4] and w.data_by_key()[1]["name"] == "Changed"


def test_a_misspelt_key_column_in_update_mode_sends_nothing_and_exits_1(
        sqlite_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    _seed(w, 3)
    assert w.run(primary_column="Id") == 1
    assert w.commits() == 0 and w.entries() == []
    assert "primary_column 'Id' is not a column of the query's result" in capsys.readouterr().err


def test_misspelt_timestamp_and_delete_columns_warn_and_the_run_goes_on(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    _seed(w, 3)
    assert w.run(timestamp_column="updated_at", delete_column="deleted") == 0
    err = capsys.readouterr().err
    assert (f"timestamp_column 'updated_at' is not a column of the query's result {COLUMNS_SHOWN}; did you mean "
            "'updatedAt'? Rows are compared by their content instead.") in err
    assert (f"delete_column 'deleted' is not a column of the query's result {COLUMNS_SHOWN}; did you mean "
            "'deleted_at'? No entry will be deleted through it.") in err
    assert len(w.entries()) == 3
    commits = w.commits()
    assert w.run(timestamp_column="updated_at", delete_column="deleted") == 0
    assert w.commits() == commits  # compared by content: nothing changed, nothing sent
    w.execute(f"UPDATE {w.table} SET deleted_at = '2024-03-01' WHERE id = 2")
    assert w.run(timestamp_column="updated_at", delete_column="deleted") == 0
    assert sorted(w.data_by_key()) == [1, 2, 3]  # the flag is not read through a misspelt column


def test_a_run_that_skips_every_row_fails(sqlite_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    w.insert({"id": None, "email": "a"}, {"id": None, "email": "b"}, {"id": None, "email": "c"})
    assert w.run() == 1
    assert w.commits() == 0
    err = capsys.readouterr().err
    assert err.count("A row is missing its primary key value from the database. Skipping") == 3
    assert "Cannot sync data to Fliplet servers: All 3 source row(s) were skipped" in err
    assert "skipped 3, errors 4" in err  # each skipped row is an error, and the failure


def test_skipped_rows_count_as_errors_but_the_run_succeeds(sqlite_world: World,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    w.insert({"id": 1, "email": "a"}, {"id": None, "email": "b"}, {"id": 1, "email": "c"})
    assert w.run() == 0
    err = capsys.readouterr().err
    assert "skipped 2, errors 2" in err
    assert err.count("A row is missing its primary key value") == 1  # logged once, not again at the end


def test_a_zero_row_replace_run_is_refused_unless_the_limit_is_off(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    _seed(w, 5)
    assert w.run(mode="replace") == 0
    commits = w.commits()
    w.execute(f"DELETE FROM {w.table}")
    capsys.readouterr()
    assert w.run(mode="replace") == 1
    assert len(w.entries()) == 5 and w.commits() == commits
    err = capsys.readouterr().err
    assert ("Cannot sync data to Fliplet servers: Refusing to delete 5 of the data source's 5 entries: this run "
            "may delete at most 4") in err
    assert "'delete_limit'" in err and "deleted 0" in err
    assert w.run("--test", mode="replace") == 1  # a dry run tells the same
    assert "Dry run: the real run would fail: Refusing to delete 5 of" in capsys.readouterr().err
    assert w.run(mode="replace", delete_limit="none") == 0
    assert w.entries() == []


def test_a_replace_run_deleting_more_than_half_is_refused_but_its_rows_are_synced(
        sqlite_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    _seed(w, 30)
    assert w.run(mode="replace", batch_size=100) == 0
    w.execute(f"DELETE FROM {w.table} WHERE id <= 16")
    w.execute(f"UPDATE {w.table} SET name = 'Renamed', updated_at = '2024-07-01 00:00:00' WHERE id = 30")
    capsys.readouterr()
    assert w.run(mode="replace") == 1  # default: 16 > 15, half of 30
    assert len(w.entries()) == 30 and w.data_by_key()[30]["name"] == "Renamed"  # the row was synced
    assert "Refusing to delete 16 of the data source's 30 entries: this run may delete at most 15" in \
        capsys.readouterr().err
    assert w.run(mode="replace", delete_limit=15) == 1  # a count
    assert len(w.entries()) == 30
    assert "at most 15 (set by the option 'delete_limit')" in capsys.readouterr().err
    assert w.run(mode="replace", delete_limit="50%") == 1  # 15 of 30
    assert len(w.entries()) == 30
    assert w.run(mode="replace", delete_limit="60%") == 0  # 18 of 30
    assert sorted(w.data_by_key()) == list(range(17, 31))


def test_small_deletions_never_trip_the_half_rule(sqlite_world: World) -> None:
    w = sqlite_world
    _seed(w, 12)
    assert w.run(mode="replace") == 0
    w.execute(f"DELETE FROM {w.table} WHERE id <= 7")  # 7 of 12 is more than half, but only 7
    assert w.run(mode="replace") == 0
    assert sorted(w.data_by_key()) == [8, 9, 10, 11, 12]


def test_deletions_through_the_delete_column_count_against_the_limit(
        sqlite_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    _seed(w, 4)
    assert w.run() == 0
    w.execute(f"UPDATE {w.table} SET deleted_at = '2024-03-01'")  # e.g. an inverted flag column
    assert w.run() == 1
    assert len(w.entries()) == 4
    assert "Refusing to delete 4 of the data source's 4 entries" in capsys.readouterr().err
    assert w.run(delete_limit=4) == 0
    assert w.entries() == []


def _duplicate(w: World, *keys: int) -> list[int]:
    """Add a second entry for each key (as a commit applied twice would); returns the new ids."""
    originals = {e["data"]["id"]: e["data"] for e in w.entries()}
    added = w.server.store.commit(DEMO_TOKEN, w.ds, {"append": True,
                                                     "entries": [{"data": dict(originals[k])} for k in keys]})
    return sorted(e["id"] for e in added)


def test_a_duplicated_key_is_healed_by_the_next_run_in_update_mode(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    _seed(w, 3)
    assert w.run() == 0
    kept = {e["data"]["id"]: e["id"] for e in w.entries()}
    extra = _duplicate(w, 2, 3)
    assert len(w.entries()) == 5
    capsys.readouterr()
    assert w.run() == 0
    assert {e["data"]["id"]: e["id"] for e in w.entries()} == kept and len(w.entries()) == 3  # the oldest kept
    err = capsys.readouterr().err
    assert (f"The data source has 2 entries with the primary key 2 ('id'): entries {kept[2]}, {extra[0]}. "
            f"Entry {kept[2]} (the oldest) is kept; this run deletes {extra[0]}") in err
    assert "deleted 2" in err
    commits = w.commits()
    assert w.run() == 0 and w.commits() == commits  # healed: nothing left to do


def test_healing_duplicates_counts_against_the_delete_limit(sqlite_world: World,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    w = sqlite_world
    _seed(w, 6)
    assert w.run() == 0
    _duplicate(w, 1, 2, 3)
    assert w.run(delete_limit=2) == 1
    assert len(w.entries()) == 9
    assert "Refusing to delete 3 of the data source's 9 entries" in capsys.readouterr().err
    assert w.run() == 0
    assert sorted(e["data"]["id"] for e in w.entries()) == [1, 2, 3, 4, 5, 6]


def test_a_key_of_blanks_is_a_key(sandbox: SandboxServer, tmp_path: Path) -> None:
    engine, options = _sqlite(tmp_path)
    w = make_world(sandbox, engine, options, tmp_path, "blanks", key_type="VARCHAR(20)")
    w.insert({"id": " ", "email": "one"}, {"id": "  ", "email": "two"}, {"id": "x", "email": "three"})
    assert w.run() == 0
    assert sorted(w.data_by_key()) == [" ", "  ", "x"]
    commits = w.commits()
    assert w.run() == 0 and w.commits() == commits  # matched, not inserted again
    engine.dispose()


def _code_config(tmp_path: Path, sandbox: SandboxServer, ds: int, rows: list[dict[str, Any]], **push: Any) -> Path:
    path = tmp_path / "keys.py"
    extra = "".join(f", {k!r}: {v!r}" for k, v in push.items())
    path.write_text(textwrap.dedent(f"""
        config = {{"authToken": "{DEMO_TOKEN}", "baseURL": "{sandbox.url}"}}

        def rows(http):
            return {rows!r}

        def setup(agent):
            agent.push({{"description": "keys", "source": rows, "primaryColumnName": "id",
                         "targetDataSourceId": {ds}{extra}}})
    """))
    return path


def test_true_is_not_1_and_object_keys_are_errors_naming_the_row(
        sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = sandbox.store.create_data_source("typed keys")
    rows: list[dict[str, Any]] = [{"id": True, "v": "true"}, {"id": 1, "v": "one"}, {"id": {"a": 1}, "v": "object"},
            {"id": [1, 2], "v": "list"}, {"id": "1", "v": "text"}]
    config = _code_config(tmp_path, sandbox, ds, rows)
    assert cli_main(["start", str(config)]) == 0
    data = sorted((repr(e["data"]["id"]), e["data"]["v"]) for e in sandbox.store.entries(ds))
    assert data == [("'1'", "text"), ("1", "one"), ("True", "true")]
    err = capsys.readouterr().err
    assert "Row 3 has an object as its primary key value ('id'), which cannot identify a row. Skipping: " in err
    assert "Row 4 has a list as its primary key value ('id')" in err
    assert "same primary key" not in err
    assert "skipped 2, errors 2" in err
    commits = sandbox.store.commit_count(ds)
    assert cli_main(["start", str(config)]) == 0
    assert sandbox.store.commit_count(ds) == commits  # True matched True, 1 matched 1: nothing to send


def test_only_object_keys_fail_the_run(sandbox: SandboxServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    ds = sandbox.store.create_data_source("object keys")
    config = _code_config(tmp_path, sandbox, ds, [{"id": {"a": 1}}, {"id": {"a": 2}}])
    assert cli_main(["start", str(config)]) == 1
    assert sandbox.store.entries(ds) == []
    assert "All 2 source row(s) were skipped" in capsys.readouterr().err


def test_replace_without_a_primary_key_is_refused_before_anything_is_sent(
        sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = sandbox.store.create_data_source("unkeyed")
    sandbox.store.commit(DEMO_TOKEN, ds, {"append": True, "entries": [{"data": {"v": i}} for i in range(3)]})
    config = tmp_path / "unkeyed.py"
    config.write_text(textwrap.dedent(f"""
        config = {{"authToken": "{DEMO_TOKEN}", "baseURL": "{sandbox.url}"}}

        def rows(http):
            return [{{"v": 7}}]

        def setup(agent):
            agent.push({{"source": rows, "targetDataSourceId": {ds}, "mode": "replace"}})
    """))
    commits = sandbox.store.commit_count(ds)
    assert cli_main(["start", str(config)]) == 1
    assert sandbox.store.commit_count(ds) == commits and len(sandbox.store.entries(ds)) == 3
    assert ("Refusing to run: mode 'replace' without a primary_column deletes all 3 entries of the data source"
            in capsys.readouterr().err)
