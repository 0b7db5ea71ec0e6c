"""The sandbox's console: its JSON endpoints and auth over real HTTP, the commit log and its state
file, the demo's output, and the page itself driven in headless Chromium after real agent runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import console_browser
import orjson
import pytest
import requests
import sqlalchemy as sa
from agent_support import World, make_world

from fliplet_workers.sandbox import DEMO_TOKEN, NO_ACCESS_TOKEN, SandboxServer, Store
from fliplet_workers.sandbox.commit_log import ChangeSet, CommitLog, update_change

ROOT = Path(__file__).resolve().parent.parent


def get(sandbox: SandboxServer, path: str, token: str | None = DEMO_TOKEN, **kwargs: Any) -> requests.Response:
    headers = {"Auth-token": token} if token else {}
    return requests.get(sandbox.url + path, headers=headers, timeout=10, **kwargs)


def commit(sandbox: SandboxServer, ds: int, entries: list[dict[str, Any]], **body: Any) -> requests.Response:
    return requests.post(f"{sandbox.url}v1/data-sources/{ds}/commit", headers=sandbox.headers, timeout=10,
                         json={"append": True, "entries": entries, **body})


# ------------------------------------------------------------------------------------ auth


CONSOLE_JSON = ["_console/api/index", "_console/api/data-sources/1/entries", "_console/api/commits",
                "_console/api/commits/1"]


def test_get_root_with_a_token_answers_the_index_and_without_one_the_login_form(sandbox: SandboxServer) -> None:
    commit(sandbox, 1, [{"data": {"email": "secret-person@example.com"}}])
    index = get(sandbox, "")
    assert index.status_code == 200
    assert '<a href="/#/ds/1">Users</a>' in index.text and '<td class="num">1</td>' in index.text
    for token in (None, "eu--wrong"):
        refused = get(sandbox, "", token)
        assert refused.status_code == 401 and '<form method="post" action="/_sandbox/login">' in refused.text
        assert "Users" not in refused.text and "secret-person" not in refused.text
        assert "<script" not in refused.text  # the login form needs no script


@pytest.mark.parametrize("path", CONSOLE_JSON)
def test_console_json_needs_a_token(sandbox: SandboxServer, path: str) -> None:
    commit(sandbox, 1, [{"data": {"email": "secret-person@example.com"}}])
    for token in (None, "eu--wrong"):
        reply = get(sandbox, path, token)
        assert reply.status_code == 401 and "secret-person" not in reply.text
        assert reply.json()["message"] == "Invalid or expired token"
    ok = get(sandbox, path)
    assert ok.status_code == 200 and ok.headers["Cache-Control"] == "no-store"


def test_console_json_works_with_the_login_cookie_and_shows_only_readable_sources(sandbox: SandboxServer) -> None:
    commit(sandbox, 1, [{"data": {"email": "in-users@example.com"}}])
    commit(sandbox, 2, [{"data": {"email": "in-demo@example.com"}}])
    sandbox.store.add_token("eu--demo-only", "demo-only@example.com", [2])
    browser = requests.Session()
    login = browser.post(sandbox.url + "_sandbox/login", data={"token": "eu--demo-only"}, timeout=10,
                         headers={"Origin": sandbox.url.rstrip("/")}, allow_redirects=False)
    assert login.status_code == 303
    index = browser.get(sandbox.url + "_console/api/index", timeout=10).json()
    assert [s["name"] for s in index["dataSources"]] == ["Demo"] and index["user"]["email"] == "demo-only@example.com"
    log = browser.get(sandbox.url + "_console/api/commits", timeout=10).json()
    assert [c["dataSourceId"] for c in log["commits"]] == [2]
    users_commit = get(sandbox, "_console/api/commits").json()["commits"][-1]
    assert users_commit["dataSourceId"] == 1
    assert browser.get(f"{sandbox.url}_console/api/commits/{users_commit['seq']}", timeout=10).status_code == 404
    assert browser.get(sandbox.url + "_console/api/commits?dataSourceId=1", timeout=10).status_code == 403
    assert browser.get(sandbox.url + "_console/api/data-sources/1/entries", timeout=10).status_code == 403
    nothing = get(sandbox, "_console/api/index", NO_ACCESS_TOKEN).json()
    assert nothing["dataSources"] == [] and nothing["loggedCommits"] == 0


def test_assets_need_no_token_hold_no_data_and_the_csp_allows_only_own_scripts(sandbox: SandboxServer) -> None:
    commit(sandbox, 1, [{"data": {"email": "secret-person@example.com"}}])
    script = get(sandbox, "_console/console.js", None)
    style = get(sandbox, "_console/console.css", None)
    assert script.status_code == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert style.status_code == 200 and style.headers["Content-Type"].startswith("text/css")
    assert "secret-person" not in script.text + style.text
    assert "innerHTML" not in script.text  # values reach the page as text only
    assert get(sandbox, "_console/other.js", None).status_code == 404
    csp = get(sandbox, "").headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp


def test_bad_paging_numbers_are_refused(sandbox: SandboxServer) -> None:
    reply = get(sandbox, "_console/api/data-sources/1/entries?offset=-1")
    assert reply.status_code == 400 and "offset" in reply.json()["message"]


# ------------------------------------------------------------------------------ entries


def test_entries_are_paged_and_searched_by_entry_id_or_value(sandbox: SandboxServer) -> None:
    commit(sandbox, 1, [{"data": {"id": 100 + i, "email": f"user{i}@example.org", "n": i}} for i in range(120)])
    first = get(sandbox, "_console/api/data-sources/1/entries?limit=50").json()
    assert (first["total"], first["matched"], len(first["entries"])) == (120, 120, 50)
    assert first["columns"] == ["id", "email", "n"]  # the row's own id is a column; the entry id is not
    third = get(sandbox, "_console/api/data-sources/1/entries?limit=50&offset=100").json()
    assert [e["data"]["n"] for e in third["entries"]] == list(range(100, 120))
    by_text = get(sandbox, "_console/api/data-sources/1/entries", params={"search": "USER7@"}).json()
    assert [e["data"]["email"] for e in by_text["entries"]] == ["user7@example.org"]
    entry_id = first["entries"][3]["id"]
    by_id = get(sandbox, "_console/api/data-sources/1/entries", params={"search": f"#{entry_id}"}).json()
    assert [e["id"] for e in by_id["entries"]] == [entry_id] and by_id["matched"] == 1


def test_the_index_counts_entries_and_tells_the_last_change(sandbox: SandboxServer) -> None:
    before = get(sandbox, "_console/api/index").json()
    commit(sandbox, 2, [{"data": {"a": 1}}, {"data": {"a": 2}}])
    after = get(sandbox, "_console/api/index").json()
    demo = {s["id"]: s for s in after["dataSources"]}[2]
    assert demo["entries"] == 2 and demo["commits"] == 1
    assert demo["lastChange"] > {s["id"]: s for s in before["dataSources"]}[2]["lastChange"]
    assert after["version"] > before["version"]  # what the page polls


# --------------------------------------------------------------------------- commit log


def test_the_commit_log_lists_newest_first_with_counts_and_before_after(sandbox: SandboxServer) -> None:
    commit(sandbox, 1, [{"data": {"key": 1, "name": "Ann"}}, {"data": {"key": 2, "name": "Bob"}}])
    ann, bob = (e["id"] for e in sandbox.store.entries(1))
    commit(sandbox, 1, [{"id": ann, "data": {"key": 1, "name": "Anne"}}], delete=[bob])
    log = get(sandbox, "_console/api/commits").json()
    assert [(c["inserted"], c["updated"], c["deleted"], c["status"]) for c in log["commits"]] == [
        (0, 1, 1, "applied"), (2, 0, 0, "applied")]
    assert log["commits"][0]["receivedAt"] >= log["commits"][1]["receivedAt"]
    detail = get(sandbox, f"_console/api/commits/{log['commits'][0]['seq']}").json()
    changes = {c["op"]: c for c in detail["changes"]}
    assert changes["update"]["entryId"] == ann and changes["update"]["sameColumns"] == 1
    assert changes["update"]["columns"] == [{"column": "name", "before": "Ann", "after": "Anne",
                                             "beforeMissing": False, "afterMissing": False}]
    assert changes["delete"]["entryId"] == bob
    assert {r["column"]: r["before"] for r in changes["delete"]["columns"]} == {"key": 2, "name": "Bob"}


def test_replace_mode_refused_and_faulted_commits_are_logged_as_such(sandbox: SandboxServer) -> None:
    commit(sandbox, 1, [{"data": {"k": i}} for i in range(3)])
    keep = sandbox.store.entries(1)[0]["id"]
    commit(sandbox, 1, [{"id": keep, "data": {"k": 0}}], append=False)  # replace: the other two go
    assert commit(sandbox, 1, [{"id": 999999, "data": {}}]).status_code == 400
    sandbox.faults.set(commit=["error"])
    assert commit(sandbox, 1, [{"data": {"k": 9}}]).status_code == 500
    log = get(sandbox, "_console/api/commits").json()["commits"]
    faulted, refused, replaced = log[0], log[1], log[2]
    assert (replaced["updated"], replaced["deleted"], replaced["append"]) == (1, 2, False)
    assert refused["status"] == "refused" and "does not exist" in refused["message"]
    assert faulted["status"] == "received" and faulted["message"] == "injected fault: error"
    assert sandbox.store.commit_count(1) == 4 and sandbox.store.applied_commit_count(1) == 2


def test_a_commits_changes_are_paged(sandbox: SandboxServer) -> None:
    commit(sandbox, 1, [{"data": {"k": i}} for i in range(5)])
    detail = get(sandbox, "_console/api/commits/1?offset=2&limit=2").json()
    assert detail["changesKept"] == 5 and detail["inserted"] == 5
    assert [c["columns"][0]["after"] for c in detail["changes"]] == [2, 3]
    assert all(c["op"] == "insert" and c["columns"][0]["beforeMissing"] for c in detail["changes"])


def test_the_log_is_bounded_in_commits_and_in_changes() -> None:
    log = CommitLog(size=3, budget=5)
    for n in range(5):
        record = log.received(1, {"n": n}, f"t{n}")
        changes = ChangeSet.of(update_change(i, {"a": n}, {"a": n + 1}) for i in range(2))
        log.applied(record, changes, {"inserted": 0, "updated": 2, "deleted": 0}, f"t{n}")
    assert [r.seq for r in log] == [3, 4, 5]
    assert [len(r.changes) for r in log] == [0, 2, 2] and [r.changes_dropped for r in log] == [2, 0, 0]
    assert [r.counts["updated"] for r in log] == [2, 2, 2]  # counts outlive the details


def test_a_store_keeps_the_last_1000_commits() -> None:
    store = Store()
    for n in range(1005):
        store.commit(DEMO_TOKEN, 2, {"append": True, "entries": [{"data": {"n": n}}]})
    page = store.commit_page(DEMO_TOKEN, offset=0, limit=500)
    assert page["total"] == 1000 and page["commits"][0]["seq"] == 1005


def test_update_changes_name_only_what_changed() -> None:
    change = update_change(7, {"a": 1, "b": True, "c": "x", "gone": 1}, {"a": 1.0, "b": 1, "c": "x", "new": None})
    assert change == ("update", 7, {"a": 1, "b": True, "gone": 1}, {"a": 1.0, "b": 1, "new": None}, 1)


# ---------------------------------------------------------------------------- state file


def _commits_into(store: Store) -> None:
    body = {"append": True, "entries": [{"data": {"k": 1, "v": "old"}}]}
    store.record_commit(1, body)
    store.commit(DEMO_TOKEN, 1, body)
    entry = store.entries(1)[0]["id"]
    store.commit(DEMO_TOKEN, 1, {"append": True, "entries": [{"id": entry, "data": {"k": 1, "v": "new"}}]})


def test_the_state_file_keeps_the_commit_log(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = Store(path)
    _commits_into(first)
    first.save()
    second = Store(path)
    assert second.commit_page(DEMO_TOKEN) == first.commit_page(DEMO_TOKEN) | {"version": second.version}
    assert second.commit_detail(DEMO_TOKEN, 2) == first.commit_detail(DEMO_TOKEN, 2)
    assert second.console_index(DEMO_TOKEN)["dataSources"] == first.console_index(DEMO_TOKEN)["dataSources"]
    second.commit(DEMO_TOKEN, 1, {"append": True, "entries": [{"data": {"k": 2}}]})
    assert second.commit_page(DEMO_TOKEN)["commits"][0]["seq"] == 3  # numbering goes on


def test_a_state_file_from_before_the_console_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    store = Store(path)
    _commits_into(store)
    store.save()
    doc = orjson.loads(path.read_bytes())
    del doc["commitLog"], doc["changedAt"]
    path.write_bytes(orjson.dumps(doc))
    old = Store(path)
    assert old.commit_page(DEMO_TOKEN)["commits"] == [] and old.commit_count(1) == 1
    users = old.console_index(DEMO_TOKEN)["dataSources"][0]
    assert users["entries"] == 1 and users["lastChange"] == old.entries(1)[0]["updatedAt"]
    old.commit(DEMO_TOKEN, 1, {"append": True, "entries": [{"data": {"k": 2}}]})
    assert [c["seq"] for c in old.commit_page(DEMO_TOKEN)["commits"]] == [1]


# ----------------------------------------------------------------------------------- demo


def test_the_demo_prints_each_heading_before_its_logs_and_ends_with_the_url(tmp_path: Path) -> None:
    env = {**os.environ, "FLIPLET_AGENT_LOG": str(tmp_path / "agent.log")}
    done = subprocess.run([sys.executable, "-m", "fliplet_workers.cli", "demo", "--config", str(ROOT / "configs/demo.yml")],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("== ")]
    assert len(headings) == 4
    for start, end in zip(headings, [*headings[1:], len(lines)], strict=True):
        step = lines[start:end]
        plan = next(i for i, line in enumerate(step) if "Plan:" in line)
        outcome = next(i for i, line in enumerate(step) if line.startswith("-> "))
        assert 0 < plan < outcome, step  # heading, then the run's log lines, then what landed
    assert "1 updated, 1 deleted" in lines[headings[3] + 1:][-1] or any("1 updated, 1 deleted" in x for x in lines)
    assert lines[-1] == "http://127.0.0.1:8765/" and "fliplet-agent sandbox --data var/demo-sandbox.json" in lines[-2]
    saved = Store(tmp_path / "var" / "demo-sandbox.json")  # what that command would show
    log = saved.commit_page(DEMO_TOKEN)["commits"]
    assert [(c["inserted"], c["updated"], c["deleted"]) for c in log] == [(0, 1, 1), (25, 0, 0)]


# ------------------------------------------------------------------------------- browser


@pytest.fixture
def people(sandbox: SandboxServer, tmp_path: Path) -> Iterator[World]:
    """A SQLite table of 60 people, with an encrypted column and a file column, synced by the CLI."""
    path = tmp_path / "people.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    w = make_world(sandbox, engine, {"database_driver": "sqlite", "database_name": str(path)}, tmp_path, "people")
    w.execute("ALTER TABLE people ADD COLUMN secret VARCHAR(40)")
    w.execute("ALTER TABLE people ADD COLUMN resume VARCHAR(40)")
    w.insert(*({"id": i, "email": f"person{i}@example.org", "name": f"Person {i}"} for i in range(1, 61)))
    w.execute("UPDATE people SET secret = 'pin-' || id")
    files = tmp_path / "resumes"
    files.mkdir()
    (files / "cv-42.txt").write_text("Person 42's resume")
    w.execute("UPDATE people SET resume = 'cv-42.txt' WHERE id = 42")
    w.options.update(query='SELECT id, email, name, updated_at AS "updatedAt", deleted_at, secret, resume '
                           "FROM people ORDER BY id",
                     batch_size=1000, log_verbosity="info",
                     encrypt={"fields": ["secret"], "key": "console-test-key"},
                     files=[{"column": "resume", "type": "local", "directory": str(files)}])
    yield w
    engine.dispose()


def _login(b: console_browser.Browser, url: str) -> None:
    b.open(url)
    b.wait_for(lambda: b.find('input[name="token"]'), "the login form")
    b.shot("login")
    b.find('input[name="token"]').send_keys(DEMO_TOKEN)
    b.click('main form button[type="submit"]')


def _data_source_with_search(b: console_browser.Browser, ds: int) -> None:
    b.click(f'a[href="#/ds/{ds}"]')
    b.wait_for(lambda: len(b.find_all("table.entries tbody tr")) == 50, "the first page of entries")
    headers = [th.text for th in b.find_all("table.entries thead th")]
    assert headers[0].startswith("Entry ID") and "id" in headers[1:]  # the entry id stands apart from the row's id
    b.find("#search").send_keys("person42@")
    b.wait_for(lambda: len(b.find_all("table.entries tbody tr")) == 1, "one entry found by the search")
    row = b.find("table.entries tbody tr")
    assert "Grace Hopper" in row.text and "person42@example.org" in row.text
    assert "encrypted" in row.find_element("css selector", ".enc").text  # the ciphertext is marked
    link = row.find_element("css selector", ".file a")
    assert link.text == "42-cv-42.txt" or link.text.endswith("cv-42.txt")
    assert "/media/files/" in link.get_attribute("href")
    b.shot("data-source-search")


def _commit_log_and_commit(b: console_browser.Browser, people: World) -> None:
    b.click('header nav a[data-nav="commits"]')
    b.wait_for(lambda: b.find_all("table.commits tbody tr"), "the commit log")
    newest = b.find_all("table.commits tbody tr")[0]
    cells = [td.text for td in newest.find_elements("css selector", "td")]
    assert cells[3].startswith("applied") and cells[4:7] == ["0", "1", "0"], cells
    b.shot("commit-log")
    newest.find_element("css selector", "a").click()
    b.wait_for(lambda: b.find("table.changes"), "the commit's changes")
    rows = {r.find_element("css selector", "td.column").text: r for r in b.find_all("table.changes tbody tr")
            if r.find_elements("css selector", "td.column")}
    assert "name" in rows, b.text()
    name = rows["name"]
    assert name.find_element("css selector", "td.before.changed").text == "Person 42"
    assert name.find_element("css selector", "td.after.changed").text == "Grace Hopper"
    assert "Updated (1)" in b.text() and "column(s) unchanged" in b.text() and "Inserted" not in b.text()
    b.shot("commit")


def _refreshes_without_reload(b: console_browser.Browser, people: World) -> None:
    b.click('header nav a[data-nav="commits"]')
    b.wait_for(lambda: b.find_all("table.commits tbody tr"), "the commit log")
    b.driver.execute_script("window.__notReloaded = true")
    count = len(b.find_all("table.commits tbody tr"))
    people.insert({"id": 61, "email": "late@example.org", "name": "Late Arrival"})
    assert people.run() == 0
    b.wait_for(lambda: len(b.find_all("table.commits tbody tr")) == count + 1, "the new commit, by polling")
    assert b.driver.execute_script("return window.__notReloaded") is True


def test_the_console_in_headless_chromium_after_real_runs(sandbox: SandboxServer, people: World,
                                                          tmp_path: Path) -> None:
    reason = console_browser.missing()
    if reason:
        pytest.skip(f"no headless browser for the console test: {reason}")
    assert people.run() == 0
    people.execute("UPDATE people SET name = 'Grace Hopper', updated_at = '2024-06-01 10:00:00' WHERE id = 42")
    assert people.run() == 0
    shots = tmp_path / "shots"
    shots.mkdir()
    with console_browser.chromium(shots) as b:
        _login(b, sandbox.url)
        b.wait_for(lambda: b.find(f'a[href="#/ds/{people.ds}"]'), "the index after logging in")
        assert "person42" not in b.text()  # the index lists data sources, not entries
        b.shot("index")
        _data_source_with_search(b, people.ds)
        _commit_log_and_commit(b, people)
        _refreshes_without_reload(b, people)
        b.click("form.logout button")  # a real browser's POST passes the Origin check (Referrer-Policy)
        b.wait_for(lambda: b.find('input[name="token"]'), "the login form after logging out")
        assert "test people" not in b.text()
        shot_list = list(b.shots)
    assert [p.name for p in shot_list] == ["01-login.png", "02-index.png", "03-data-source-search.png",
                                           "04-commit-log.png", "05-commit.png"]
    copy_to = os.environ.get("CONSOLE_SHOTS_DIR")
    if copy_to:  # to look at them outside the test's temporary directory
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for path in shot_list:
            shutil.copy(path, Path(copy_to) / path.name)
