"""``MemoryApi`` answers like ``FlipletClient`` against the real sandbox server.

The contract test runs one sequence of calls (every ``FlipletApi`` method, the store's refusals, a
bad token, a token without access, injected failures of each kind) twice: over HTTP against a fresh
sandbox server, and in process on a fresh ``Store``. Both must give the same answers and the same
errors (type, message, kind, status), and leave the stores in the same state. Timestamps are the
only thing masked.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from fliplet_workers.errors import AccessError, AgentError, ApiError, AuthError
from fliplet_workers.fliplet.api import FlipletApi, MediaUpload
from fliplet_workers.fliplet.client import FlipletClient
from fliplet_workers.fliplet.failures import Kind
from fliplet_workers.fliplet.memory import MemoryApi
from fliplet_workers.sandbox import DEMO_TOKEN, NO_ACCESS_TOKEN, SandboxServer, Store

#: (what fails, how) → the sandbox server's fault setting / MemoryApi.fail_next arguments.
SERVER_FAULTS = {"commit": "commit", "iter_entries": "data", "query": "query", "upload_media": "upload"}
SERVER_ACTIONS = {("retry", False): "error", ("unknown", True): "drop-after-apply",
                  ("unknown", False): "drop-before-apply"}

Inject = Callable[[str, Kind, bool], None]
Make = Callable[[str], FlipletApi]


def _masked(value: Any) -> Any:
    """``value`` with its timestamps replaced (they differ by the milliseconds between the runs)."""
    if isinstance(value, dict):
        return {k: "<time>" if k in ("createdAt", "updatedAt") and isinstance(v, str) else _masked(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return ("ok", _masked(call()))
    except AgentError as error:
        return ("error", type(error).__name__, error.message, getattr(error, "kind", None),
                getattr(error, "status", None))


def _upload(folder: int, content: bytes, name: str, content_type: str = "application/octet-stream") -> MediaUpload:
    import hashlib

    return MediaUpload(name=name, md5=hashlib.md5(content).hexdigest(), content_type=content_type,
                       fileobj=io.BytesIO(content), size=len(content), folder_id=folder, organization_id=1)


def scenario(make: Make, inject: Inject) -> list[Any]:
    """Every protocol call, good and bad; returns each call's outcome, in order."""
    api = make(DEMO_TOKEN)
    out: list[Any] = []
    run = out.append
    run(_outcome(api.user))
    run(_outcome(api.organizations))
    run(_outcome(lambda: api.data_sources()))
    run(_outcome(lambda: api.create_data_source("Keystore", type="keystore", organization_id=1)))
    run(_outcome(lambda: api.create_data_source("")))
    run(_outcome(lambda: api.data_sources(type="keystore")))
    run(_outcome(lambda: api.add_entry(3, {"content": "secret-ish", "createdAt": 1})))
    run(_outcome(lambda: list(api.iter_entries(3))))
    rows = [{"data": {"k": i, "v": i / 2, "name": f"Zoë {i}", "tags": [i, None], "on": i % 2 == 0}}
            for i in range(5)]
    run(_outcome(lambda: api.commit(1, {"append": True, "entries": rows})))
    run(_outcome(lambda: api.commit(1, {"append": True, "entries": [{"data": {"k": 9}}]}, answer=False)))
    run(_outcome(lambda: list(api.iter_entries(1))))
    run(_outcome(lambda: api.query(1, {"where": {"k": {"$in": [1, 3, 77]}}, "attributes": ["k"]})))
    run(_outcome(lambda: api.query(1, {"where": {"k": {"$gte": 3}}, "offset": 1, "limit": 1})))
    run(_outcome(lambda: api.query(1, {"where": {"k": {"$nope": 1}}})))
    run(_outcome(lambda: sorted(api.find_keys(1, "k", [0, 4, 9, 12]))))
    first = list(api.iter_entries(1))[0]
    run(_outcome(lambda: api.commit(1, {"append": True, "extend": True,
                                        "entries": [{"id": first["id"], "data": {"v": "new"}}]})))
    run(_outcome(lambda: api.find_applied_updates(1, "k", [{"id": first["id"], "data": {"k": 0, "v": "new"}},
                                                           {"id": first["id"], "data": {"k": 0, "v": "old"}}])))
    run(_outcome(lambda: api.commit(1, {"append": True, "entries": [{"id": 987654, "data": {}}]})))
    run(_outcome(lambda: api.commit(999, {"entries": []})))
    run(_outcome(lambda: list(api.iter_entries(999))))
    run(_outcome(lambda: api.add_entry(999, {})))
    # injected failures, each followed by what the remote holds
    for what, kind, applied in (("commit", "retry", False), ("commit", "unknown", True),
                                ("commit", "unknown", False)):
        key = f"{kind}-{applied}"
        inject(what, kind, applied)
        run(_outcome(lambda key=key: api.commit(1, {"append": True, "entries": [{"data": {"k": key}}]})))
        run(_outcome(lambda key=key: api.find_keys(1, "k", [key])))
    inject("query", "retry", False)
    run(_outcome(lambda: api.find_keys(1, "k", [1])))
    inject("iter_entries", "unknown", False)
    run(_outcome(lambda: list(api.iter_entries(1))))
    # replace mode with deletes
    ids = [e["id"] for e in api.iter_entries(1)]
    run(_outcome(lambda: api.commit(1, {"entries": [{"id": ids[0], "data": {"k": "kept"}}], "delete": ids[1:3]})))
    run(_outcome(lambda: list(api.iter_entries(1))))
    # media
    run(_outcome(lambda: api.media_folders(1)))
    run(_outcome(lambda: api.media_folders(99)))
    folder = api.create_media_folder("Files uploaded from DIS", 1)
    run(_outcome(lambda: folder))
    run(_outcome(lambda: api.upload_media(_upload(folder["id"], b"%PDF-1.4 hello", "Zoë \"report\".pdf"))))
    run(_outcome(lambda: api.upload_media(_upload(folder["id"], b"\x89PNG", "pixel.png", "image/png"))))
    inject("upload_media", "retry", False)
    run(_outcome(lambda: api.upload_media(_upload(folder["id"], b"lost", "lost.txt"))))
    inject("upload_media", "unknown", True)
    run(_outcome(lambda: api.upload_media(_upload(folder["id"], b"landed", "landed.txt"))))
    run(_outcome(lambda: api.media_files(folder["id"], 1)))
    run(_outcome(lambda: api.media_files(folder["id"] + 50, 1)))
    run(_outcome(lambda: api.upload_media(_upload(folder["id"] + 50, b"x", "x.txt"))))
    run(_outcome(lambda: api.media_folders(1)))
    api.close()
    # other tokens
    wrong = make("eu--wrong-token")
    run(_outcome(wrong.user))
    run(_outcome(lambda: list(wrong.iter_entries(1))))
    run(_outcome(lambda: wrong.commit(1, {"entries": []})))
    outsider = make(NO_ACCESS_TOKEN)
    run(_outcome(outsider.user))
    run(_outcome(lambda: list(outsider.iter_entries(1))))
    run(_outcome(lambda: outsider.query(1, {})))
    run(_outcome(outsider.organizations))
    return out


