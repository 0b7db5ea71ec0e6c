"""The sandbox server, exercised over real HTTP on 127.0.0.1 (a free port per test)."""

from __future__ import annotations

import hashlib
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
    download = requests.get(uploaded["url"], timeout=10)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["Content-Type"] == "image/jpeg"
    assert requests.get(sandbox.url + f"media/files/{uploaded['id']}/other.jpg", timeout=10).status_code == 404


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
    created = requests.post(sandbox.url + "_sandbox/data-sources", json={"name": "Extra"}, timeout=10).json()
    assert commit(api, created["id"], [{"data": {"x": 1}}, {"data": {"x": 2}}]).status_code == 200
    state = requests.get(sandbox.url + "_sandbox/state", timeout=10).json()
    extra = next(d for d in state["dataSources"] if d["id"] == created["id"])
    assert (extra["name"], extra["entries"], extra["commits"], extra["appliedCommits"]) == ("Extra", 2, 1, 1)
    assert requests.post(sandbox.url + "_sandbox/reset", timeout=10).json() == {"ok": True}
    names = [d["name"] for d in requests.get(sandbox.url + "_sandbox/state", timeout=10).json()["dataSources"]]
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
        got = requests.get(second.url + f"media/files/{file_id}/a.bin", timeout=10)
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


def test_html_page_lists_entries_escaped(api: Api, sandbox: SandboxServer) -> None:
    commit(api, 1, [{"data": {"Email": "a@example.com", "Note": "<script>x</script>"}},
                    {"data": {"Email": "b@example.com", "Extra": 5}}])
    reply = requests.get(sandbox.url, timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/html")
    page = reply.text
    for text in ("Users", "Demo", "a@example.com", "b@example.com", "<th>Extra</th>", "2 entries"):
        assert text in page
    assert "<script>" not in page and "&lt;script&gt;" in page


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
