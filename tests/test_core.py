"""Unit tests of the pure core: rows, diff, batches, retries. No servers needed."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from fliplet_workers.core.batches import Batch, make_batches
from fliplet_workers.core.diff import DiffOptions, Planner, diff
from fliplet_workers.core.retry import RetryPolicy, commit_with_retries
from fliplet_workers.core.rows import normalise_value, timestamp_seconds
from fliplet_workers.errors import ApiError, AuthError


def entry(entry_id: int, **data: Any) -> dict[str, Any]:
    return {"id": entry_id, "data": data}


# -- rows ----------------------------------------------------------------------------------------

def test_values_are_normalised_like_javascript_json() -> None:
    assert normalise_value(dt.datetime(2024, 1, 2, 3, 4, 5, 678900)) == "2024-01-02T03:04:05.678Z"
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert normalise_value(dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=plus_two)) == "2024-01-02T03:04:05.000Z"
    assert normalise_value(dt.date(2024, 1, 2)) == "2024-01-02T00:00:00.000Z"
    assert normalise_value(Decimal("12.50")) == 12.5
    assert normalise_value(Decimal("12.00")) == 12 and isinstance(normalise_value(Decimal("12.00")), int)
    assert normalise_value(3.0) == 3 and isinstance(normalise_value(3.0), int)
    assert normalise_value(float("nan")) is None
    assert normalise_value(b"\x00\x01") == "AAE="


def test_timestamps_compare_at_one_second() -> None:
    assert timestamp_seconds("2024-01-02T03:04:05.678Z") == timestamp_seconds("2024-01-02T03:04:05Z")
    assert timestamp_seconds("2024-01-02 03:04:05") == timestamp_seconds("2024-01-02T03:04:05.999+00:00")
    assert timestamp_seconds("not a date") is None
    assert timestamp_seconds(1704164645678) == 1704164645


def test_missing_and_duplicate_keys_are_skipped_and_zero_is_a_key() -> None:
    plan = diff([{"id": 0}, {"id": None}, {"id": ""}, {"id": 1}, {"id": 1, "x": 2}], [], DiffOptions("id"))
    assert sorted(r.data["id"] for r in plan.inserts) == [0, 1]
    assert [s.reason for s in plan.skips] == ["missing_key", "missing_key", "duplicate_key"]
    assert "missing its primary key" in plan.skips[0].message


def test_keys_keep_their_types_exactly() -> None:
    plan = diff([{"id": True}, {"id": 1}, {"id": 1.0}, {"id": False}, {"id": 0}, {"id": "1"}], [], DiffOptions("id"))
    assert [r.data["id"] for r in plan.inserts] == [True, 1, False, 0, "1"]  # 1.0 is 1 (one JS number type)
    assert [s.reason for s in plan.skips] == ["duplicate_key"] and "Row 3 has the same primary key 1 as" in \
        plan.skips[0].message
    # a remote True is matched by a row's True only
    plan = run_diff([{"id": 1, "v": 1}, {"id": True, "v": 1}], [entry(10, id=True, v=1)])
    assert plan.unchanged == 1 and [r.data["id"] for r in plan.inserts] == [1]


def test_blank_text_is_a_key_only_null_and_empty_text_are_missing() -> None:
    plan = diff([{"id": "  "}, {"id": " "}, {"id": ""}, {"id": None}, {"id": "  "}], [], DiffOptions("id"))
    assert [r.data["id"] for r in plan.inserts] == ["  ", " "]
    assert [s.reason for s in plan.skips] == ["missing_key", "missing_key", "duplicate_key"]
    assert run_diff([{"id": "  ", "v": 1}], [entry(10, id="  ", v=1)]).unchanged == 1


def test_object_and_list_keys_are_errors_naming_the_row() -> None:
    plan = diff([{"id": {"a": 1}}, {"id": [1]}, {"id": {"a": 1}}, {"id": 2}], [], DiffOptions("id"))
    assert [r.data["id"] for r in plan.inserts] == [2]
    assert [s.reason for s in plan.skips] == ["invalid_key"] * 3
    assert plan.skips[0].message.startswith("Row 1 has an object as its primary key value ('id')")
    assert plan.skips[1].message.startswith("Row 2 has a list as its primary key value")
    assert "same primary key" not in " ".join(s.message for s in plan.skips)
    # remote entries with such keys match nothing: orphans, deleted only in replace mode
    assert run_diff([{"id": 2}], [entry(10, id={"a": 1}), entry(11, id=2)], mode="replace").deletes == [10]


def test_case_insensitive_keys_collide() -> None:
    plan = diff([{"id": "AB"}, {"id": "ab"}], [], DiffOptions("id", case_insensitive=True))
    assert [r.data["id"] for r in plan.inserts] == ["AB"] and plan.skips[0].reason == "duplicate_key"


# -- diff ----------------------------------------------------------------------------------------

def run_diff(rows: list[dict[str, Any]], remote: list[dict[str, Any]], **opts: Any) -> Any:
    options = DiffOptions(primary_column=opts.pop("pk", "id"), **opts)
    return diff(rows, iter(remote), options)


def test_first_sync_inserts_everything() -> None:
    plan = run_diff([{"id": 1}, {"id": 2}], [])
    assert [r.data["id"] for r in plan.inserts] == [1, 2] and not plan.updates and not plan.deletes
    assert plan.counts() == {"insert": 2, "update": 0, "delete": 0, "unchanged": 0, "skipped": 0, "remote": 0,
                             "rows": 2, "withheld": 0, "delete_allowed": -1, "delete_default": 1}


def test_unchanged_rows_send_nothing_without_timestamp() -> None:
    plan = run_diff([{"id": 1, "name": "a"}], [entry(10, id=1, name="a", extra="kept")])
    assert plan.is_empty and plan.unchanged == 1


def test_changed_content_updates_without_timestamp() -> None:
    plan = run_diff([{"id": 1, "name": "b"}], [entry(10, id=1, name="a")])
    assert [(i, r.data["name"]) for i, r in plan.updates] == [(10, "b")]


def test_timestamp_decides_when_both_parse() -> None:
    rows = [{"id": 1, "name": "new", "ts": "2024-01-01T00:00:00.400Z"},
            {"id": 2, "name": "x", "ts": "2024-01-02T00:00:00Z"}]
    remote = [entry(10, id=1, name="old", ts="2024-01-01T00:00:00.000Z"),
              entry(11, id=2, name="x", ts="2024-01-01T00:00:00Z")]
    plan = run_diff(rows, remote, timestamp_column="ts")
    assert [i for i, _ in plan.updates] == [11]  # row 1: same second → no update despite new name
    assert plan.unchanged == 1


def test_unreadable_timestamp_falls_back_to_content() -> None:
    plan = run_diff([{"id": 1, "ts": "garbage", "v": 2}], [entry(10, id=1, ts="garbage", v=1)],
                    timestamp_column="ts")
    assert [i for i, _ in plan.updates] == [10]


def test_delete_column() -> None:
    rows: list[dict[str, Any]] = [{"id": 1, "gone": "2024-01-01"}, {"id": 2, "gone": "2024-01-01"}, {"id": 3, "gone": None},
            {"id": 4, "gone": 0}]
    remote = [entry(10, id=1, gone=None), entry(13, id=3, gone=None), entry(14, id=4, gone=None)]
    plan = run_diff(rows, remote, delete_column="gone")
    assert plan.deletes == [10]
    assert plan.absent_deleted == 1 and not plan.inserts  # row 2: deleted locally, absent remotely
    assert [i for i, _ in plan.updates] == [14]  # 0 is not a delete flag (JS truthiness) but a new value


def test_replace_mode_deletes_orphans_update_mode_keeps_them_both_heal_duplicates() -> None:
    remote = [entry(10, id=1), entry(11, id=9), entry(12, id=1)]
    assert run_diff([{"id": 1}], remote, mode="replace").deletes == [11, 12]
    assert run_diff([{"id": 1}], remote, mode="update").deletes == [12]  # the orphan 11 stays


def test_duplicate_remote_keys_are_healed_in_both_modes_keeping_the_oldest() -> None:
    from fliplet_workers.core.diff import index_remote

    remote = [entry(30, id=1, v="c"), entry(12, id=1, v="a"), entry(20, id=1, v="b"), entry(5, id=2), entry(6, id=2),
              entry(7, id=3)]
    for mode in ("update", "replace"):
        plan = run_diff([{"id": 1, "v": "a"}, {"id": 2}, {"id": 3}], remote, mode=mode)
        assert sorted(plan.deletes) == [6, 20, 30] and plan.unchanged == 3  # row 1 matched entry 12, the oldest
    index = index_remote(iter(remote), DiffOptions("id"))
    dups = index.duplicates("id")
    assert [(d.key, d.ids) for d in dups] == [(1, (12, 20, 30)), (2, (5, 6))]
    assert dups[0].warning("id") == ("The data source has 3 entries with the primary key 1 ('id'): entries 12, 20, "
                                     "30. Entry 12 (the oldest) is kept; this run deletes 20, 30 (within the "
                                     "delete limit).")
    # case-insensitive keys: "AB" and "ab" are one key
    plan = run_diff([{"id": "ab"}], [entry(8, id="AB"), entry(9, id="ab")], case_insensitive=True)
    assert plan.deletes == [9] and [i for i, _ in plan.updates] == [8]
    # True and 1 are two keys, not duplicates
    assert run_diff([], [entry(1, id=True), entry(2, id=1)]).deletes == []


def test_columns_are_checked_with_a_did_you_mean() -> None:
    from fliplet_workers.core.diff import check_columns

    columns = ["id", "name", "email", "updatedAt", "deleted_at"]
    check = check_columns(columns, DiffOptions("ID", timestamp_column="updated_at", delete_column="deletedAt"))
    assert check.error == ("primary_column 'ID' is not a column of the query's result (columns: id, name, email, "
                           "updatedAt, deleted_at); did you mean 'id'?")
    assert check.warnings == (
        "timestamp_column 'updated_at' is not a column of the query's result (columns: id, name, email, updatedAt, "
        "deleted_at); did you mean 'updatedAt'? Rows are compared by their content instead.",
        "delete_column 'deletedAt' is not a column of the query's result (columns: id, name, email, updatedAt, "
        "deleted_at); did you mean 'deleted_at'? No entry will be deleted through it.")
    assert check_columns(columns, DiffOptions("id", timestamp_column="updatedAt")) == \
        type(check)(None, ())
    far = check_columns(["a", "b"], DiffOptions("zzz"), where="the source's rows")
    assert far.error == "primary_column 'zzz' is not a column of the source's rows (columns: a, b)."
    assert check_columns(columns, DiffOptions(None)).error is None


def test_case_insensitive_match() -> None:
    plan = run_diff([{"id": "ABC", "v": 1}], [entry(10, id="abc", v=1)], case_insensitive=True)
    assert not plan.inserts and [i for i, _ in plan.updates] == [10]  # matched; the key's case is updated
    plan = run_diff([{"id": "ABC", "v": 1}], [entry(10, id="ABC", v=1)], case_insensitive=True)
    assert plan.unchanged == 1
    plan = run_diff([{"id": "ABC", "v": 1}], [entry(10, id="abc", v=1)])
    assert len(plan.inserts) == 1


def test_key_types_are_kept() -> None:
    plan = run_diff([{"id": "2"}], [entry(10, id=2)])
    assert len(plan.inserts) == 1


def test_boolean_and_number_differ() -> None:
    plan = run_diff([{"id": 1, "flag": True}], [entry(10, id=1, flag=1)])
    assert len(plan.updates) == 1


def test_no_primary_key_appends_everything() -> None:
    plan = run_diff([{"a": 1}, {"a": 1}], [entry(10, a=1)], pk=None)
    assert len(plan.inserts) == 2 and plan.remote_count == 1


def test_ignored_columns_and_decoder() -> None:
    plan = run_diff([{"id": 1, "photo": "/tmp/a.jpg", "secret": "x"}],
                    [entry(10, id=1, photo="https://cdn/a.jpg", secret="ENC(x)")],
                    ignore_columns=frozenset({"photo"}),
                    decode_remote=lambda d: {**d, "secret": d["secret"][4:-1]})
    assert plan.unchanged == 1


def test_diff_notes_use_the_original_wording() -> None:
    notes: list[str] = []
    options = DiffOptions(primary_column="id")
    diff([{"id": 1}, {"id": 2}], iter([entry(5, id=1)]), options, note=notes.append)
    assert "Row 2 has been marked for inserting." in notes
    assert "Row 1 already exists on Fliplet servers with ID 5 and does not require updating." in notes


# -- batches -------------------------------------------------------------------------------------

def test_batches_split_entries_and_send_deletes_once() -> None:
    plan = run_diff([{"id": 99, "v": 2}] + [{"id": i} for i in range(5)],
                    [entry(1000 + i, id=100 + i) for i in range(3)] + [entry(7, id=99, v=1)], mode="replace")
    batches = make_batches(plan, 2, "id")
    assert [len(b.entries) for b in batches] == [2, 2, 2, 0, 0]
    assert batches[0].entries[0] == {"id": 7, "data": {"id": 99, "v": 2}}  # source order: the update first
    assert [b.delete for b in batches] == [[], [], [], [1000, 1001], [1002]]  # replace deletes come at the end
    assert sorted(k for b in batches for k in b.insert_keys) == [0, 1, 2, 3, 4]
    body = batches[1].body(("insert",), True)
    assert body == {"append": True, "entries": batches[1].entries, "runHooks": ["insert"], "extend": True}
    assert "delete" not in body and batches[3].body((), False)["delete"] == [1000, 1001]


def test_changes_stream_into_batches_as_they_come() -> None:
    from fliplet_workers.core.batches import BatchCutter
    from fliplet_workers.core.diff import Planner, index_remote

    options = DiffOptions("id")
    planner = Planner(index_remote([entry(1, id=1, v=0)], options), options)
    cutter = BatchCutter(2, "id")
    completed = []
    for row in ({"id": 1, "v": 1}, {"id": 2}, {"id": 3}):
        change = planner.add(row)
        batch = cutter.add(change) if change else None
        completed.append(batch.number if batch else None)
    assert completed == [None, 1, None]  # batch 1 is ready before the source is fully read
    last = cutter.flush()
    assert last is not None and last.number == 2 and last.insert_keys == [3]


def test_delete_only_batches() -> None:
    plan = run_diff([], [entry(i, id=i) for i in range(5)], mode="replace")
    batches = make_batches(plan, 2, "id")
    assert [b.delete for b in batches] == [[0, 1], [2, 3], [4]] and all(not b.entries for b in batches)


def test_batch_roundtrip() -> None:
    batch = Batch(3, [{"data": {"id": 1}}], [4], [1])
    assert Batch.from_dict(batch.to_dict()) == batch


# -- retries -------------------------------------------------------------------------------------

class FakeRemote:
    """A tiny in-memory remote with a script of failures, to exercise the retry rules."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.rows: list[dict[str, Any]] = []
        self.sent = 0

    def send(self, batch: Batch) -> None:
        self.sent += 1
        step = self.script.pop(0) if self.script else "ok"
        if step == "500":
            raise ApiError("boom (HTTP 500)", status=500)
        if any(e["data"].get("bad") for e in batch.entries):
            raise ApiError("bad entry (HTTP 400)", status=400)
        if step == "401":
            raise AuthError("nope")
        self.rows.extend(e["data"] for e in batch.entries if "id" not in e)
        if step == "drop":
            raise ApiError("connection lost", outcome_unknown=True)

    def find(self, keys: list[Any]) -> list[Any]:
        return [r["id"] for r in self.rows if r["id"] in keys]