def _store_state(store: Store) -> Any:
    return _masked({"state": store.state(), "ds1": store.entries(1), "ds3": store.entries(3),
                    "commits": store.commits(1), "count": store.commit_count(1),
                    "applied": store.applied_commit_count(1)})


def test_memory_api_answers_like_the_http_client(sandbox: SandboxServer) -> None:
    def server_inject(what: str, kind: Kind, applied: bool) -> None:
        sandbox.faults.set(**{SERVER_FAULTS[what]: [SERVER_ACTIONS[(kind, applied)]]})

    over_http = scenario(lambda token: FlipletClient(token, sandbox.url, timeout=10), server_inject)

    store = Store()
    apis: list[MemoryApi] = []

    def make_memory(token: str) -> MemoryApi:
        apis.append(MemoryApi(store, token, base_url=sandbox.url))
        return apis[-1]

    def memory_inject(what: str, kind: Kind, applied: bool) -> None:
        apis[0].fail_next(what, kind=kind, applied=applied)

    in_memory = scenario(make_memory, memory_inject)
    assert len(over_http) == len(in_memory) > 40
    for number, (http_outcome, memory_outcome) in enumerate(zip(over_http, in_memory, strict=True)):
        assert memory_outcome == http_outcome, f"call {number} differs"
    assert _store_state(store) == _store_state(sandbox.store)
    # the scenario did meet every kind of outcome (a contract that compared only successes proves little)
    kinds = {o[3] for o in over_http if o[0] == "error"}
    assert kinds == {"retry", "unknown", "refused", "fatal"}
    assert {o[1] for o in over_http if o[0] == "error"} == {"ApiError", "AuthError", "AccessError"}
    assert apis[0].closed and apis[0].pending_failures("commit") == 0


