"""The Fliplet client against the real sandbox and a raw local HTTP server: regions, headers,
error mapping (which failures may have been applied), streaming reads."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fliplet_workers import __version__
from fliplet_workers.errors import AccessError, ApiError, AuthError
from fliplet_workers.fliplet.client import FlipletClient, base_url_for
from fliplet_workers.fliplet.sessions import new_session
from fliplet_workers.sandbox import DEMO_TOKEN, NO_ACCESS_TOKEN, SandboxServer


def test_region_from_token() -> None:
    assert base_url_for("eu--123") == "https://api.fliplet.com/"
    assert base_url_for("US--123") == "https://us.api.fliplet.com/"
    assert base_url_for("ca--123") == "https://ca.api.fliplet.com/"
    assert base_url_for("xx--123") == "https://api.fliplet.com/"
    assert base_url_for("us--123", "http://127.0.0.1:9/api") == "http://127.0.0.1:9/api/"


def test_tls_verification_stays_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert FlipletClient("eu--x").session.verify is True
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/corp/ca.pem")  # the environment's bundle is honoured
    assert FlipletClient("eu--x").session.verify == "/corp/ca.pem"
    assert FlipletClient("eu--x", ca_bundle="/etc/ssl/certs/ca-certificates.crt").session.verify.endswith(".crt")


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []
    mode = "ok"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        Recorder.seen.append({**self.headers, "path": self.path})
        if Recorder.mode == "drop":
            self.close_connection = True
            self.connection.close()
            return
        body = b'{"user": {"email": "me@example.org"}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def recorder() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.seen.clear()
    Recorder.mode = "ok"
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_headers_like_the_original(recorder: str) -> None:
    FlipletClient("eu--tok-123", recorder).user()
    headers = Recorder.seen[0]
    assert headers["Auth-token"] == "eu--tok-123"
    assert headers["User-Agent"] == f"Fliplet Agent/{__version__}"


def test_dropped_connection_is_an_unknown_outcome(recorder: str) -> None:
    Recorder.mode = "drop"
    with pytest.raises(ApiError) as info:
        FlipletClient("eu--tok", recorder).user()
    assert info.value.outcome_unknown and info.value.status is None


def test_refused_connection_is_known_not_applied() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ApiError) as info:
        FlipletClient("eu--tok", f"http://127.0.0.1:{port}/", timeout=5).user()
    assert not info.value.outcome_unknown and "Could not connect" in info.value.message


def test_error_mapping_against_the_sandbox(sandbox: SandboxServer) -> None:
    with pytest.raises(AuthError, match="Invalid or expired token"):
        FlipletClient("eu--wrong", sandbox.url).user()
    with pytest.raises(AccessError) as info:
        list(FlipletClient(NO_ACCESS_TOKEN, sandbox.url).iter_entries(1))
    assert "You don't have access to the dataSource (1)" in info.value.message
    assert "The server said:" in info.value.message
    client = FlipletClient(DEMO_TOKEN, sandbox.url)
    with pytest.raises(ApiError) as bad:
        client.commit(1, {"append": True, "entries": [{"id": 987654, "data": {}}]})
    assert bad.value.status == 400 and not bad.value.outcome_unknown


def test_stream_entries_and_find_keys(sandbox: SandboxServer) -> None:
    client = FlipletClient(DEMO_TOKEN, sandbox.url)
    ds = sandbox.store.create_data_source("client")
    client.commit(ds, {"append": True, "entries": [{"data": {"k": i, "v": i / 2}} for i in range(2500)]})
    entries = list(client.iter_entries(ds))
    assert len(entries) == 2500 and entries[3]["data"] == {"k": 3, "v": 1.5}
    assert isinstance(entries[3]["data"]["v"], float)
    assert sorted(client.find_keys(ds, "k", [1, 2, 5000, 2499])) == [1, 2, 2499]


def test_a_commit_slower_than_the_timeout_is_an_unknown_outcome(sandbox: SandboxServer) -> None:
    """The classification the retry rules rest on: no answer in time → may have been applied (and is,
    later: the sandbox applies the commit after its delay); an answer of 500 → known not applied."""
    client = FlipletClient(DEMO_TOKEN, sandbox.url, timeout=0.3)
    ds = sandbox.store.create_data_source("slow")
    sandbox.faults.set(commit_delay_ms=600)
    with pytest.raises(ApiError) as slow:
        client.commit(ds, {"append": True, "entries": [{"data": {"k": 1}}]})
    assert slow.value.outcome_unknown and slow.value.status is None
    assert "No answer from" in slow.value.message and "within 0.3 seconds (option 'timeout')" in slow.value.message
    assert client.find_keys(ds, "k", [1]) == []  # not applied yet...
    deadline = time.monotonic() + 5
    while not client.find_keys(ds, "k", [1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.find_keys(ds, "k", [1]) == [1]  # ...but applied after all
    sandbox.faults.set(commit=["error"], query=["error"])
    with pytest.raises(ApiError) as failed:
        client.commit(ds, {"append": True, "entries": [{"data": {"k": 2}}]})
    assert failed.value.status == 500 and not failed.value.outcome_unknown
    with pytest.raises(ApiError) as lookup:
        client.find_keys(ds, "k", [1])
    assert lookup.value.status == 500 and not lookup.value.outcome_unknown


def test_find_applied_updates_compares_the_values_sent(sandbox: SandboxServer) -> None:
    client = FlipletClient(DEMO_TOKEN, sandbox.url)
    ds = sandbox.store.create_data_source("updates")
    client.commit(ds, {"append": True, "entries": [{"data": {"k": i, "v": "old", "extra": i}} for i in range(3)]})
    ids = {e["data"]["k"]: e["id"] for e in sandbox.store.entries(ds)}
    client.commit(ds, {"append": True, "extend": True, "entries": [{"id": ids[0], "data": {"k": 0, "v": "new"}}]})
    asked = [{"id": ids[0], "data": {"k": 0, "v": "new"}},  # applied (the remote-only column is ignored)
             {"id": ids[1], "data": {"k": 1, "v": "new"}},  # not applied
             {"id": ids[0] + 999, "data": {"k": 2, "v": "old"}},  # another entry holds key 2
             {"id": ids[2], "data": {"k": 2, "v": "old", "more": None}}]  # a column the remote lacks
    assert client.find_applied_updates(ds, "k", asked) == [ids[0]]


def test_sessions_read_proxies_once_and_honour_no_proxy(recorder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``recorder`` plays an HTTP proxy: a proxied request names the whole URL in its request line."""
    monkeypatch.setenv("HTTP_PROXY", recorder)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with new_session() as http:
        monkeypatch.delenv("HTTP_PROXY")  # read once: later changes do not matter
        assert http.get("http://files.example.invalid/a.png", timeout=5).json()["user"]
        assert http.get(recorder + "direct", timeout=5).ok  # NO_PROXY: straight to the server
    assert [seen["path"] for seen in Recorder.seen] == ["http://files.example.invalid/a.png", "/direct"]
    assert all(seen["User-Agent"] == f"Fliplet Agent/{__version__}" for seen in Recorder.seen)