def batch_of(*ids: int, bad: int | None = None) -> Batch:
    return Batch(1, [{"data": {"id": i, "bad": i == bad}} for i in ids], [], list(ids))


def test_retry_after_500_then_drop_inserts_exactly_once() -> None:
    remote = FakeRemote(["500", "500", "drop"])
    waits: list[float] = []
    outcome = commit_with_retries(batch_of(1, 2, 3), remote.send, remote.find, RetryPolicy(delay=0.5),
                                  sleep=waits.append)
    assert sorted(r["id"] for r in remote.rows) == [1, 2, 3]
    assert outcome.committed and outcome.inserted == 3 and outcome.already_applied == 3
    assert waits == [0.5, 1.0, 2.0] and remote.sent == 3


def test_gives_up_after_the_configured_retries() -> None:
    remote = FakeRemote(["500"] * 10)
    outcome = commit_with_retries(batch_of(1), remote.send, remote.find, RetryPolicy(retries=2),
                                  sleep=lambda _: None)
    assert not outcome.committed and remote.sent == 3 and "HTTP 500" in outcome.errors[0]


def test_refused_batch_is_bisected_and_only_the_bad_row_skipped() -> None:
    remote = FakeRemote([])
    outcome = commit_with_retries(batch_of(1, 2, 3, 4, 5, bad=4), remote.send, remote.find, RetryPolicy(),
                                  sleep=lambda _: None)
    assert sorted(r["id"] for r in remote.rows) == [1, 2, 3, 5]
    assert outcome.rejected_entries == 1 and outcome.inserted == 4 and outcome.committed