def test_an_applied_commit_whose_answer_is_lost() -> None:
    store = Store()
    api = MemoryApi(store)
    api.fail_next("commit", kind="unknown", applied=True)
    with pytest.raises(ApiError) as lost:
        api.commit(1, {"append": True, "entries": [{"data": {"k": "a"}}]})
    assert lost.value.kind == "unknown" and lost.value.outcome_unknown and lost.value.status is None
    assert api.find_keys(1, "k", ["a"]) == ["a"]  # applied all the same
    assert api.commit(1, {"append": True, "entries": [{"data": {"k": "b"}}]})["entries"][0]["data"] == {"k": "b"}
    assert [m for m, _ in api.calls] == ["commit", "query", "commit"]
    assert store.commit_count(1) == 2 and store.applied_commit_count(1) == 2


def test_injected_failures_queue_and_refusals_apply_nothing() -> None:
    store = Store()
    api = MemoryApi(store)
    api.fail_next("commit", kind="refused", times=2)
    api.fail_next("commit", kind="fatal", message="Payload conflict")
    body = {"append": True, "entries": [{"data": {"k": 1}}]}
    errors = []
    for _ in range(3):
        with pytest.raises(ApiError) as failed:
            api.commit(1, body)
        errors.append((failed.value.kind, failed.value.status, failed.value.message))
    assert errors == [("refused", 400, "Sandbox injected refusal (HTTP 400)")] * 2 + [
        ("fatal", 409, "Payload conflict (HTTP 409)")]
    assert store.entries(1) == [] and store.commit_count(1) == 3 and store.applied_commit_count(1) == 0
    api.commit(1, body)  # the queue is used up: the next commit passes
    assert len(store.entries(1)) == 1


def test_access_and_token_checks_come_before_injected_failures() -> None:
    """As on the server: a commit to a data source the token cannot use is refused as such, and the
    injected failure waits for the next call."""
    api = MemoryApi(Store())
    api.fail_next("commit", kind="retry")
    with pytest.raises(AccessError, match=r"You don't have access to the dataSource \(42\)"):
        api.commit(42, {"entries": []})
    with pytest.raises(AuthError, match="Auth token is required"):
        MemoryApi(Store(), "")


