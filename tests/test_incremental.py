"""Incremental reads (issue 9): only rows newer than the watermark are read, only their keys are
looked up, and the watermark moves only after a run that ended ok.

The planner path runs against the in-memory API (fast); the end-to-end tests run the real CLI on a
real PostgreSQL table against the real sandbox over HTTP, counting the requests the sandbox received.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from agent_support import COLUMNS, World, make_world
from pipeline_support import MemoryWorld, memory_world

from fliplet_workers.cli import main as cli_main
from fliplet_workers.config import load_config
from fliplet_workers.config.code_functions import FunctionSource, takes_watermark
from fliplet_workers.errors import ConfigError
from fliplet_workers.fliplet.client import FlipletClient
from fliplet_workers.fliplet.memory import MemoryApi
from fliplet_workers.pipeline.marks import FileMarks, Mark, decode, encode, full_reason
from fliplet_workers.pipeline.push import run_push
from fliplet_workers.pipeline.spec import Resources, RunSpec
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer, Store

T0 = "2024-01-01T00:00:00Z"
T1 = "2024-06-01T00:00:00Z"
T2 = "2024-07-01T00:00:00Z"


def _world(tmp_path: Path, rows: int = 6) -> tuple[MemoryWorld, FileMarks]:
    w = memory_world(rows=rows)
    for row in w.rows:
        row["ts"] = T0
    w.options = {"incremental": True, "timestamp_column": "ts"}
    return w, FileMarks(tmp_path / "state.json")


def _res(w: MemoryWorld, marks: FileMarks) -> Resources:
    return Resources(api=w.api, log=w.log, marks=marks)


def _calls(w: MemoryWorld) -> Counter[str]:
    return Counter(method for method, _ in w.api.calls)


def test_first_run_is_full_then_only_newer_rows_are_read_and_looked_up(tmp_path: Path) -> None:
    w, marks = _world(tmp_path)
    first = run_push(w.spec(), _res(w, marks))
    assert first.ok and first.inserted == 6
    assert _calls(w)["iter_entries"] == 1  # a full comparison: the data source downloaded once
    assert marks.load(w.spec().config.path, 0, w.ds) == Mark(T0, w.ds, 6, *_times(marks, w))

    w.api.calls.clear()
    w.rows[1].update(name="changed", ts=T1)
    w.rows.append({"id": 7, "name": "new", "ts": T1})
    second = run_push(w.spec(), _res(w, marks))
    assert (second.ok, second.updated, second.inserted, second.unchanged, second.skipped) == (True, 1, 1, 0, 0)
    calls = _calls(w)
    assert calls["iter_entries"] == 0 and calls["query"] == 1 and calls["commit"] == 1
    stored = marks.load(w.spec().config.path, 0, w.ds)
    assert stored is not None and stored.value == T1 and stored.entries == 7
    assert {e["id"]: e["name"] for e in w.entries()}[2] == "changed"
    assert w.lines.count("reading the rows whose ts is after 2024-01-01T00:00:00Z (the watermark)") == 1


def _times(marks: FileMarks, w: MemoryWorld) -> tuple[str | None, str | None]:
    stored = marks.load(w.spec().config.path, 0, w.ds)
    assert stored is not None and stored.full_at is not None
    return stored.full_at, stored.updated_at


def test_keys_are_looked_up_in_chunks_of_a_thousand(tmp_path: Path) -> None:
    w, marks = _world(tmp_path, rows=2500)
    assert run_push(w.spec(batch_size=1000), _res(w, marks)).ok
    for row in w.rows:
        row["ts"] = T1
    w.api.calls.clear()
    again = run_push(w.spec(batch_size=1000), _res(w, marks))
    assert again.ok and again.updated == 2500
    assert _calls(w) == Counter({"query": 3, "commit": 3})  # 1000 + 1000 + 500 keys; nothing downloaded


def test_a_failed_commit_leaves_the_watermark_and_the_next_run_reads_the_rows_again(tmp_path: Path) -> None:
    w, marks = _world(tmp_path)
    assert run_push(w.spec(), _res(w, marks)).ok
    w.rows[0].update(name="late", ts=T2)
    w.api.fail_next("commit", kind="fatal")
    failed = run_push(w.spec(), _res(w, marks))
    assert not failed.ok
    stored = marks.load(w.spec().config.path, 0, w.ds)
    assert stored is not None and stored.value == T0
    assert w.lines.count("The watermark was not advanced") == 1

    again = run_push(w.spec(), _res(w, marks))
    assert again.ok and again.updated == 1
    stored = marks.load(w.spec().config.path, 0, w.ds)
    assert stored is not None and stored.value == T2


def test_a_flagged_newer_row_is_deleted_and_the_guard_counts_the_whole_data_source(tmp_path: Path) -> None:
    w, marks = _world(tmp_path)
    assert run_push(w.spec(delete_column="gone"), _res(w, marks)).ok
    w.rows[2].update(gone="yes", ts=T1)  # one looked-up entry, deleted: not "every entry" of the source
    again = run_push(w.spec(delete_column="gone"), _res(w, marks))
    assert again.ok and again.deleted == 1
    assert sorted(e["id"] for e in w.entries()) == [1, 2, 4, 5, 6]


def test_the_delete_guard_judges_an_incremental_run_against_the_whole_data_source(tmp_path: Path) -> None:
    w, marks = _world(tmp_path, rows=30)
    assert run_push(w.spec(delete_column="gone"), _res(w, marks)).ok
    for row in w.rows[:20]:
        row.update(gone="yes", ts=T1)  # 20 of the 30 entries: more than half
    refused = run_push(w.spec(delete_column="gone"), _res(w, marks))
    assert not refused.ok and refused.deleted == 0 and len(w.entries()) == 30
    assert any("Refusing to delete 20 of the data source's 30 entries" in e for e in refused.errors)
    stored = marks.load(w.spec().config.path, 0, w.ds)
    assert stored is not None and stored.value == T0  # a refused run is a failed run: read again next time


def test_full_run_catches_a_row_changed_without_a_newer_timestamp(tmp_path: Path) -> None:
    w, marks = _world(tmp_path)
    assert run_push(w.spec(), _res(w, marks)).ok
    w.rows[4]["ts"] = "2023-01-01T00:00:00Z"
    w.rows[4]["name"] = "changed with an older timestamp"
    w.api.calls.clear()
    incremental = run_push(w.spec(), _res(w, marks))
    assert incremental.ok and incremental.affected == 0 and _calls(w) == Counter()  # nothing newer: no request
    full = run_push(RunSpec(w.spec().config, 0, full=True), _res(w, marks))
    assert full.ok and full.updated == 1
    assert {e["id"]: e["name"] for e in w.entries()}[5] == "changed with an older timestamp"


def test_a_code_source_that_takes_watermark_receives_it(tmp_path: Path) -> None:
    w, marks = _world(tmp_path, rows=3)
    received: list[Any] = []

    def source(http: Any, watermark: Any = None) -> list[dict[str, Any]]:
        received.append(watermark)
        return [r for r in w.rows if watermark is None or r["ts"] > watermark]

    spec = w.spec(source=FunctionSource(source, takes_http=True))
    assert run_push(spec, _res(w, marks)).ok
    w.rows[0]["ts"] = T1
    assert run_push(spec, _res(w, marks)).updated == 1
    assert received == [None, T0]  # None on the first (full) run, then the watermark
    assert not takes_watermark(lambda http: []) and takes_watermark(lambda http, **extra: [])


def test_full_refresh_interval_and_cron_decide_when_a_run_compares_everything() -> None:
    w = memory_world(rows=1)
    now = dt.datetime(2024, 6, 10, 12, 0, tzinfo=dt.UTC)
    mark = Mark(T0, w.ds, 1, full_at=(now - dt.timedelta(hours=25)).isoformat())
    daily = w.spec(incremental=True, timestamp_column="ts", full_refresh="24h").op
    weekly = w.spec(incremental=True, timestamp_column="ts", full_refresh="7d").op
    sunday = w.spec(incremental=True, timestamp_column="ts", full_refresh="0 3 * * 0").op  # 2024-06-09 is a Sunday
    assert full_reason(daily, mark, forced=False, now=now) == "full_refresh (24h) is due"
    assert full_reason(weekly, mark, forced=False, now=now) is None
    assert full_reason(sunday, mark, forced=False, now=now) is None  # the last full run was after Sunday 03:00
    saturday = Mark(T0, w.ds, 1, full_at="2024-06-08T12:00:00+00:00")
    assert full_reason(sunday, saturday, forced=False, now=now) == "full_refresh (0 3 * * 0) is due"
    assert full_reason(weekly, None, forced=False, now=now) == "there is no watermark yet"
    assert full_reason(weekly, mark, forced=True, now=now) == "a full comparison was asked for (--full)"


@pytest.mark.parametrize("value", [
    dt.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    dt.datetime(2024, 1, 2, 3, 4, 5), dt.date(2024, 1, 2), 17, 1.5, decimal.Decimal("12.50"), "2024-01-02",
])
def test_a_watermark_keeps_its_type_through_json(value: Any) -> None:
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)
    if isinstance(value, dt.datetime):
        assert back.tzinfo == value.tzinfo


def test_the_state_file_keeps_one_entry_per_config_operation_and_data_source(tmp_path: Path) -> None:
    marks = FileMarks(tmp_path / "state.json")
    marks.save("/a.yml", 0, Mark(5, 1))
    marks.save("/a.yml", 1, Mark(6, 1))
    marks.save("/a.yml", 0, Mark(7, 2))
    doc = json.loads((tmp_path / "state.json").read_text())
    assert sorted(doc["watermarks"]) == ["/a.yml#0#1", "/a.yml#0#2", "/a.yml#1#1"]
    assert marks.load("/a.yml", 0, 1) == Mark(5, 1) and marks.load("/a.yml", 0, 3) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_find_entries_answers_alike_over_http_and_in_memory(sandbox: SandboxServer) -> None:
    """Exact keys ("5" is not 5), whole entries, chunks of 1,000, no request for no keys."""
    data = [{"k": i} for i in range(1, 1201)] + [{"k": "5"}, {"k": None}, {"k": 5}]
    memory_store = Store()
    memory_ds = memory_store.create_data_source("keys")
    http_ds = sandbox.store.create_data_source("keys")
    memory, http = MemoryApi(memory_store), FlipletClient(DEMO_TOKEN, sandbox.url)
    try:
        for api, ds in ((memory, memory_ds), (http, http_ds)):
            api.commit(ds, {"entries": [{"data": d} for d in data]}, answer=False)
        wanted = [5, "7", *range(1000, 1300)]
        found = [sorted(((e["data"]["k"], type(e["data"]["k"]).__name__) for e in api.find_entries(ds, "k", wanted)),
                        key=str) for api, ds in ((memory, memory_ds), (http, http_ds))]
        assert found[0] == found[1] and found[0][:3] == [(1000, "int"), (1001, "int"), (1002, "int")]
        assert len(found[0]) == 203 and ("7", "str") not in found[0] and ("5", "str") not in found[0]
        before = memory.calls.count(("query", memory_ds))
        assert list(memory.find_entries(memory_ds, "k", [])) == []
        assert memory.calls.count(("query", memory_ds)) == before
    finally:
        http.close()


def _yaml(tmp_path: Path, **options: Any) -> Path:
    base = {"auth_token": "eu--x", "datasource_id": 3, "database_driver": "sqlite", "database_name": "x.db",
            "query": "SELECT 1", "primary_column": "id", "timestamp_column": "ts", "incremental": True}
    path = tmp_path / "inc.yml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in {**base, **options}.items() if v is not None))
    return path


@pytest.mark.parametrize(("options", "problem"), [
    ({"mode": "replace"}, "inc.yml:8: option 'incremental' cannot be used with mode 'replace'"),
    ({"timestamp_column": None}, "inc.yml:7: option 'incremental' needs 'timestamp_column'"),
    ({"primary_column": None}, "inc.yml:7: option 'incremental' needs 'primary_column'"),
    ({"case_insensitive_primary_column": True}, "option 'incremental' cannot be used with "
                                                "'case_insensitive_primary_column'"),
    ({"incremental": None, "full_refresh": "24h"}, "option 'full_refresh' only applies with 'incremental: true'"),
    ({"full_refresh": "sometimes"}, "option 'full_refresh' must be a cron expression such as '0 3 * * 0' or an "
                                    "interval such as '24h' or '7d', got 'sometimes'"),
])
def test_invalid_incremental_options_are_refused_naming_the_option(tmp_path: Path, options: dict[str, Any],
                                                                    problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_yaml(tmp_path, **options))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_valid_incremental_options_load(tmp_path: Path) -> None:
    op = load_config(_yaml(tmp_path, full_refresh="0 3 * * 0")).operations[0]
    assert (op.incremental, op.full_refresh) == (True, "0 3 * * 0")
    assert load_config(_yaml(tmp_path, full_refresh=" 7D ")).operations[0].full_refresh == "7d"


# -- end to end: the real CLI, a real PostgreSQL table, the real sandbox over HTTP ---------------------


class Requests:
    """Counts what the sandbox received, by kind (``query``, ``commit``, ``data`` downloads, others)."""

    def __init__(self, server: SandboxServer) -> None:
        self.kinds: Counter[str] = Counter()
        handle = server.app.handle

        def counted(request: Any) -> Any:
            path = request.path.rstrip("/")
            kind = next((k for k in ("data/query", "commit", "data") if path.endswith(k)), path)
            self.kinds["query" if kind == "data/query" else kind] += 1
            return handle(request)

        server.app.handle = counted  # type: ignore[method-assign]

    def take(self) -> Counter[str]:
        taken, self.kinds = self.kinds, Counter()
        taken.pop("v1/user", None)  # the token check every run starts with
        return taken


@pytest.fixture
def pg_world(sandbox: SandboxServer, tmp_path: Path, postgres_params: Any) -> Iterator[World]:
    engine = sa.create_engine(postgres_params.url)
    world = make_world(sandbox, engine, postgres_params.options(), tmp_path, f"inc_{uuid.uuid4().hex[:8]}")
    world.options["incremental"] = True
    yield world
    engine.dispose()


def _state(log_file: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(log_file.with_name(log_file.stem + ".state.json").read_text())
    [entry] = doc["watermarks"].values()
    return entry


def test_cli_incremental_runs_against_postgres_and_the_sandbox(pg_world: World, _agent_log_file: Path) -> None:
    w, seen = pg_world, Requests(pg_world.server)
    w.insert(*({"id": i, "email": f"u{i:02d}@x.org", "name": f"User {i}",
                "updated_at": f"2024-01-{i:02d} 00:00:00"} for i in range(1, 21)))
    assert w.run() == 0  # the first run compares everything
    assert seen.take() == Counter({"data": 1, "commit": 3}) and len(w.entries()) == 20
    assert _state(_agent_log_file)["watermark"] == {"type": "string", "value": "2024-01-20 00:00:00"}

    w.execute(f"UPDATE {w.table} SET name = 'edited', updated_at = '2024-02-0' || id || ' 00:00:00' "
              "WHERE id IN (3, 9, 15)")
    assert w.run() == 0  # reads 3 rows: one lookup, one commit, nothing downloaded
    assert seen.take() == Counter({"query": 1, "commit": 1})
    assert len(w.last_commit()["entries"]) == 3
    assert [k for k, d in w.data_by_key().items() if d["name"] == "edited"] == [3, 9, 15]
    assert _state(_agent_log_file)["watermark"]["value"] == "2024-02-09 00:00:00"

    # a run whose commit fails leaves the watermark; the next one reads the row again
    w.execute(f"UPDATE {w.table} SET name = 'late', updated_at = '2024-03-01 00:00:00' WHERE id = 4")
    w.server.faults.set(commit=["error"] * 10)
    try:
        assert w.run(retry_delay=0.01) == 1
    finally:
        w.server.faults.set()
    assert _state(_agent_log_file)["watermark"]["value"] == "2024-02-09 00:00:00"
    seen.take()
    assert w.run() == 0
    assert seen.take() == Counter({"query": 1, "commit": 1}) and w.data_by_key()[4]["name"] == "late"
    assert _state(_agent_log_file)["watermark"]["value"] == "2024-03-01 00:00:00"

    # nothing newer: one lookup-free run, no request at all
    assert w.run() == 0 and seen.take() == Counter()

    # a row changed with an older timestamp: only --full (or full_refresh) sees it
    w.execute(f"UPDATE {w.table} SET name = 'restored', updated_at = '2023-12-31 00:00:00' WHERE id = 5")
    assert w.run() == 0 and w.data_by_key()[5]["name"] == "User 5"
    assert w.run("--full") == 0 and w.data_by_key()[5]["name"] == "restored"
    assert seen.take() == Counter({"data": 1, "commit": 1})

    # full_refresh: due once the last full comparison is older than the interval (its time set back a day)
    w.execute(f"UPDATE {w.table} SET name = 'restored again', updated_at = '2023-11-30 00:00:00' WHERE id = 6")
    assert w.run(full_refresh="24h") == 0 and w.data_by_key()[6]["name"] == "User 6"  # not due yet
    state_file = _agent_log_file.with_name(_agent_log_file.stem + ".state.json")
    doc = json.loads(state_file.read_text())
    [key] = doc["watermarks"]
    day_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)).isoformat()
    doc["watermarks"][key]["fullAt"] = day_ago
    state_file.write_text(json.dumps(doc))
    assert w.run(full_refresh="24h") == 0 and w.data_by_key()[6]["name"] == "restored again"
    assert _state(_agent_log_file)["fullAt"] > day_ago


def test_a_query_that_uses_watermark_itself_is_bound_not_wrapped(pg_world: World, _agent_log_file: Path) -> None:
    w, seen = pg_world, Requests(pg_world.server)
    w.insert(*({"id": i, "email": f"u{i}@x.org", "updated_at": "2024-01-01 00:00:00"} for i in range(1, 6)))
    query = (f"SELECT {COLUMNS} FROM {w.table} WHERE CAST(:watermark AS VARCHAR) IS NULL "
             "OR updated_at > CAST(:watermark AS VARCHAR) ORDER BY id")
    assert w.run(query=query) == 0 and len(w.entries()) == 5
    w.execute(f"UPDATE {w.table} SET name = 'x', updated_at = '2024-05-01 00:00:00' WHERE id = 2")
    seen.take()
    assert w.run(query=query) == 0
    assert seen.take() == Counter({"query": 1, "commit": 1}) and w.data_by_key()[2]["name"] == "x"


def test_validate_refuses_incremental_in_replace_mode(pg_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = pg_world.write_config(mode="replace")
    assert cli_main(["validate", str(path)]) != 0
    err = capsys.readouterr()
    assert f"{path.name}:" in err.out + err.err and "option 'incremental' cannot be used with mode 'replace'" in \
        err.out + err.err