def test_auth_errors_stop_immediately() -> None:
    remote = FakeRemote(["401"])
    with pytest.raises(AuthError):
        commit_with_retries(batch_of(1), remote.send, remote.find, RetryPolicy(), sleep=lambda _: None)


def test_start_unknown_replans_before_sending() -> None:
    remote = FakeRemote([])
    remote.rows = [{"id": 1}, {"id": 2}]
    outcome = commit_with_retries(batch_of(1, 2, 3), remote.send, remote.find, RetryPolicy(),
                                  sleep=lambda _: None, start_unknown=True)
    assert sorted(r["id"] for r in remote.rows) == [1, 2, 3] and outcome.inserted == 3


# -- the remote index keeps digests, not data (issue 9: memory on a re-run) -----------------------

def test_digests_compare_as_the_data_would() -> None:
    remote = entry(10, id=1, n=2.0, one=1, f=1.5, t="é\ud800", o={"b": [1.0, None], "a": "x"}, gone=None, extra="remote only")
    same = {"id": 1, "n": 2, "one": 1.0, "f": 1.5, "t": "é\ud800", "o": {"a": "x", "b": [1, None]}, "gone": None,
            "absent": None}
    assert run_diff([same], [remote]).unchanged == 1  # 1 == 1.0, key order, null == missing, remote-only
    for column, value in (("n", 3), ("n", "2"), ("f", 1.25), ("t", "e"), ("o", {"a": "x"}), ("gone", 0),
                          ("absent", ""), ("one", True), ("id", 1.0)):
        plan = run_diff([{**same, column: value}], [remote])
        assert (len(plan.updates) == 1) is not (column == "id"), (column, value)  # 1.0 is the same key as 1
    nan = run_diff([{"id": 1, "v": float("nan")}], [entry(10, id=1, v=float("nan"))])
    assert len(nan.updates) == 1  # NaN equals nothing, as in Python