def test_an_explicit_ca_bundle_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/corp/env-ca.pem")
    for session in (new_session(ca_bundle="/corp/config-ca.pem"), new_session(base_url="https://api.fliplet.com/",
                                                                              ca_bundle="/corp/config-ca.pem")):
        settings = session.merge_environment_settings("https://api.fliplet.com/v1/user", {}, None, None, None)
        assert settings["verify"] == "/corp/config-ca.pem"
    settings = new_session().merge_environment_settings("https://x.example/", {}, None, None, None)
    assert settings["verify"] == "/corp/env-ca.pem"


def test_failure_kinds(sandbox: SandboxServer, recorder: str) -> None:
    """What the retry rules decide by: the kind of each failure, never its status code."""
    client = FlipletClient(DEMO_TOKEN, sandbox.url)
    sandbox.faults.set(commit=["error", "drop-after-apply"])
    kinds = []
    for body in ({"append": True, "entries": []},) * 2 + ({"append": True, "entries": [{"id": 987654, "data": {}}]},):
        with pytest.raises(ApiError) as failed:
            client.commit(1, body)
        kinds.append(failed.value.kind)
    assert kinds == ["retry", "unknown", "refused"]
    with pytest.raises(ApiError) as missing:
        client.media_files(12345, 1)
    assert missing.value.kind == "fatal" and missing.value.status == 404
    with pytest.raises(AuthError) as rejected:
        FlipletClient("eu--wrong", sandbox.url).user()
    assert rejected.value.kind == "fatal"
    Recorder.mode = "drop"
    with pytest.raises(ApiError) as dropped:
        FlipletClient("eu--tok", recorder).user()
    assert dropped.value.kind == "unknown"
