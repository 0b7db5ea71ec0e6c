"""File syncing: readers, naming, the streamed upload, and end-to-end runs against the sandbox.

The end-to-end tests run the real thing: a YAML config written to a temporary folder, a sqlite source
table, ``run_config`` against a fresh sandbox, files served by a local HTTP server on 127.0.0.1 (and a
SharePoint stand-in speaking Basic or NTLM), then the sandbox's entries and media are checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from files_support import FileServer, FilesWorld, make_files_world

from fliplet_workers.config.model import FileColumn, Operation
from fliplet_workers.core.batches import Batch
from fliplet_workers.errors import FileFetchError
from fliplet_workers.fliplet.media import FOLDER_NAME, MultipartBody
from fliplet_workers.pipeline.steps.fetch import remote_name, resolve_local
from fliplet_workers.pipeline.steps.files import (
    FileJob,
    FileResult,
    apply_file_results,
    file_jobs,
    shown_location,
    upload_name,
)
from fliplet_workers.redaction import Secret
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer
from fliplet_workers.sandbox.server import parse_multipart

# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


def world(sandbox: SandboxServer, tmp_path: Path, *columns: str) -> FilesWorld:
    return make_files_world(sandbox, tmp_path, ("name", *columns))


def fetch_url(url: str) -> bytes:
    """An uploaded file from the sandbox (which serves files only with a token)."""
    response = requests.get(url, headers={"Auth-token": DEMO_TOKEN}, timeout=5)
    response.raise_for_status()
    return response.content


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "content_type", "name"), [
    ("https://example.org/John", "image/jpeg", "John.jpg"),
    ("https://example.org/John.jpg", "image/jpeg", "John.jpg"),  # not John.jpg.jpg
    ("https://example.org/John.jpeg", "image/jpeg; charset=binary", "John.jpeg"),
    ("https://example.org/img.php?id=3", "image/png", "img.php.png"),
    ("https://example.org/a/b/report", "application/pdf", "report.pdf"),
    ("https://example.org/blob", "application/octet-stream", "blob"),
    ("https://example.org/blob", None, "blob"),
    ("https://example.org/", "image/png", "file.png"),
    ("https://example.org/My%20Photo", "image/png", "My Photo.png"),
    ("https://example.org/a%2Fb.png", "image/png", "a_b.png"),
])
def test_remote_name_adds_the_content_types_extension_once(url: str, content_type: str | None, name: str) -> None:
    assert remote_name(url, content_type) == name


def test_upload_name_prefixes_the_primary_key() -> None:
    assert upload_name("John.jpg", 12) == "12-John.jpg"
    assert upload_name("John.jpg", "a/b") == "a_b-John.jpg"
    assert upload_name("John.jpg", None) == "John.jpg"


def test_local_paths_stay_inside_the_directory(tmp_path: Path) -> None:
    spec = FileColumn(column="pic", type="local", directory=str(tmp_path))
    assert resolve_local(spec, "a.jpg") == str(tmp_path / "a.jpg")
    assert resolve_local(spec, "sub/../b.jpg") == str(tmp_path / "b.jpg")
    for bad in ("../secret.txt", "sub/../../secret.txt", "/etc/passwd"):
        with pytest.raises(FileFetchError):
            resolve_local(spec, bad)
    absolute = FileColumn(column="pic", type="local")
    assert resolve_local(absolute, str(tmp_path / "x.jpg")) == str(tmp_path / "x.jpg")
    with pytest.raises(FileFetchError, match="not an absolute path"):
        resolve_local(absolute, "relative.jpg")


def test_shown_location_hides_credentials_and_query_values() -> None:
    shown = shown_location("https://user:pw@files.example.org:8443/a/b.jpg?sig=SECRETSIG&v=1")
    assert shown == "https://files.example.org:8443/a/b.jpg?sig=***&v=***"
    assert shown_location("/srv/files/a.jpg") == "/srv/files/a.jpg"


def test_multipart_body_streams_what_a_multipart_parser_reads_back() -> None:
    payload = os.urandom(300_000)
    body = MultipartBody([("checksum", "abc")], "files", "Zoë \"x\".png", "image/png", io.BytesIO(payload),
                         len(payload))
    chunks = []
    while chunk := body.read(7_001):
        chunks.append(chunk)
    raw = b"".join(chunks)
    assert len(raw) == len(body)
    fields = parse_multipart(body.content_type, raw)
    assert fields["checksum"][2] == b"abc"
    filename, content_type, content = fields["files"]
    assert content == payload and content_type == "image/png"
    assert filename == "Zo? %22x%22.png"  # the ASCII fallback, quotes escaped as browsers do
    assert b"filename*=UTF-8''Zo%C3%AB%20%22x%22.png" in raw  # RFC 5987: the real name
    body.rewind()
    assert body.read() == raw


def test_jobs_and_results_are_json_and_apply_without_touching_the_plan() -> None:
    op = Operation(type="push", datasource_id=1, primary_column="id",
                   files=(FileColumn(column="pic", type="remote", headers={"Authorization": Secret("Bearer t0p")}),
                          FileColumn(column="doc", type="local")))
    shared = [{"id": 1, "pic": "http://h/1.png", "doc": "/d/1.pdf", "name": "a"},
              {"id": 2, "pic": None, "doc": "", "name": "b"},
              {"id": 3, "pic": "http://h/3.png", "name": "c"}]
    batch = Batch(number=1, entries=[{"id": 10, "data": shared[0]}, {"data": shared[1]}, {"data": shared[2]}],
                  insert_keys=[2, 3])
    jobs = file_jobs(batch, op)
    assert [(j.entry, j.column, j.key) for j in jobs] == [(0, "pic", 1), (0, "doc", 1), (2, "pic", 3)]
    assert "t0p" not in json.dumps([j.to_dict() for j in jobs])  # headers stay in the config
    assert [FileJob.from_dict(json.loads(json.dumps(j.to_dict()))) for j in jobs] == jobs
    results = [FileResult(url="https://f/1.png", id=7, name="1-1.png", uploaded=True),
               FileResult(error="no such file", stage="fetch"),
               FileResult(error="HTTP 404 Not Found", stage="fetch")]
    assert [FileResult.from_dict(json.loads(json.dumps(r.to_dict()))) for r in results] == results

    logged: list[str] = []

    class Log:
        def error(self, msg: str) -> None:
            logged.append(msg)

    out = apply_file_results(batch, jobs, results, Log())
    assert out.entries[0] == {"id": 10, "data": {"id": 1, "pic": "https://f/1.png", "picMediaFileId": 7,
                                                 "name": "a"}}
    assert out.entries[1] is batch.entries[1]
    assert out.entries[2]["data"] == {"id": 3, "name": "c"}
    assert out.insert_keys == [2, 3]
    assert shared[0]["pic"] == "http://h/1.png" and "doc" in shared[0]  # the plan's rows are untouched
    assert logged == ["Unable to fetch file for row 1 (doc: /d/1.pdf): no such file",
                      "Unable to fetch file for row 3 (pic: http://h/3.png): HTTP 404 Not Found"]


# ---------------------------------------------------------------------------------------------
# End to end against the sandbox
# ---------------------------------------------------------------------------------------------


def test_remote_files_are_uploaded_named_and_linked(sandbox: SandboxServer, files: FileServer,
                                                    tmp_path: Path) -> None:
    jpg, png, txt = b"\xff\xd8jpeg" * 1000, b"\x89PNG" * 2000, b"hello"
    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.add("/John.jpg", jpg, "image/jpeg")},
             {"id": 2, "name": "b", "pic": files.add("/avatar", png, "image/png")},
             {"id": 3, "name": "c", "pic": files.add("/notes", txt, "text/plain; charset=utf-8")},
             {"id": 4, "name": "d", "pic": None})
    summary = w.run(files=[{"column": "pic", "type": "remote"}])
    assert summary.ok and summary.inserted == 4
    rows = w.entries()
    for key, content, name in ((1, jpg, "1-John.jpg"), (2, png, "2-avatar.png"), (3, txt, "3-notes.txt")):
        assert rows[key]["pic"].startswith(sandbox.url) and rows[key]["pic"].endswith("/" + name)
        assert isinstance(rows[key]["picMediaFileId"], int)
        assert fetch_url(rows[key]["pic"]) == content
    assert rows[4]["pic"] is None and "picMediaFileId" not in rows[4]
    assert w.media_files() == 3
    org_media = requests.get(sandbox.url + "v1/media", params={"organizationId": 1},
                             headers={"Auth-token": w.options["auth_token"]}, timeout=5).json()
    assert [f["name"] for f in org_media["folders"]] == [FOLDER_NAME]

    # A second run with unchanged rows reads nothing, uploads nothing, commits nothing.
    commits, fetched = w.commits(), sum(files.requests.values())
    summary = w.run(files=[{"column": "pic", "type": "remote"}])
    assert summary.ok and summary.inserted == summary.updated == 0 and summary.unchanged == 4
    assert (w.commits(), sum(files.requests.values()), w.media_files()) == (commits, fetched, 3)


def test_an_updated_row_reuses_the_uploaded_file_by_md5(sandbox: SandboxServer, files: FileServer,
                                                        tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic")
    same = os.urandom(5000)
    w.insert({"id": 1, "name": "a", "pic": files.add("/one.bin", same)},
             {"id": 2, "name": "b", "pic": files.add("/two.bin", same)})  # same bytes, other row
    options = {"files": [{"column": "pic", "type": "remote"}]}
    assert w.run(**options).inserted == 2
    assert w.media_files() == 1
    first = w.entries()
    assert first[1]["picMediaFileId"] == first[2]["picMediaFileId"]

    w.upsert([{"id": 1, "name": "a2", "pic": files.url + "one.bin"}])  # changed row, same file
    summary = w.run(**options)
    assert summary.updated == 1
    assert w.media_files() == 1  # fetched again, but not uploaded again
    assert w.entries()[1]["name"] == "a2" and w.entries()[1]["pic"] == first[1]["pic"]


def test_local_files_absolute_and_in_a_directory(sandbox: SandboxServer, tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "sub").mkdir(parents=True)
    (share / "sub" / "cv.pdf").write_bytes(b"%PDF cv")
    (tmp_path / "secret.txt").write_text("top secret")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG photo")
    w = world(sandbox, tmp_path, "photo", "resume")
    w.insert({"id": 1, "name": "a", "photo": str(photo), "resume": "sub/cv.pdf"},
             {"id": 2, "name": "b", "photo": str(tmp_path / "nope.png"), "resume": "../secret.txt"})
    summary = w.run(files=[{"column": "photo", "type": "local"},
                           {"column": "resume", "type": "local", "directory": str(share)}])
    assert summary.ok and summary.inserted == 2
    rows = w.entries()
    assert rows[1]["photo"].endswith("/1-photo.png") and fetch_url(rows[1]["photo"]) == b"\x89PNG photo"
    assert rows[1]["resume"].endswith("/1-cv.pdf") and fetch_url(rows[1]["resume"]) == b"%PDF cv"
    assert rows[2] == {"id": 2, "name": "b"}  # both files failed: only their columns are missing
    errors = w.errors()
    assert f"Unable to fetch file for row 2 (photo: {tmp_path / 'nope.png'}): no such file" in errors
    assert any(e.startswith("Unable to fetch file for row 2 (resume: ../secret.txt):") and "outside" in e
               for e in errors)
    assert w.media_files() == 2


def test_failed_reads_drop_only_their_column(sandbox: SandboxServer, files: FileServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic", "doc")
    good = files.add("/good.png", b"\x89PNG good", "image/png")
    w.insert({"id": 1, "name": "missing", "pic": files.url + "missing.png", "doc": good},
             {"id": 2, "name": "slow", "pic": files.add("/slow.png", b"late", "image/png", delay=3), "doc": good},
             {"id": 3, "name": "nohost", "pic": "http://127.0.0.1:9/x.png", "doc": good},
             {"id": 4, "name": "bad url", "pic": "ftp://example.org/x.png", "doc": good})
    summary = w.run(timeout=1, files=[{"column": "pic", "type": "remote"}, {"column": "doc", "type": "remote"}])
    assert summary.ok and summary.inserted == 4
    rows = w.entries()
    for key in (1, 2, 3, 4):
        assert "pic" not in rows[key] and "picMediaFileId" not in rows[key]
        assert rows[key]["doc"] == rows[1]["doc"]  # the same bytes: uploaded once, for row 1
    assert rows[1]["doc"].endswith("/1-good.png")
    errors = w.errors()
    assert f"Unable to fetch file for row 1 (pic: {files.url}missing.png): HTTP 404 Not Found" in errors
    assert f"Unable to fetch file for row 2 (pic: {files.url}slow.png): no answer within 1 seconds" in errors
    assert any(e.startswith("Unable to fetch file for row 3 (pic: http://127.0.0.1:9/x.png): connection failed")
               for e in errors)
    assert "Unable to fetch file for row 4 (pic: ftp://example.org/x.png): not an http:// or https:// URL" in errors


def test_merge_keeps_the_remote_file_when_the_new_one_cannot_be_read(sandbox: SandboxServer, files: FileServer,
                                                                    tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.add("/a.png", b"\x89PNG a", "image/png")})
    options = {"merge": True, "files": [{"column": "pic", "type": "remote"}]}
    w.run(**options)
    before = w.entries()[1]
    w.upsert([{"id": 1, "name": "a2", "pic": files.url + "missing-now.png"}])
    assert w.run(**options).updated == 1
    after = w.entries()[1]
    assert after["name"] == "a2"
    assert (after["pic"], after["picMediaFileId"]) == (before["pic"], before["picMediaFileId"])


def test_headers_are_sent_and_never_logged(sandbox: SandboxServer, files: FileServer, tmp_path: Path) -> None:
    token = "Bearer s3cr3t-header-value"
    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.add("/private.png", b"\x89PNG p", "image/png",
                                                      headers={"Authorization": token})},
             {"id": 2, "name": "b", "pic": files.url + "missing.png"})
    w.run(files=[{"column": "pic", "type": "remote", "headers": {"Authorization": token, "X-Foo": "bar"}}])
    assert fetch_url(w.entries()[1]["pic"]) == b"\x89PNG p"
    assert any(h.get("X-Foo") == "bar" for h in files.seen_headers)
    assert "s3cr3t" not in w.all_log()


def test_concurrency_bounds_parallel_downloads(sandbox: SandboxServer, files: FileServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic")
    w.insert(*({"id": i, "name": str(i), "pic": files.add(f"/f{i}.bin", os.urandom(100), delay=0.15)}
               for i in range(1, 11)))
    summary = w.run(concurrency=3, batch_size=4, files=[{"column": "pic", "type": "remote"}])
    assert summary.ok and summary.inserted == 10 and w.media_files() == 10
    assert 2 <= files.max_in_flight <= 3  # parallel, and never more than `concurrency` at once


def test_dry_run_reads_and_uploads_nothing(sandbox: SandboxServer, files: FileServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic")
    location = files.add("/a.png", b"\x89PNG", "image/png")
    w.insert({"id": 1, "name": "a", "pic": location})
    summary = w.run(dry_run=True, files=[{"column": "pic", "type": "remote"}])
    assert summary.dry_run and summary.inserted == 1
    assert (w.media_files(), w.commits(), sum(files.requests.values())) == (0, 0, 0)
    assert sandbox.store.state()["media"]["folders"] == 0  # the folder is not created either


def test_code_config_files(sandbox: SandboxServer, files: FileServer, tmp_path: Path) -> None:
    from fliplet_workers.config import load_config
    from fliplet_workers.pipeline.agent import run_config

    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.add("/code.png", b"\x89PNG code", "image/png")})
    path = tmp_path / "files_config.py"
    path.write_text(
        f"config = {{'authToken': 'eu--sandbox-token', 'baseURL': {sandbox.url!r},\n"
        f"          'database': {{'dialect': 'sqlite', 'storage': {str(w.db_path)!r}}}}}\n\n"
        "def setup(agent):\n"
        f"    agent.push({{'targetDataSourceId': {w.ds}, 'sourceQuery': 'SELECT * FROM items',\n"
        "                'primaryColumnName': 'id', 'files': [{'column': 'pic', 'type': 'remote'}]})\n")
    summary = run_config(load_config(path), log=w.log)[0]
    assert summary.inserted == 1
    assert fetch_url(w.entries()[1]["pic"]) == b"\x89PNG code"


def test_a_failed_upload_is_logged_and_the_row_still_lands(sandbox: SandboxServer, files: FileServer,
                                                           tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.add("/a.png", b"\x89PNG", "image/png")})
    sandbox.faults.configure({"upload": ["error", "error", "error"]})  # beyond the upload retries
    summary = w.run(files=[{"column": "pic", "type": "remote"}])
    assert summary.inserted == 1 and w.entries()[1] == {"id": 1, "name": "a"}
    assert any(e.startswith(f"Unable to upload file for row 1 (pic: {files.url}a.png): Sandbox injected failure")
               for e in w.errors())


def test_an_upload_whose_answer_is_lost_is_not_duplicated(sandbox: SandboxServer, files: FileServer,
                                                          tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.add("/a.png", b"\x89PNG lost", "image/png")})
    sandbox.faults.configure({"upload": ["drop-after-apply"]})
    summary = w.run(files=[{"column": "pic", "type": "remote"}])
    assert summary.inserted == 1
    assert w.media_files() == 1 and fetch_url(w.entries()[1]["pic"]) == b"\x89PNG lost"


# ---------------------------------------------------------------------------------------------
# SharePoint against a local stand-in
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["basic", "ntlm"])
def test_sharepoint_files_with_credentials(sandbox: SandboxServer, tmp_path: Path, scheme: str) -> None:
    user = "CORP\\bob" if scheme == "ntlm" else "bob"
    with FileServer(auth=scheme, username="bob", password="Sh@reP0int!") as sp:
        doc = sp.add("/sites/hr/Shared%20Documents/Résumé.pdf", b"%PDF sp", "application/pdf")
        pic = sp.add("/sites/hr/Pictures/face", b"\xff\xd8 face", "application/octet-stream")
        w = world(sandbox, tmp_path, "doc", "pic")
        w.insert({"id": 1, "name": "a", "doc": doc, "pic": pic})
        common = {"type": "sharepoint", "username": user, "password": "Sh@reP0int!"}
        summary = w.run(files=[{"column": "doc", "fileType": "inherit", **common}, {"column": "pic", **common}])
        assert summary.ok and summary.inserted == 1
        row = w.entries()[1]
        assert row["doc"].endswith("/1-R%C3%A9sum%C3%A9.pdf") and fetch_url(row["doc"]) == b"%PDF sp"
        assert row["pic"].endswith("/1-file.jpg") and fetch_url(row["pic"]) == b"\xff\xd8 face"
        assert sum(sp.authorized.values()) == 2
        assert "Sh@reP0int!" not in w.all_log()

        # A wrong password: the file is refused, its column dropped, the row still synced.
        w.upsert([{"id": 1, "name": "changed", "doc": doc, "pic": pic}])
        summary = w.run(files=[{"column": "doc", "type": "sharepoint", "username": user, "password": "wrong"}])
        assert summary.updated == 1
        assert w.entries()[1]["name"] == "changed"
        assert any("Unable to fetch file for row 1 (doc:" in e and "HTTP 401" in e and "refused" in e
                   for e in w.errors())


def test_sharepoint_never_sends_credentials_unasked(sandbox: SandboxServer, files: FileServer,
                                                    tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "doc")
    w.insert({"id": 1, "name": "a", "doc": files.add("/open.pdf", b"%PDF open", "application/pdf")})
    w.run(files=[{"column": "doc", "type": "sharepoint", "fileType": "inherit", "username": "u", "password": "p4ss"}])
    assert fetch_url(w.entries()[1]["doc"]) == b"%PDF open"
    assert all("Authorization" not in h for h in files.seen_headers)


def test_large_file_is_streamed(sandbox: SandboxServer, files: FileServer, tmp_path: Path) -> None:
    big = os.urandom(8 << 20)
    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.add("/big.bin", big)})
    w.run(files=[{"column": "pic", "type": "remote"}])
    stored = fetch_url(w.entries()[1]["pic"])
    assert hashlib.md5(stored).hexdigest() == hashlib.md5(big).hexdigest()


def test_file_errors_do_not_leak_into_logs_above_error(sandbox: SandboxServer, files: FileServer,
                                                       tmp_path: Path) -> None:
    w = world(sandbox, tmp_path, "pic")
    w.insert({"id": 1, "name": "a", "pic": files.url + "missing.png"})
    summary = w.run(files=[{"column": "pic", "type": "remote"}])
    assert summary.ok  # a file error never fails the sync
    assert not w.handler.messages(logging.CRITICAL)