def test_values_with_their_own_equality_are_kept_whole() -> None:
    class Loose(str):  # like encryption.Plaintext: "30" equals 30
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            return str.__eq__(self, str(other))

        def __ne__(self, other: object) -> bool:
            return not self.__eq__(other)

    options = {"decode_remote": lambda d: {**d, "age": Loose(d["age"]), "at": Loose(d["at"])},
               "timestamp_column": "at"}
    remote = [entry(10, id=1, age="30", at="x"), entry(2**70, id=2, age="31", at="y")]
    plan = run_diff([{"id": 1, "age": 30, "at": "x"}, {"id": 2, "age": 32, "at": "y"}], remote, **options)
    assert plan.unchanged == 1 and plan.updates[0][0] == 2**70  # an id beyond 64 bits is kept as it is


def test_numeric_and_text_timestamps_in_the_index() -> None:
    remote = [entry(1, id=1, at=1704164645678, v="a"), entry(2, id=2, at="2024-01-02T03:04:05.000Z", v="b"),
              entry(3, id=3, v="c")]
    rows: list[dict[str, Any]] = [{"id": 1, "at": "2024-01-02T03:04:05.999Z", "v": "changed but same second"},
            {"id": 2, "at": "2024-01-02T03:04:06.000Z", "v": "b"}, {"id": 3, "at": None, "v": "c"}]
    plan = run_diff(rows, remote, timestamp_column="at")
    assert [i for i, _ in plan.updates] == [2] and plan.unchanged == 2