@pytest.mark.parametrize("call, problem", [
    (lambda api: api.fail_next("comit"), "unknown method 'comit'"),
    (lambda api: api.fail_next("commit", kind="later"), "unknown kind 'later'"),
    (lambda api: api.fail_next("commit", kind="retry", applied=True), "applied=True needs kind='unknown'"),
])
def test_fail_next_names_a_wrong_argument(call: Callable[[MemoryApi], None], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        call(MemoryApi(Store()))


def test_entries_are_copies_and_reading_is_lazy() -> None:
    store = Store()
    api = MemoryApi(store)
    api.commit(1, {"append": True, "entries": [{"data": {"k": 1}}]})
    reading = api.iter_entries(999)  # nothing asked yet, like the client's streamed read
    assert api.calls == [("commit", 1)]
    with pytest.raises(AccessError):
        next(reading)
    entry = next(api.iter_entries(1))
    entry["data"]["k"] = "changed"
    assert store.entries(1)[0]["data"] == {"k": 1}


class _FakeClock:
    """``sleep`` advances ``now``: the retry rules' waits cost nothing."""

    def __init__(self) -> None:
        self.t = 0.0

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def now(self) -> float:
        return self.t


@pytest.mark.parametrize("failures, calls, outcome", [
    # the answer to an applied commit is lost: the lookup finds every row, nothing is sent again
    ([("unknown", True)], ["commit", "query"], {"inserted": 3, "already_applied": 3, "attempts": 1}),
    # the connection dropped before the commit was applied: two lookups agree nothing landed, resend
    ([("unknown", False)], ["commit", "query", "query", "commit"], {"inserted": 3, "already_applied": 0,
                                                                    "attempts": 2}),
    # an answer of 500: known not applied, sent again after the backoff, no lookup
    ([("retry", False)] * 2, ["commit", "commit", "commit"], {"inserted": 3, "already_applied": 0, "attempts": 3}),
])
def test_the_retry_rules_on_the_memory_api_insert_each_row_once(
        failures: list[tuple[Kind, bool]], calls: list[str], outcome: dict[str, int]) -> None:
    """The core's retry rules driven through ``FlipletApi`` in process: every row ends up exactly once."""
    from fliplet_workers.core.batches import Batch
    from fliplet_workers.core.retry import RetryPolicy, commit_with_retries

    store = Store()
    api = MemoryApi(store)
    ds = store.create_data_source("retries")
    for kind, applied in failures:
        api.fail_next("commit", kind=kind, applied=applied)
    batch = Batch(number=1, entries=[{"data": {"k": i}} for i in range(3)], insert_keys=[0, 1, 2])
    clock = _FakeClock()
    result = commit_with_retries(
        batch, lambda b: api.commit(ds, {"append": True, "entries": [dict(e) for e in b.entries]}, answer=False),
        lambda keys: api.find_keys(ds, "k", keys), RetryPolicy(retries=3, delay=0.5),
        sleep=clock.sleep, clock=clock.now)
    assert result.committed and not result.errors
    assert {name: getattr(result, name) for name in outcome} == outcome
    assert sorted(e["data"]["k"] for e in store.entries(ds)) == [0, 1, 2]
    assert [name for name, _ in api.calls] == calls


def test_a_refused_row_is_skipped_and_the_others_land() -> None:
    from fliplet_workers.core.batches import Batch
    from fliplet_workers.core.retry import RetryPolicy, commit_with_retries

    store = Store()
    api = MemoryApi(store)
    ds = store.create_data_source("refusals")
    api.fail_next("commit", kind="refused", times=2)  # the batch, then its first half
    batch = Batch(number=1, entries=[{"data": {"k": "bad"}}, {"data": {"k": "good"}}], insert_keys=["bad", "good"])
    result = commit_with_retries(
        batch, lambda b: api.commit(ds, {"append": True, "entries": [dict(e) for e in b.entries]}, answer=False),
        lambda keys: api.find_keys(ds, "k", keys), RetryPolicy(retries=1), sleep=lambda _s: None)
    assert (result.committed, result.inserted, result.rejected_entries) == (True, 1, 1)
    assert "the server refused an entry: Sandbox injected refusal (HTTP 400)" in result.errors[0]
    assert [e["data"]["k"] for e in store.entries(ds)] == ["good"]
