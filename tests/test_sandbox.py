"""The sandbox server, exercised over real HTTP on 127.0.0.1 (a free port per test)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from fliplet_workers.sandbox import DEMO_TOKEN, NO_ACCESS_TOKEN, SandboxServer


class Api:
    """A tiny client: ``api.post("v1/...", json=...)`` with the token header set."""

    def __init__(self, server: SandboxServer, token: str | None = DEMO_TOKEN) -> None:
        self.base = server.url
        self.session = requests.Session()
        if token:
            self.session.headers["Auth-token"] = token

    def __getattr__(self, method: str) -> Any:
        def call(path: str, **kwargs: Any) -> requests.Response:
            return self.session.request(method.upper(), self.base + path, timeout=30, **kwargs)

        return call


@pytest.fixture
def api(sandbox: SandboxServer) -> Api:
    return Api(sandbox)


def commit(api: Api, ds: int, entries: list[dict[str, Any]], **body: Any) -> requests.Response:
    return api.post(f"v1/data-sources/{ds}/commit", json={"append": True, "entries": entries, **body})


def remote_data(sandbox: SandboxServer, ds: int = 1) -> dict[int, dict[str, Any]]:
    return {e["id"]: e["data"] for e in sandbox.store.entries(ds)}


# ------------------------------------------------------------------------------------ tokens


def test_user_is_returned_for_the_demo_token(api: Api) -> None:
    reply = api.get("v1/user")
    assert reply.status_code == 200
    assert reply.json()["user"]["fullName"] == "Sandbox User"
    assert set(reply.json()["user"]) == {"id", "email", "fullName", "firstName", "lastName"}


@pytest.mark.parametrize("token", [None, "eu--wrong"])
def test_missing_or_unknown_token_is_401(sandbox: SandboxServer, token: str | None) -> None:
    api = Api(sandbox, token)
    for path in ("v1/user", "v1/data-sources/1/data", "v1/organizations"):
        reply = api.get(path)
        assert reply.status_code == 401
        assert reply.json() == {"message": "Invalid or expired token"}


def test_token_without_access_is_403_and_unknown_source_404(sandbox: SandboxServer) -> None:
    no_access = Api(sandbox, NO_ACCESS_TOKEN)
    assert no_access.get("v1/user").status_code == 200
    for reply in (no_access.get("v1/data-sources/1/data"), commit(no_access, 1, [{"data": {"a": 1}}])):
        assert reply.status_code == 403
        assert "data source 1" in reply.json()["message"]
    assert sandbox.store.entries(1) == []
    missing = Api(sandbox).get("v1/data-sources/999/data")
    assert missing.status_code == 404
    assert "999" in missing.json()["message"]


def test_added_token_gets_access(sandbox: SandboxServer) -> None:
    sandbox.store.add_token("eu--extra", "extra@example.com", [2])
    extra = Api(sandbox, "eu--extra")
    assert extra.get("v1/data-sources/2/data").status_code == 200
    assert extra.get("v1/data-sources/1/data").status_code == 403


# ----------------------------------------------------------------------------------- commits


def test_insert_returns_full_entries_with_increasing_ids(api: Api, sandbox: SandboxServer) -> None:
    reply = commit(api, 1, [{"data": {"name": "a"}}, {"data": {"name": "b"}}])
    assert reply.status_code == 200
    entries = reply.json()["entries"]
    assert [e["data"]["name"] for e in entries] == ["a", "b"]
    assert entries[0]["id"] < entries[1]["id"]
    assert set(entries[0]) == {"id", "dataSourceId", "data", "createdAt", "updatedAt"}
    assert entries[0]["dataSourceId"] == 1
    assert entries[0]["createdAt"].endswith("Z")
    later = commit(api, 2, [{"data": {"name": "c"}}]).json()["entries"][0]
    assert later["id"] > entries[1]["id"]  # ids are unique across the sandbox
    fetched = api.get("v1/data-sources/1/data").json()["entries"]
    assert fetched == entries


def test_update_replaces_and_extend_merges(api: Api, sandbox: SandboxServer) -> None:
    first = commit(api, 1, [{"data": {"name": "a", "age": 1}}]).json()["entries"][0]
    replaced = commit(api, 1, [{"id": first["id"], "data": {"name": "A"}}]).json()["entries"][0]
    assert replaced["data"] == {"name": "A"}
    assert replaced["createdAt"] == first["createdAt"]
    merged = commit(api, 1, [{"id": first["id"], "data": {"age": 2}}], extend=True).json()["entries"]
    assert merged[0]["data"] == {"name": "A", "age": 2}
    assert remote_data(sandbox) == {first["id"]: {"name": "A", "age": 2}}


def test_update_of_unknown_id_is_400_and_applies_nothing(api: Api, sandbox: SandboxServer) -> None:
    reply = commit(api, 1, [{"data": {"name": "new"}}, {"id": 424242, "data": {"name": "x"}}])
    assert reply.status_code == 400
    assert "424242" in reply.json()["message"]
    assert sandbox.store.entries(1) == []


def test_delete_removes_ids_and_ignores_unknown_ones(api: Api, sandbox: SandboxServer) -> None:
    ids = [e["id"] for e in commit(api, 1, [{"data": {"n": i}} for i in range(3)]).json()["entries"]]
    reply = commit(api, 1, [], delete=[ids[1], 999999])
    assert reply.status_code == 200
    assert sorted(remote_data(sandbox)) == [ids[0], ids[2]]


def test_append_false_removes_entries_not_in_the_commit(api: Api, sandbox: SandboxServer) -> None:
    ids = [e["id"] for e in commit(api, 1, [{"data": {"n": i}} for i in range(3)]).json()["entries"]]
    reply = api.post("v1/data-sources/1/commit",
                     json={"append": False, "entries": [{"id": ids[0], "data": {"n": 0}}, {"data": {"n": 9}}]})
    assert reply.status_code == 200
    data = remote_data(sandbox)
    assert ids[0] in data and ids[1] not in data and ids[2] not in data
    assert sorted(d["n"] for d in data.values()) == [0, 9]


def test_bad_json_is_400(api: Api) -> None:
    reply = api.post("v1/data-sources/1/commit", data=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status_code == 400
    assert "JSON" in reply.json()["message"]
    assert commit(api, 1, [{"nodata": 1}]).status_code == 400


def test_paths_accept_trailing_slash_and_query_strings(api: Api) -> None:
    assert api.get("v1/organizations/").json() == {"organizations": [{"id": 1, "name": "Sandbox org"}]}
    assert api.get("v1/user/?foo=bar").status_code == 200
    assert api.get("v1/nothing-here").status_code == 404
    assert api.delete("v1/user").status_code == 405


# ------------------------------------------------------------------------------------- query

PEOPLE = [
    {"name": "Ann", "age": 30, "city": "Paris"},
    {"name": "bob", "age": 25, "city": "London"},
    {"name": "Cid", "age": 41, "city": "Paris"},
    {"name": "Dee", "age": None, "city": "Rome"},
]


@pytest.fixture
def people(api: Api) -> Api:
    assert commit(api, 1, [{"data": p} for p in PEOPLE]).status_code == 200
    return api


@pytest.mark.parametrize(("where", "expected"), [
    ({"city": "Paris"}, ["Ann", "Cid"]),
    ({"city": "Paris", "age": 41}, ["Cid"]),
    ({"name": {"$in": ["Ann", "Dee", "Zed"]}}, ["Ann", "Dee"]),
    ({"name": ["bob"]}, ["bob"]),
    ({"age": {"$eq": 25}}, ["bob"]),
    ({"city": {"$ne": "Paris"}}, ["bob", "Dee"]),
    ({"age": {"$gt": 30}}, ["Cid"]),
    ({"age": {"$gte": 30}}, ["Ann", "Cid"]),
    ({"age": {"$lt": 30}}, ["bob"]),
    ({"age": {"$lte": 30, "$gt": 25}}, ["Ann"]),
    ({"name": {"$like": "%o%"}}, ["bob"]),
    ({"name": {"$like": "B%"}}, []),
    ({"name": {"$iLike": "B%"}}, ["bob"]),
    ({"$or": [{"city": "Rome"}, {"age": 25}]}, ["bob", "Dee"]),
    ({"$and": [{"city": "Paris"}, {"age": {"$lt": 35}}]}, ["Ann"]),
])
def test_query_where_operators(people: Api, where: dict[str, Any], expected: list[str]) -> None:
    reply = people.post("v1/data-sources/1/data/query", json={"where": where})
    assert reply.status_code == 200
    assert [e["data"]["name"] for e in reply.json()["entries"]] == expected


def test_query_attributes_limit_offset(people: Api) -> None:
    reply = people.post("v1/data-sources/1/data/query",
                        json={"where": {"city": {"$ne": "Nowhere"}}, "attributes": ["name"], "offset": 1, "limit": 2})
    entries = reply.json()["entries"]
    assert [e["data"] for e in entries] == [{"name": "bob"}, {"name": "Cid"}]
    assert all(e["dataSourceId"] == 1 for e in entries)


def test_query_unknown_operator_is_400(people: Api) -> None:
    reply = people.post("v1/data-sources/1/data/query", json={"where": {"age": {"$regex": "x"}}})
    assert reply.status_code == 400
    assert "$regex" in reply.json()["message"]


# ----------------------------------------------------------------------------- keystore, media


def test_keystore_flow(api: Api) -> None:
    assert api.get("v1/data-sources?type=keystore").json() == {"dataSources": []}
    org = api.get("v1/organizations").json()["organizations"][0]
    created = api.post("v1/data-sources", json={"name": "Keystore", "type": "keystore",
                                                "organizationId": org["id"]}).json()["dataSource"]
    assert created["type"] == "keystore" and created["organizationId"] == org["id"]
    found = api.get("v1/data-sources?type=keystore").json()["dataSources"]
    assert [d["id"] for d in found] == [created["id"]]
    assert len(api.get("v1/data-sources").json()["dataSources"]) == 3
    entry = api.put(f"v1/data-sources/{created['id']}/data",
                    json={"createdAt": 1700000000, "source": "Fliplet Agent", "content": "U2FsdGVk"}).json()
    assert entry["data"]["content"] == "U2FsdGVk"
    stored = api.get(f"v1/data-sources/{created['id']}/data").json()["entries"]
    assert [e["id"] for e in stored] == [entry["id"]]


def test_media_folder_upload_and_download(api: Api, sandbox: SandboxServer) -> None:
    assert api.get("v1/media/?organizationId=1").json() == {"folders": [], "files": []}
    folder = api.post("v1/media/folders", json={"name": "Files uploaded from DIS", "organizationId": 1}).json()
    assert folder["name"] == "Files uploaded from DIS" and folder["organizationId"] == 1
    assert [f["id"] for f in api.get("v1/media/?organizationId=1").json()["folders"]] == [folder["id"]]

    content = bytes(range(256)) * 3 + b"\r\n--tricky\r\n\r"
    checksum = hashlib.md5(content).hexdigest()
    reply = api.post(f"v1/media/files?folderId={folder['id']}&name=7-photo.jpg&organizationId=1",
                     files={"files": ("photo.jpg", content)}, data={"checksum": checksum})
    assert reply.status_code == 200
    uploaded = reply.json()["files"][0]
    assert uploaded["name"] == "7-photo.jpg"
    assert uploaded["metadata"] == {"checksum": checksum, "clientChecksum": checksum}
    assert uploaded["size"] == len(content) and uploaded["contentType"] == "image/jpeg"
    assert uploaded["url"].startswith(sandbox.url)

    listed = api.get(f"v1/media?folderId={folder['id']}&organizationId=1").json()["files"]
    assert [(f["id"], f["url"]) for f in listed] == [(uploaded["id"], uploaded["url"])]
    download = requests.get(uploaded["url"], headers=sandbox.headers, timeout=10)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["Content-Type"] == "image/jpeg"
    assert download.headers["Content-Disposition"].startswith("attachment;")
    missing = requests.get(sandbox.url + f"media/files/{uploaded['id']}/other.jpg", headers=sandbox.headers, timeout=10)
    assert missing.status_code == 404


def test_upload_without_files_field_is_400(api: Api) -> None:
    reply = api.post("v1/media/files?name=a.txt&organizationId=1", files={"other": ("a.txt", b"x")})
    assert reply.status_code == 400


# ------------------------------------------------------------------------------------ faults


def test_error_faults_fail_without_applying_then_ok(api: Api, sandbox: SandboxServer) -> None:
    assert api.post("_sandbox/faults", json={"commit": ["error", "error"]}).status_code == 200
    for _ in range(2):
        reply = commit(api, 1, [{"data": {"n": 1}}])
        assert reply.status_code == 500
        assert reply.json() == {"message": "Sandbox injected failure"}
    assert sandbox.store.entries(1) == []
    assert commit(api, 1, [{"data": {"n": 1}}]).status_code == 200
    assert len(sandbox.store.entries(1)) == 1
    recorded = api.get("_sandbox/data-sources/1/commits").json()
    assert recorded["count"] == 3
    assert recorded["commits"] == [{"append": True, "entries": [{"data": {"n": 1}}]}] * 3
    assert sandbox.store.commit_count(1) == 3


def test_drop_after_apply_applies_but_client_sees_connection_error(api: Api, sandbox: SandboxServer) -> None:
    sandbox.faults.set(commit=["drop-after-apply", "drop-before-apply"])
    with pytest.raises(requests.ConnectionError):
        commit(api, 1, [{"data": {"n": "after"}}])
    assert [d["n"] for d in remote_data(sandbox).values()] == ["after"]
    with pytest.raises(requests.ConnectionError):
        commit(api, 1, [{"data": {"n": "before"}}])
    assert [d["n"] for d in remote_data(sandbox).values()] == ["after"]
    assert commit(api, 1, [{"data": {"n": "ok"}}]).status_code == 200


def test_bad_fault_configuration_is_400(api: Api) -> None:
    assert api.post("_sandbox/faults", json={"commit": ["explode"]}).status_code == 400
    assert api.post("_sandbox/faults", json={"bogus_delay_ms": 5}).status_code == 400


def test_commit_delay_does_not_block_other_requests(sandbox: SandboxServer) -> None:
    sandbox.faults.set(commit_delay_ms=1500)
    finished = threading.Event()

    def slow_commit() -> None:
        commit(Api(sandbox), 1, [{"data": {"n": 1}}])
        finished.set()

    worker = threading.Thread(target=slow_commit)
    worker.start()
    time.sleep(0.1)
    assert Api(sandbox).get("v1/user").status_code == 200
    assert not finished.is_set()  # the user call was answered while the commit was still sleeping
    worker.join(10)
    assert finished.is_set() and len(sandbox.store.entries(1)) == 1


# ------------------------------------------------------------------------- sandbox endpoints


def test_sandbox_state_data_sources_and_reset(api: Api, sandbox: SandboxServer) -> None:
    created = api.post("_sandbox/data-sources", json={"name": "Extra"}).json()
    assert commit(api, created["id"], [{"data": {"x": 1}}, {"data": {"x": 2}}]).status_code == 200
    state = api.get("_sandbox/state").json()
    extra = next(d for d in state["dataSources"] if d["id"] == created["id"])
    assert (extra["name"], extra["entries"], extra["commits"], extra["appliedCommits"]) == ("Extra", 2, 1, 1)
    assert api.post("_sandbox/reset").json() == {"ok": True}
    names = [d["name"] for d in api.get("_sandbox/state").json()["dataSources"]]
    assert names == ["Users", "Demo"]


def test_commit_log_is_bounded_but_counted(sandbox: SandboxServer) -> None:
    for i in range(1005):
        sandbox.store.record_commit(2, {"n": i})
    bodies = sandbox.store.commits(2)
    assert len(bodies) == 1000 and bodies[0] == {"n": 5} and bodies[-1] == {"n": 1004}
    assert sandbox.store.commit_count(2) == 1005


# ------------------------------------------------------------------------------- persistence


def test_data_survives_a_restart(tmp_path: Path) -> None:
    data_file = tmp_path / "sandbox.json"
    with SandboxServer(data_file=str(data_file)) as first:
        api = Api(first)
        ids = [e["id"] for e in commit(api, 1, [{"data": {"n": 1}}, {"data": {"n": 2}}]).json()["entries"]]
        ds = first.store.create_data_source("Kept")
        uploaded = api.post("v1/media/files?name=a.bin&organizationId=1",
                            files={"files": ("a.bin", b"\x00\x01bytes")}, data={"checksum": "c"}).json()
    assert data_file.exists()
    with SandboxServer(data_file=str(data_file)) as second:
        api = Api(second)
        assert {e["id"]: e["data"] for e in api.get("v1/data-sources/1/data").json()["entries"]} == {
            ids[0]: {"n": 1}, ids[1]: {"n": 2}}
        assert api.get(f"v1/data-sources/{ds}/data").status_code == 200
        assert commit(api, 1, [{"data": {"n": 3}}]).json()["entries"][0]["id"] > ids[1]
        assert second.store.commit_count(1) == 2
        file_id = uploaded["files"][0]["id"]
        got = requests.get(second.url + f"media/files/{file_id}/a.bin", headers=second.headers, timeout=10)
        assert got.content == b"\x00\x01bytes"


def test_autosave_writes_the_file_while_running(tmp_path: Path) -> None:
    data_file = tmp_path / "auto.json"
    with SandboxServer(data_file=str(data_file)) as server:
        commit(Api(server), 1, [{"data": {"n": "autosaved"}}])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"autosaved" not in (
                data_file.read_bytes() if data_file.exists() else b""):
            time.sleep(0.2)
        assert b"autosaved" in data_file.read_bytes()


# ---------------------------------------------------------------------------- page, logs, size


def test_html_page_is_the_index_of_data_sources_escaped(api: Api, sandbox: SandboxServer) -> None:
    commit(api, 1, [{"data": {"Email": "a@example.com", "Note": "<script>x</script>"}},
                    {"data": {"Email": "b@example.com", "Extra": 5}}])
    sandbox.store.create_data_source("<script>alert(1)</script>")
    reply = requests.get(sandbox.url, headers=sandbox.headers, timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/html")
    page = reply.text
    for text in ("Users", "Demo", ">2</td>", "3 data source(s) this token may read, 2 entries in total"):
        assert text in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the only script is the console's own file; entries come from its JSON, as data
    assert page.count("<script") == 1 and '<script src="/_console/console.js" defer></script>' in page
    entries = api.get("_console/api/data-sources/1/entries").json()
    assert [e["data"]["Email"] for e in entries["entries"]] == ["a@example.com", "b@example.com"]
    assert entries["columns"] == ["Email", "Note", "Extra"]


def test_requests_are_logged_without_the_token(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="fliplet_workers.sandbox"):
        api.get("v1/user")
        commit(api, 1, [{"data": {"n": 1}}])
        api.get("v1/user?auth_token=" + DEMO_TOKEN)
    assert "GET /v1/user -> 200" in caplog.text
    assert "POST /v1/data-sources/1/commit -> 200" in caplog.text
    assert DEMO_TOKEN not in caplog.text


def test_get_data_of_200k_entries(api: Api, sandbox: SandboxServer) -> None:
    ds = sandbox.store.create_data_source("Big")
    for start in range(0, 200_000, 10_000):
        sandbox.store.commit(DEMO_TOKEN, ds, {"append": True, "entries": [
            {"data": {"key": i, "email": f"user{i}@example.com"}} for i in range(start, start + 10_000)]})
    reply = api.get(f"v1/data-sources/{ds}/data")
    assert reply.status_code == 200
    entries = reply.json()["entries"]
    assert len(entries) == 200_000
    assert [e["data"]["key"] for e in entries[:3]] == [0, 1, 2] and entries[-1]["data"]["key"] == 199_999
    assert len({e["id"] for e in entries}) == 200_000


# ------------------------------------------------------------------- one entry: GET, PUT, DELETE


def test_get_one_entry_as_fliplet_answers_it(api: Api, sandbox: SandboxServer) -> None:
    first, second = commit(api, 1, [{"data": {"n": 1}}, {"data": {"n": 2}}]).json()["entries"]
    reply = api.get(f"v1/data-sources/1/data/{second['id']}")
    assert reply.status_code == 200
    assert reply.json() == second  # the entry itself, not wrapped
    other_ds = commit(api, 2, [{"data": {"n": 3}}]).json()["entries"][0]
    for path, status, words in (
            (f"v1/data-sources/1/data/{other_ds['id']}", 404, f"Entry {other_ds['id']}"),  # not this source's
            ("v1/data-sources/1/data/999999", 404, "Entry 999999"),
            (f"v1/data-sources/999/data/{first['id']}", 404, "Data source 999")):
        missing = api.get(path)
        assert (missing.status_code, words in missing.json()["message"]) == (status, True), path
    assert Api(sandbox, None).get(f"v1/data-sources/1/data/{first['id']}").status_code == 401
    assert Api(sandbox, "eu--wrong").get(f"v1/data-sources/1/data/{first['id']}").status_code == 401
    assert Api(sandbox, NO_ACCESS_TOKEN).get(f"v1/data-sources/1/data/{first['id']}").status_code == 403


def test_put_one_entry_merges_the_columns_sent(api: Api, sandbox: SandboxServer) -> None:
    entry = commit(api, 1, [{"data": {"First name": "Ann", "syncedAt": "", "n": 1}}]).json()["entries"][0]
    path = f"v1/data-sources/1/data/{entry['id']}"
    reply = api.put(path, json={"syncedAt": 1717236000000, "n": None})
    assert reply.status_code == 200
    updated = reply.json()
    assert updated["data"] == {"First name": "Ann", "syncedAt": 1717236000000, "n": None}  # null is a value
    assert (updated["id"], updated["createdAt"]) == (entry["id"], entry["createdAt"])
    assert updated["updatedAt"] >= entry["updatedAt"]
    assert remote_data(sandbox) == {entry["id"]: updated["data"]}
    assert api.get(path).json() == updated


def test_put_one_entry_errors_change_nothing(api: Api, sandbox: SandboxServer) -> None:
    entry = commit(api, 1, [{"data": {"n": 1}}]).json()["entries"][0]
    path = f"v1/data-sources/1/data/{entry['id']}"
    cases: list[tuple[Api, str, Any, int]] = [
        (api, path, ["not", "an", "object"], 400),
        (api, path, b"{broken", 400),
        (api, "v1/data-sources/1/data/999999", {"n": 2}, 404),
        (api, f"v1/data-sources/999/data/{entry['id']}", {"n": 2}, 404),
        (Api(sandbox, NO_ACCESS_TOKEN), path, {"n": 2}, 403),
        (Api(sandbox, None), path, {"n": 2}, 401),
    ]
    for client, url, body, status in cases:
        sent = client.put(url, data=body, headers={"Content-Type": "application/json"}) if isinstance(body, bytes) \
            else client.put(url, json=body)
        assert sent.status_code == status, (url, body)
        assert sent.json()["message"]
    assert remote_data(sandbox) == {entry["id"]: {"n": 1}}


def test_delete_one_entry(api: Api, sandbox: SandboxServer) -> None:
    kept, gone = commit(api, 1, [{"data": {"n": 1}}, {"data": {"n": 2}}]).json()["entries"]
    path = f"v1/data-sources/1/data/{gone['id']}"
    assert Api(sandbox, NO_ACCESS_TOKEN).delete(path).status_code == 403
    assert Api(sandbox, None).delete(path).status_code == 401
    assert api.delete(f"v1/data-sources/2/data/{gone['id']}").status_code == 404  # not that source's entry
    assert sorted(remote_data(sandbox)) == [kept["id"], gone["id"]]
    reply = api.delete(path)
    assert reply.status_code == 200 and reply.json()["id"] == gone["id"]
    assert remote_data(sandbox) == {kept["id"]: {"n": 1}}
    again = api.delete(path)
    assert again.status_code == 404 and f"Entry {gone['id']}" in again.json()["message"]
    assert api.get(path).status_code == 404


def test_put_data_inserts_one_entry_and_post_data_imports(api: Api, sandbox: SandboxServer) -> None:
    """``PUT .../data`` adds one entry (201, as Fliplet documents it); ``POST .../data`` is Fliplet's
    bulk import: ``append: true`` (body or query string) adds, without it the data source is replaced."""
    one = api.put("v1/data-sources/1/data", json={"email": "a@example.org"})
    assert one.status_code == 201 and one.json()["data"] == {"email": "a@example.org"}
    added = api.post("v1/data-sources/1/data", json={"append": True, "entries": [{"n": 1}, {"n": 2}]})
    assert added.status_code == 200 and [e["data"] for e in added.json()["entries"]] == [{"n": 1}, {"n": 2}]
    assert api.post("v1/data-sources/1/data?append=true", json={"entries": [{"n": 3}]}).status_code == 200
    assert sorted(map(str, remote_data(sandbox).values())) == sorted(
        map(str, [{"email": "a@example.org"}, {"n": 1}, {"n": 2}, {"n": 3}]))
    for bad in ({"entries": [1, 2]}, {"entries": {"n": 1}}, [{"n": 1}]):
        refused = api.post("v1/data-sources/1/data", json=bad)
        assert refused.status_code == 400 and refused.json()["message"]
    assert len(remote_data(sandbox)) == 4  # a refused import changes nothing, even without append
    assert Api(sandbox, NO_ACCESS_TOKEN).post("v1/data-sources/1/data", json={"entries": []}).status_code == 403
    assert len(remote_data(sandbox)) == 4
    replaced = api.post("v1/data-sources/1/data", json={"entries": [{"n": "only"}]})
    assert replaced.status_code == 200
    assert list(remote_data(sandbox).values()) == [{"n": "only"}]


def test_single_entry_changes_survive_a_restart(tmp_path: Path) -> None:
    data_file = tmp_path / "entries.json"
    with SandboxServer(data_file=str(data_file)) as first:
        api = Api(first)
        a, b, c = commit(api, 1, [{"data": {"n": i}} for i in range(3)]).json()["entries"]
        assert api.put(f"v1/data-sources/1/data/{a['id']}", json={"syncedAt": 1}).status_code == 200
        assert api.delete(f"v1/data-sources/1/data/{b['id']}").status_code == 200
        added = api.put("v1/data-sources/1/data", json={"n": "new"}).json()
    with SandboxServer(data_file=str(data_file)) as second:
        assert remote_data(second) == {a["id"]: {"n": 0, "syncedAt": 1}, c["id"]: {"n": 2}, added["id"]: {"n": "new"}}


def test_the_pull_example_write_back_works_through_the_cli(sandbox: SandboxServer, tmp_path: Path) -> None:
    """The original's documented pull example, in Python: pull the entries whose ``syncedAt`` is
    empty, insert them into the database, then mark each one synced with ``agent.api.request(url=
    "v1/data-sources/<id>/data/<entry id>", method="PUT", data={"syncedAt": ...})``. Run twice through
    ``fliplet-agent start``: the second run finds nothing left to pull."""
    import sqlite3
    import textwrap

    from fliplet_workers.cli import main

    ds = sandbox.store.create_data_source("contacts")
    sandbox.store.commit(DEMO_TOKEN, ds, {"append": True, "entries": [
        {"data": {"First name": "Ann", "Last name": "Lee", "Company": "Acme", "syncedAt": ""}},
        {"data": {"First name": "Bob", "Last name": "Ray", "Company": "Initech", "syncedAt": ""}},
        {"data": {"First name": "Cid", "Last name": "Old", "Company": "Done", "syncedAt": 1600000000000}}]})
    db = tmp_path / "local.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE MyTable (FirstName TEXT, LastName TEXT, Company TEXT)")
    config = tmp_path / "pull.py"
    config.write_text(textwrap.dedent(f"""
        import time

        config = {{"authToken": "{DEMO_TOKEN}", "baseURL": "{sandbox.url}",
                   "database": {{"dialect": "sqlite", "storage": "local.db"}}}}

        def setup(agent):
            def action(entries, db):
                for entry in entries:
                    db.query("INSERT INTO MyTable (FirstName, LastName, Company) VALUES (:first, :last, :company)",
                             {{"first": entry["data"]["First name"], "last": entry["data"]["Last name"],
                               "company": entry["data"]["Company"]}})
                # You can also write data back to Fliplet APIs, e.g. confirm you have synced these entries
                for entry in entries:
                    agent.api.request(url=f"v1/data-sources/{ds}/data/{{entry['id']}}", method="PUT",
                                      data={{"syncedAt": int(time.time() * 1000)}})

            agent.pull({{"description": "Pulls new contacts", "targetDataSourceId": {ds},
                         "where": {{"syncedAt": ""}}, "action": action}})
    """))
    before = time.time() * 1000
    assert main(["start", str(config)]) == 0
    entries = {e["data"]["First name"]: e["data"] for e in sandbox.store.entries(ds)}
    assert {name: data["syncedAt"] >= before for name, data in entries.items()} == {
        "Ann": True, "Bob": True, "Cid": False}
    assert entries["Ann"] == {"First name": "Ann", "Last name": "Lee", "Company": "Acme",
                              "syncedAt": entries["Ann"]["syncedAt"]}  # merged: the other columns kept
    assert main(["start", str(config)]) == 0  # nothing left to pull
    with sqlite3.connect(db) as conn:
        assert sorted(conn.execute("SELECT * FROM MyTable").fetchall()) == [
            ("Ann", "Lee", "Acme"), ("Bob", "Ray", "Initech")]


# ------------------------------------------------------------------------------ desktop safety


def own_origin(sandbox: SandboxServer) -> str:
    return sandbox.url.rstrip("/")


def login(sandbox: SandboxServer, token: str) -> requests.Session:
    """A browser-like session logged in through the page's form (its own Origin, like a browser)."""
    browser = requests.Session()
    reply = browser.post(sandbox.url + "_sandbox/login", data={"token": token}, allow_redirects=False,
                         headers={"Origin": own_origin(sandbox)}, timeout=10)
    assert reply.status_code == 303 and reply.headers["Location"] == "/"
    return browser