def test_duplicates_are_named_as_the_kept_entry_holds_its_key() -> None:
    from fliplet_workers.core.diff import index_remote

    remote = [entry(9, id="ab"), entry(8, id="AB"), entry(7, id=True), entry(3, id=True)]
    index = index_remote(iter(remote), DiffOptions("id", case_insensitive=True))
    assert [(d.key, d.ids) for d in index.duplicates("id")] == [("AB", (8, 9)), (True, (3, 7))]
    index = index_remote(iter(remote[:2]), DiffOptions("id", case_insensitive=True, mode="replace"))
    assert Planner(index, DiffOptions("id", mode="replace")).finish() == [8, 9]  # orphan 8, then healing 9


def test_the_index_keeps_a_fraction_of_the_data() -> None:
    import tracemalloc

    from fliplet_workers.core.diff import index_remote

    n = 20_000
    # made as they stream in (as the JSON parser does), so what the index keeps of them is counted
    remote = (entry(10_000_000 + i, id=i, email=f"user{i}@example.org", name=f"User {i}", score=i % 97,
                    updatedAt=f"2024-01-01T00:00:{i % 60:02d}.000Z") for i in range(n))
    tracemalloc.start()
    index = index_remote(iter(remote), DiffOptions("id", timestamp_column="updatedAt"))
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert index.count == n and size / n < 250, size / n  # the whole data took ~600 bytes per entry


