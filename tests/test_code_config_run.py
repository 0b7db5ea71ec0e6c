"""A Python code config (the original's JS "advanced mode") run end to end against the sandbox:
a push from a source function, an ``onSync`` callback, and a pull whose action writes to SQLite."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from fliplet_workers.config import load_config
from fliplet_workers.run import run_config
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer


def test_code_config_push_and_pull(sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPLET_AGENT_LOG", "")
    db = tmp_path / "local.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE contacts (name TEXT, remote_id INTEGER)")
    push_ds = sandbox.store.create_data_source("pushed")
    pull_ds = sandbox.store.create_data_source("pulled")
    sandbox.store.commit(DEMO_TOKEN, pull_ds, {"append": True, "entries": [
        {"data": {"name": "Ann", "synced": False}}, {"data": {"name": "Bob", "synced": True}}]})
    synced = tmp_path / "synced.jsonl"
    synced_path = repr(str(synced))
    config = tmp_path / "advanced.py"
    config.write_text(textwrap.dedent(f"""
        import json

        config = {{
            "authToken": "{DEMO_TOKEN}",
            "baseURL": "{sandbox.url}",
            "syncOnInit": True,
            "database": {{"dialect": "sqlite", "storage": "local.db"}},
        }}

        def todos(http):
            return [{{"id": i, "title": f"todo {{i}}", "done": i % 2 == 0}} for i in range(1, 6)]

        def remember(result):
            with open({synced_path}, "a") as out:
                out.write(json.dumps({{"commits": len(result["commits"]),
                                      "inserted": result["summary"]["inserted"]}}) + "\\n")

        def save(entries, db):
            for entry in entries:
                db.execute("INSERT INTO contacts VALUES (:name, :id)",
                           {{"name": entry["data"]["name"], "id": entry["id"]}})

        def setup(agent):
            agent.push({{"description": "todos", "source": todos, "primaryColumnName": "id",
                         "targetDataSourceId": {push_ds}, "onSync": remember, "batchSize": 2}})
            agent.pull({{"description": "unsynced", "targetDataSourceId": {pull_ds},
                         "where": {{"synced": False}}, "action": save}})
    """))
    loaded = load_config(str(config))
    summaries = run_config(loaded)
    assert [s.ok for s in summaries] == [True, True]
    assert summaries[0].inserted == 5 and summaries[0].batches == 3
    titles = sorted(e["data"]["title"] for e in sandbox.store.entries(push_ds))
    assert titles == [f"todo {i}" for i in range(1, 6)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM contacts").fetchall() == [("Ann",)]
    # the onSync callback got the commit responses
    assert json.loads(synced.read_text().splitlines()[0]) == {"commits": 3, "inserted": 5}
    second = run_config(loaded)
    assert second[0].unchanged == 5 and second[0].affected == 0


def test_a_source_failing_mid_read_never_deletes(sandbox: SandboxServer, tmp_path: Path) -> None:
    """Replace mode deletes only after the whole source was read: a source that fails half-way (after
    some batches were already committed) leaves every other entry alone."""
    ds = sandbox.store.create_data_source("replace")
    sandbox.store.commit(DEMO_TOKEN, ds, {"append": True, "entries": [{"data": {"id": i}} for i in range(100, 110)]})
    config = tmp_path / "flaky.py"
    config.write_text(textwrap.dedent(f"""
        config = {{"authToken": "{DEMO_TOKEN}", "baseURL": "{sandbox.url}"}}

        def rows(http):
            for i in range(5):
                yield {{"id": i}}
            raise RuntimeError("the API went away")

        def setup(agent):
            agent.push({{"source": rows, "primaryColumnName": "id", "targetDataSourceId": {ds},
                         "mode": "replace", "batchSize": 2}})
    """))
    from fliplet_workers.errors import SourceError

    with pytest.raises(SourceError, match="the API went away"):
        run_config(load_config(str(config)))
    ids = sorted(e["data"]["id"] for e in sandbox.store.entries(ds))
    assert ids[-10:] == list(range(100, 110))  # nothing deleted
    assert set(ids) - set(range(100, 110)) <= {0, 1, 2, 3}  # at most the batches cut before the failure


def test_a_pull_action_writes_back_through_agent_api(sandbox: SandboxServer, tmp_path: Path) -> None:
    """As in the original's pull example: the action confirms each entry through ``agent.api``."""
    source = sandbox.store.create_data_source("requests")
    receipts = sandbox.store.create_data_source("receipts")
    sandbox.store.commit(DEMO_TOKEN, source, {"append": True, "entries": [{"data": {"n": 1}}, {"data": {"n": 2}}]})
    config = tmp_path / "writeback.py"
    config.write_text(textwrap.dedent(f"""
        config = {{"authToken": "{DEMO_TOKEN}", "baseURL": "{sandbox.url}"}}

        def setup(agent):
            def confirm(entries, db):
                for entry in entries:
                    agent.api.request(url="v1/data-sources/{receipts}/data", method="PUT",
                                      data={{"entry": entry["id"], "n": entry["data"]["n"]}})

            agent.pull({{"targetDataSourceId": {source}, "action": confirm}})
    """))
    summary = run_config(load_config(str(config)))[0]
    assert summary.ok
    written = sorted((e["data"]["entry"], e["data"]["n"]) for e in sandbox.store.entries(receipts))
    assert written == sorted((e["id"], e["data"]["n"]) for e in sandbox.store.entries(source))