def test_the_page_without_a_token_shows_the_login_form_and_no_data(api: Api, sandbox: SandboxServer) -> None:
    commit(api, 1, [{"data": {"Email": "secret-person@example.com"}}])
    for headers in ({}, {"Auth-token": "eu--wrong"}, {"Cookie": f"{sandbox.app.access.cookie_name}=forged"}):
        reply = requests.get(sandbox.url, headers=headers, timeout=10)
        assert reply.status_code == 401, headers
        assert reply.headers["Content-Type"].startswith("text/html")
        assert '<form method="post" action="/_sandbox/login">' in reply.text
        for secret in ("secret-person", "Users", "Demo", DEMO_TOKEN):
            assert secret not in reply.text
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]


def test_login_sets_a_strict_httponly_cookie_and_shows_only_readable_sources(api: Api,
                                                                            sandbox: SandboxServer) -> None:
    commit(api, 1, [{"data": {"Email": "in-users@example.com"}}])
    commit(api, 2, [{"data": {"Email": "in-demo@example.com"}}])
    sandbox.store.add_token("eu--demo-only", "demo-only@example.com", [2])

    reply = requests.post(sandbox.url + "_sandbox/login", data={"token": "eu--demo-only"}, allow_redirects=False,
                          timeout=10)
    cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith(sandbox.app.access.cookie_name + "=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "eu--demo-only" not in cookie  # a random session id, not the token

    browser = login(sandbox, "eu--demo-only")
    page = browser.get(sandbox.url, timeout=10)
    assert page.status_code == 200
    assert '<a href="/#/ds/2">Demo</a>' in page.text and '<a href="/#/ds/1">' not in page.text
    assert "demo-only@example.com" in page.text and "Log out" in page.text
    entries = browser.get(sandbox.url + "_console/api/data-sources/2/entries", timeout=10).json()["entries"]
    assert [e["data"]["Email"] for e in entries] == ["in-demo@example.com"]
    assert browser.get(sandbox.url + "_console/api/data-sources/1/entries", timeout=10).status_code == 403

    with_header = requests.get(sandbox.url, headers=sandbox.headers, timeout=10).text
    assert '<a href="/#/ds/1">Users</a>' in with_header and '<a href="/#/ds/2">Demo</a>' in with_header
    assert "Log out" not in with_header  # no session to end
    nothing = requests.get(sandbox.url, headers={"Auth-token": NO_ACCESS_TOKEN}, timeout=10)
    assert nothing.status_code == 200 and "may read no data source" in nothing.text and "/#/ds/" not in nothing.text

    name = sandbox.app.access.cookie_name
    session = browser.cookies[name]
    out = browser.post(sandbox.url + "_sandbox/logout", headers={"Origin": own_origin(sandbox)},
                       allow_redirects=False, timeout=10)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["Set-Cookie"]
    # the session is over on the server too: replaying its cookie gets the login form again
    assert requests.get(sandbox.url, cookies={name: session}, timeout=10).status_code == 401
    other = cookie.split(";")[0].split("=", 1)[1]  # the first login's session is still open
    assert requests.get(sandbox.url, cookies={name: other}, timeout=10).status_code == 200


def test_a_wrong_token_at_the_login_form_opens_no_session(sandbox: SandboxServer) -> None:
    for form in ({"token": "eu--wrong"}, {"token": ""}, {}):
        reply = requests.post(sandbox.url + "_sandbox/login", data=form, allow_redirects=False, timeout=10)
        assert reply.status_code == 401 and "Set-Cookie" not in reply.headers
        assert "not valid" in reply.text and '<form method="post"' in reply.text


def test_sandbox_endpoints_need_the_sandbox_token(sandbox: SandboxServer) -> None:
    calls = [("GET", "_sandbox/state", None), ("GET", "_sandbox/faults", None),
             ("POST", "_sandbox/faults", {"commit": ["error"]}), ("POST", "_sandbox/reset", None),
             ("POST", "_sandbox/data-sources", {"name": "Sneaky"}),
             ("POST", "_sandbox/tokens", {"token": "eu--sneaky", "dataSourceIds": [1, 2]}),
             ("GET", "_sandbox/data-sources/1/commits", None)]
    sandbox.store.add_token("eu--demo-only", "demo-only@example.com", [2])
    refused = [(None, 401), ("eu--wrong", 401), (NO_ACCESS_TOKEN, 403), ("eu--demo-only", 403)]
    for method, path, body in calls:
        for token, status in refused:
            reply = requests.request(method, sandbox.url + path, json=body, timeout=10,
                                     headers={"Auth-token": token} if token else {})
            assert reply.status_code == status, (method, path, token)
            assert reply.json()["message"]
        cookie = login(sandbox, "eu--demo-only")
        assert cookie.request(method, sandbox.url + path, json=body, timeout=10).status_code == 403
    assert sandbox.store.user_for_token("eu--sneaky") is None
    assert [d["name"] for d in sandbox.store.state()["dataSources"]] == ["Users", "Demo"]
    assert sandbox.faults.describe()["commit"] == []
    # the sandbox's own token works from the header and from a session cookie
    admin = login(sandbox, DEMO_TOKEN)
    assert admin.get(sandbox.url + "_sandbox/state", timeout=10).status_code == 200
    assert requests.get(sandbox.url + "_sandbox/faults", headers=sandbox.headers, timeout=10).status_code == 200


def test_a_foreign_origin_is_refused_even_with_the_token(sandbox: SandboxServer) -> None:
    """The issue's attack: a web page posts plain text (no CORS preflight) to the sandbox."""
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://" + sandbox.url[len("http://"):-1]):
        headers = {"Origin": origin, "Content-Type": "text/plain", **sandbox.headers}
        grab = requests.post(sandbox.url + "_sandbox/tokens", headers=headers, timeout=10,
                             data=json.dumps({"token": "eu--evil", "dataSourceIds": [1, 2]}))
        assert grab.status_code == 403 and "Origin" in grab.json()["message"], origin
        write = requests.post(sandbox.url + "v1/data-sources/1/commit", headers=headers, timeout=10,
                              data=json.dumps({"append": True, "entries": [{"data": {"evil": 1}}]}))
        assert write.status_code == 403
        assert requests.get(sandbox.url, headers=headers, timeout=10).status_code == 403
        assert requests.post(sandbox.url + "_sandbox/login", data={"token": DEMO_TOKEN}, timeout=10,
                             headers={"Origin": origin}, allow_redirects=False).status_code == 403
    assert sandbox.store.user_for_token("eu--evil") is None
    assert sandbox.store.entries(1) == []
    port = sandbox.url.rstrip("/").rsplit(":", 1)[1]
    for own in (own_origin(sandbox), f"http://localhost:{port}", f"HTTP://LOCALHOST:{port}"):
        ok = requests.get(sandbox.url + "v1/user", headers={"Origin": own, **sandbox.headers}, timeout=10)
        assert ok.status_code == 200, own


def test_a_foreign_host_is_refused(sandbox: SandboxServer) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1 after the page loaded; the browser then sends
    ``Host: evil.example:<port>``."""
    port = sandbox.url.rstrip("/").rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{int(port) + 1}", "127.0.0.1", "",
                 f"127.0.0.1.nip.io:{port}"):
        for path in ("", "v1/user", "_sandbox/state", "v1/data-sources/1/data"):
            reply = requests.get(sandbox.url + path, headers={"Host": host, **sandbox.headers}, timeout=10)
            assert reply.status_code == 403, (host, path)
            assert "Host" in reply.json()["message"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        assert requests.get(sandbox.url + "v1/user", headers={"Host": host, **sandbox.headers},
                            timeout=10).status_code == 200, host


def test_uploaded_files_are_downloads_that_need_a_token(api: Api, sandbox: SandboxServer) -> None:
    """An uploaded ``.html`` never renders as a page of the sandbox's origin (which holds the cookie)."""
    html_bytes = b"<html><script>fetch('/_sandbox/state')</script></html>"
    uploaded = api.post("v1/media/files?name=report%22%0D%0AX-Evil:%201.html&organizationId=1",
                        files={"files": ("report.html", html_bytes, "text/html")}, data={"checksum": "x"}).json()
    url = uploaded["files"][0]["url"]
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401 and html_bytes not in anonymous.content
    for client, headers in ((requests.Session(), sandbox.headers), (login(sandbox, DEMO_TOKEN), {})):
        reply = client.get(url, headers=headers, timeout=10)
        assert reply.status_code == 200 and reply.content == html_bytes, reply.text
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        disposition = reply.headers["Content-Disposition"]
        assert disposition.startswith("attachment;") and "filename*=UTF-8''report%22%0D%0AX-Evil%3A%201.html" in disposition
        assert "X-Evil" not in reply.headers  # the name cannot inject a header
        assert "sandbox" in reply.headers["Content-Security-Policy"]


def test_access_rules_for_the_listening_address() -> None:
    """The pure part of the Host rule: which names each binding accepts."""
    from fliplet_workers.sandbox.server import Access, Request

    def host_ok(access: Access, host: str) -> bool:
        request = Request("GET", "", {}, {"host": host}, b"", "http://x/")
        return access.refusal(request) is None

    loopback = Access()
    loopback.bind("127.0.0.1", 8765)
    assert [host_ok(loopback, h) for h in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "192.168.1.5:8765",
                                            "localhost")] == [True, True, True, False, False]
    lan = Access()
    lan.bind("192.168.1.5", 8765)
    assert host_ok(lan, "192.168.1.5:8765") and host_ok(lan, "localhost:8765") and not host_ok(lan, "evil:8765")
    v6 = Access()
    v6.bind("::1", 80)
    assert host_ok(v6, "[::1]") and host_ok(v6, "[::1]:80") and not host_ok(v6, "::1")
    assert loopback.cookie_name == "fliplet_sandbox_8765"


def test_a_session_ends_when_its_token_is_gone(sandbox: SandboxServer) -> None:
    sandbox.store.add_token("eu--temporary", "temp@example.com", [2])
    browser = login(sandbox, "eu--temporary")
    assert browser.get(sandbox.url, timeout=10).status_code == 200
    assert requests.post(sandbox.url + "_sandbox/reset", headers=sandbox.headers, timeout=10).status_code == 200
    assert browser.get(sandbox.url, timeout=10).status_code == 401  # the reset forgot that token