def test_codes_of_rows_match_the_index_whatever_the_path() -> None:
    """The codes (issue 9: text by Python's string hash, small whole numbers exactly, the rest by
    BLAKE2b) say "equal" exactly where the data would, on the fast path (the row has the entry's
    columns in its order) and column by column (other order, ignored columns, subclasses)."""
    class Text(str):
        pass

    class Number(int):
        pass

    remote = entry(10, id=1, a="", b=0, c=-1, d=2**55, e=-(2**55) - 1, f=2**80, g="x" * 100, h=None, i=False)
    same = {"id": 1, "a": "", "b": 0, "c": -1, "d": 2**55, "e": -(2**55) - 1, "f": 2**80, "g": "x" * 100,
            "h": None, "i": False}
    assert run_diff([same], [remote]).unchanged == 1  # the fast path
    assert run_diff([dict(reversed(same.items()))], [remote]).unchanged == 1  # column by column
    assert run_diff([{**same, "a": Text(""), "b": Number(0)}], [remote]).unchanged == 1  # subclasses
    assert run_diff([{**same, "g": "changed"}], [remote], ignore_columns=frozenset({"g"})).unchanged == 1
    for column, value in (("a", 0), ("b", ""), ("c", -2), ("d", 2**55 + 1), ("e", -(2**55)), ("f", 2**80 + 1),
                          ("g", "x" * 99), ("h", 0), ("i", 0), ("i", None), ("b", False)):
        for row in ({**same, column: value}, dict(reversed({**same, column: value}.items()))):
            assert len(run_diff([row], [remote]).updates) == 1, (column, value)


def test_a_note_with_lines_gets_the_same_lines_in_fewer_calls() -> None:
    """The agent's log takes a row's two lines in one call (``note.lines``): same lines, same order."""
    rows: list[dict[str, Any]] = [{"id": 1, "v": "a"}, {"id": 2, "v": "changed"}, {"id": 3, "gone": True}, {"id": 4}]
    remote = [entry(5, id=1, v="a"), entry(6, id=2, v="b"), entry(7, id=3)]
    options = DiffOptions("id", delete_column="gone")
    one_by_one: list[str] = []
    diff(rows, iter(remote), options, note=one_by_one.append)
    calls: list[tuple[str, ...]] = []

    def note(message: str) -> None:
        calls.append((message,))

    note.lines = lambda *messages: calls.append(messages)  # type: ignore[attr-defined]
    diff(rows, iter(remote), options, note=note)
    assert [line for call in calls for line in call] == one_by_one
    assert len(calls) == 4 and one_by_one[:2] == ["Row 1 already exists on Fliplet servers with ID 5",
                                                  "Row 1 already exists on Fliplet servers with ID 5 and does not "
                                                  "require updating."]
    assert one_by_one[3] == "Row 2 has been marked for updating."
    assert one_by_one[5] == "Row 3 has been marked for deletion on Fliplet servers with ID 7."
