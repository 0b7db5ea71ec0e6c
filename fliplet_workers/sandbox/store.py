"""The sandbox's data: an in-memory model of the bits of Fliplet the agent touches.

Why a hand-written store rather than SQLite: the sandbox must answer ``GET .../data`` for a million
entries in well under a second and apply a 1000-entry commit in milliseconds, and it must be easy to
inspect from tests. Plain dicts keyed by id, behind one lock, do both.

Two rules keep concurrent readers safe without holding the lock while they serialise:

* an entry dict (and its ``data`` dict) is never mutated once stored: an update stores a *new* entry
  dict, so a snapshot (a list of references) taken under the lock stays consistent afterwards, and the
  commit log can keep references to the data before and after a change for free;
* persistence snapshots under the lock too, then serialises and writes outside it.

The class is assembled from parts named for their idea: users and tokens (:mod:`.accounts`), media
(:mod:`.media`), the state file
(:mod:`.persist`), the console's read-only views (:mod:`.views`); every commit is logged by
:mod:`.commit_log`; ``where`` queries are :mod:`.query`.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from fliplet_workers.sandbox.accounts import StoreAccounts
from fliplet_workers.sandbox.basics import SandboxError, as_id, bad_request, non_negative, now_iso
from fliplet_workers.sandbox.commit_log import LOG_SIZE, UNREDUCED, ChangeSet, CommitLog, CommitRecord
from fliplet_workers.sandbox.media_library import StoreMedia
from fliplet_workers.sandbox.persist import FILE_VERSION, StorePersistence
from fliplet_workers.sandbox.query import Predicate, compile_where, select
from fliplet_workers.sandbox.views import StoreViews

log = logging.getLogger("fliplet_workers.sandbox")

#: The demo token printed by ``fliplet-agent sandbox``: it can read and write data sources 1 and 2.
DEMO_TOKEN = "eu--sandbox-token"
#: A valid token (``GET v1/user`` works) that has access to no data source: for 403 tests.
NO_ACCESS_TOKEN = "eu--no-access-token"

#: How many commits are remembered (all data sources together; older ones are forgotten, still counted).
COMMIT_LOG_SIZE = LOG_SIZE

Entry = dict[str, Any]

__all__ = [
    "COMMIT_LOG_SIZE", "DEMO_TOKEN", "FILE_VERSION", "NO_ACCESS_TOKEN", "Entry", "Predicate", "SandboxError",
    "Store", "bad_request", "compile_where", "now_iso",
]


class Store(StoreAccounts, StoreMedia, StorePersistence, StoreViews):
    """Thread-safe model of organizations, users and tokens, data sources, entries, media and the
    commit log.

    Methods named after API calls take the caller's token and raise :class:`SandboxError` for
    401/403/404/400; helper methods (``create_data_source``, ``entries``, ``add_token``...) are for
    tests and the CLI and trust their caller.
    """

    def __init__(self, data_file: str | os.PathLike[str] | None = None) -> None:
        self.data_file = Path(data_file) if data_file else None
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._dirty = False
        self._version = 0
        self._autosave_stop = threading.Event()
        self._autosave_thread: threading.Thread | None = None
        self._seed()
        if self.data_file and self.data_file.exists():
            self._load(self.data_file)
        else:
            self._dirty = self.data_file is not None

    # ---------------------------------------------------------------------------- seed and reset

    def _seed(self) -> None:
        """The default world: one org, the demo user and token, a no-access token, two data sources."""
        self._next: dict[str, int] = {"entry": 1, "dataSource": 1, "user": 1, "folder": 1, "file": 1}
        self._orgs: dict[int, dict[str, Any]] = {1: {"id": 1, "name": "Sandbox org"}}
        self._users: dict[int, dict[str, Any]] = {}
        self._tokens: dict[str, int] = {}
        self._sources: dict[int, dict[str, Any]] = {}
        self._access: dict[int, set[str]] = {}
        self._entries: dict[int, dict[int, Entry]] = {}
        self._log = CommitLog()
        self._changed_at: dict[int, str] = {}
        self._commit_counts: dict[int, int] = {}
        self._applied_counts: dict[int, int] = {}
        self._folders: dict[int, dict[str, Any]] = {}
        self._files: dict[int, dict[str, Any]] = {}
        self._blobs: dict[int, bytes] = {}
        self._blobs_on_disk: set[int] = set()
        self._add_token(DEMO_TOKEN, "sandbox@example.com", (), full_name="Sandbox User")
        self._add_token(NO_ACCESS_TOKEN, "no-access@example.com", (), full_name="No Access")
        self._create_data_source("Users", 1, (DEMO_TOKEN,), None)
        self._create_data_source("Demo", 1, (DEMO_TOKEN,), None)

    def reset(self) -> None:
        """Forget everything and go back to the default seed (the data file is rewritten on save)."""
        with self._lock:
            self._seed()
            self._dirty = True
            self._version += 1

    def _touch(self, ds_id: int, stamp: str | None = None) -> None:
        """Something in ``ds_id`` changed: mark it for saving, and for the console's refresh."""
        self._changed_at[ds_id] = stamp or now_iso()
        self._dirty = True
        self._version += 1

    # --------------------------------------------------------------------------- data sources

    def _take(self, counter: str) -> int:
        value = self._next[counter]
        self._next[counter] = value + 1
        return value

    def _create_data_source(self, name: str, org_id: int, tokens: Iterable[str], type_: str | None) -> int:
        if org_id not in self._orgs:
            raise KeyError(f"organization {org_id} does not exist")
        ds_id = self._take("dataSource")
        stamp = now_iso()
        self._sources[ds_id] = {"id": ds_id, "name": name, "type": type_, "organizationId": org_id,
                                "createdAt": stamp, "updatedAt": stamp}
        self._access[ds_id] = set(tokens)
        self._entries[ds_id] = {}
        self._touch(ds_id, stamp)
        return ds_id

    def create_data_source(self, name: str, org_id: int = 1, tokens: Iterable[str] = (DEMO_TOKEN,),
                           type: str | None = None) -> int:
        """Create a data source reachable with ``tokens``; returns its id. (``type`` is Fliplet's
        field name, e.g. "keystore".)"""
        with self._lock:
            return self._create_data_source(name, org_id, tokens, type)

    def _source(self, token: str, ds_id: int) -> dict[str, Any]:
        self._user(token)
        source = self._sources.get(ds_id)
        if source is None:
            raise SandboxError(404, f"Data source {ds_id} not found")
        if token not in self._access[ds_id]:
            raise SandboxError(403, f"You don't have access to data source {ds_id} with this token")
        return source

    def check_source(self, token: str, ds_id: int) -> None:
        """Raise 401/404/403 unless ``token`` may use data source ``ds_id``."""
        with self._lock:
            self._source(token, ds_id)

    def list_data_sources(self, token: str, type_: str | None = None,
                          org_id: str | None = None) -> list[dict[str, Any]]:
        """The data sources this token can use, optionally filtered by ``type`` and organization."""
        with self._lock:
            self._user(token)
            oid = as_id(org_id, "organizationId") if org_id else None
            return [dict(s) for ds_id, s in self._sources.items()
                    if token in self._access[ds_id]
                    and (type_ is None or s["type"] == type_)
                    and (oid is None or s["organizationId"] == oid)]

    def create_data_source_for(self, token: str, body: Any) -> dict[str, Any]:
        """``POST v1/data-sources``: the new data source is reachable with the creating token."""
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            raise bad_request("A data source needs a name")
        type_ = body.get("type")
        if type_ is not None and not isinstance(type_, str):
            raise bad_request("type must be a string")
        with self._lock:
            user = self._user(token)
            org = body.get("organizationId", user["organizationIds"][0])
            oid = self._check_org(token, org)
            ds_id = self._create_data_source(body["name"], oid, (token,), type_)
            return dict(self._sources[ds_id])

    # -------------------------------------------------------------------------------- entries

    def snapshot(self, token: str, ds_id: int) -> list[Entry]:
        """All entries of a data source, by id. The list is the caller's; the entries are shared and
        immutable (see the module docstring), so it can be serialised without the lock."""
        with self._lock:
            self._source(token, ds_id)
            return list(self._entries[ds_id].values())

    def entries(self, ds_id: int) -> list[Entry]:
        """A copy of every entry of ``ds_id`` (for tests). Unknown id → KeyError."""
        with self._lock:
            return [copy.deepcopy(e) for e in self._entries[ds_id].values()]

    # ---------------------------------------------------------------------------------- commits

    def record_commit(self, ds_id: int, body: Any) -> int:
        """Log a commit body as received (before faults and validation); returns its number in the
        commit log. Hand the same body object to :meth:`commit` and the log shows what it changed."""
        with self._lock:
            record = self._log.received(ds_id, body, now_iso())
            self._commit_counts[ds_id] = self._commit_counts.get(ds_id, 0) + 1
            self._dirty = True
            self._version += 1
            return record.seq

    def note_commit(self, seq: int, message: str) -> None:
        """Add a note to a logged commit (e.g. the fault injected into its answer)."""
        with self._lock:
            record = self._log.find(seq)
            if record is not None:
                record.message = f"{record.message}; {message}" if record.message else message
                self._dirty = True
                self._version += 1

    def commits(self, ds_id: int) -> list[Any]:
        """The bodies received for ``ds_id`` among the last 1000 commits (all data sources together),
        oldest first (copies; kept in memory only, so none after a restart)."""
        with self._lock:
            bodies = self._log.bodies(ds_id)
        return [orjson.loads(orjson.dumps(b)) for b in bodies]

    def commit_count(self, ds_id: int) -> int:
        """How many commit requests were received for ``ds_id`` (including failed or dropped ones)."""
        with self._lock:
            return self._commit_counts.get(ds_id, 0)

    def applied_commit_count(self, ds_id: int) -> int:
        """How many commits were actually applied to ``ds_id``."""
        with self._lock:
            return self._applied_counts.get(ds_id, 0)

    def commit(self, token: str, ds_id: int, body: Any) -> list[Entry]:
        """Apply a commit with Fliplet's semantics; returns the inserted and updated entries.

        The whole body is validated first, so a 400 changes nothing. The commit log gets what changed:
        on the record :meth:`record_commit` made for this body, or on a new one (a direct call).
        """
        with self._lock:
            self._source(token, ds_id)
            record = self._log.pending(ds_id, body) or self._log.received(ds_id, body, now_iso(), via="direct")
            try:
                parsed, delete_ids = _parse_commit(body, self._entries[ds_id], ds_id)
            except SandboxError as exc:
                self._log.refused(record, exc.message)
                self._version += 1
                raise
            return self._apply_commit(ds_id, record, parsed, delete_ids)

    def _apply_commit(self, ds_id: int, record: CommitRecord, parsed: list[tuple[int | None, dict[str, Any]]],
                      delete_ids: list[int]) -> list[Entry]:
        table = self._entries[ds_id]
        stamp = now_iso()
        affected: list[Entry] = []
        changes = ChangeSet()  # updates are reduced later (see commit_log): this is the hot path
        add = changes.add
        for entry_id, data in parsed:
            if entry_id is None:
                entry_id = self._take("entry")
                entry = {"id": entry_id, "dataSourceId": ds_id, "data": data, "createdAt": stamp, "updatedAt": stamp}
                add("insert", entry_id, None, data)
            else:
                old = table[entry_id]
                new_data = {**old["data"], **data} if record.extend else data
                entry = {**old, "data": new_data, "updatedAt": stamp}
                add("update", entry_id, old["data"], new_data, UNREDUCED)
            table[entry_id] = entry
            affected.append(entry)
        inserted = sum(1 for entry_id, _ in parsed if entry_id is None)
        if not record.append:
            kept = {e["id"] for e in affected}
            for k, v in table.items():
                if k not in kept:
                    add("delete", k, v["data"], None)
            self._entries[ds_id] = table = {k: v for k, v in table.items() if k in kept}
        for entry_id in delete_ids:
            gone = table.pop(entry_id, None)
            if gone is not None:
                add("delete", entry_id, gone["data"], None)
        self._applied_counts[ds_id] = self._applied_counts.get(ds_id, 0) + 1
        counts = {"inserted": inserted, "updated": len(parsed) - inserted, "deleted": len(changes) - len(parsed)}
        self._log.applied(record, changes, counts, stamp)
        self._touch(ds_id, stamp)
        return affected

    def put_entry(self, token: str, ds_id: int, data: Any) -> Entry:
        """``PUT v1/data-sources/:id/data``: insert one entry whose data is the body (flat columns)."""
        with self._lock:
            self._source(token, ds_id)
            if not isinstance(data, dict):
                raise bad_request("The body must be a JSON object of column values")
            return self._insert(ds_id, data, now_iso())

    def _insert(self, ds_id: int, data: dict[str, Any], stamp: str) -> Entry:
        entry_id = self._take("entry")
        entry = {"id": entry_id, "dataSourceId": ds_id, "data": data, "createdAt": stamp, "updatedAt": stamp}
        self._entries[ds_id][entry_id] = entry
        self._touch(ds_id, stamp)
        return entry

    def _entry(self, token: str, ds_id: int, entry_id: int) -> Entry:
        """The entry, after the 401/404/403 checks of its data source; 404 when it is not there."""
        self._source(token, ds_id)
        entry = self._entries[ds_id].get(entry_id)
        if entry is None:
            raise SandboxError(404, f"Entry {entry_id} not found in data source {ds_id}")
        return entry

    def get_entry(self, token: str, ds_id: int, entry_id: int) -> Entry:
        """``GET v1/data-sources/:id/data/:entryId``: the entry itself (not wrapped), as Fliplet answers."""
        with self._lock:
            return self._entry(token, ds_id, entry_id)

    def update_entry(self, token: str, ds_id: int, entry_id: int, data: Any) -> Entry:
        """``PUT v1/data-sources/:id/data/:entryId``: merge the given columns into the entry's data.

        Fliplet's single-entry update is a shallow merge (columns not sent are kept, ``null`` is a
        value), which is what the original's pull example relies on when it sends only ``syncedAt``.
        """
        with self._lock:
            old = self._entry(token, ds_id, entry_id)
            if not isinstance(data, dict):
                raise bad_request("The body must be a JSON object of the columns to change")
            entry = {**old, "data": {**old["data"], **data}, "updatedAt": now_iso()}
            self._entries[ds_id][entry_id] = entry  # a new dict: snapshots taken earlier stay as they were
            self._touch(ds_id, entry["updatedAt"])
            return entry

    def delete_entry(self, token: str, ds_id: int, entry_id: int) -> Entry:
        """``DELETE v1/data-sources/:id/data/:entryId``: remove one entry; returns what was removed."""
        with self._lock:
            entry = self._entry(token, ds_id, entry_id)
            del self._entries[ds_id][entry_id]
            self._touch(ds_id)
            return entry

    def import_entries(self, token: str, ds_id: int, body: Any, append: bool) -> list[Entry]:
        """``POST v1/data-sources/:id/data``: Fliplet's bulk import (``append(...)`` / ``replaceWith(...)``
        in its JS API). ``entries`` is a list of flat column objects; without ``append`` (in the body or
        the query string) every existing entry is replaced, as Fliplet does. Validated before anything
        changes, so a 400 changes nothing."""
        with self._lock:
            self._source(token, ds_id)
            if not isinstance(body, dict):
                raise bad_request('The body must be a JSON object: {"entries": [{...}, ...], "append"?: true}')
            items = body.get("entries", [])
            if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                raise bad_request("entries must be a list of objects of column values")
            stamp = now_iso()
            if not append and not bool(body.get("append", False)):
                self._entries[ds_id] = {}
                self._touch(ds_id, stamp)
            return [self._insert(ds_id, item, stamp) for item in items]

    def query(self, token: str, ds_id: int, body: Any) -> list[Entry]:
        """``POST .../data/query``: ``where`` on data columns, ``attributes``, ``offset``, ``limit``.

        ``join`` and ``distinct`` are accepted and ignored.
        """
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise bad_request("The query must be a JSON object")
        match = compile_where(body.get("where"))
        attributes = body.get("attributes")
        if attributes is not None and (
                not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes)):
            raise bad_request("attributes must be a list of column names")
        offset = non_negative(body.get("offset"), "offset") or 0
        limit = non_negative(body.get("limit"), "limit")
        rows = self.snapshot(token, ds_id)
        hits = select(rows, body.get("where"), match)
        hits = hits[offset:] if limit is None else hits[offset:offset + limit]
        if attributes is not None:
            hits = [{**e, "data": {a: e["data"][a] for a in attributes if a in e["data"]}} for e in hits]
        return hits


def _parse_commit(body: Any, table: Mapping[int, Entry],
                  ds_id: int) -> tuple[list[tuple[int | None, dict[str, Any]]], list[int]]:
    """A commit body's (entry id or None, data) pairs and the ids to delete; 400 for anything wrong,
    including an update of an entry that is not there."""
    if not isinstance(body, dict):
        raise bad_request("The commit body must be a JSON object")
    items = body.get("entries", [])
    deletes = body.get("delete") or []
    if not isinstance(items, list) or not isinstance(deletes, list):
        raise bad_request("entries and delete must be lists")
    parsed: list[tuple[int | None, dict[str, Any]]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            raise bad_request("Each entry must be an object with a data object")
        raw_id = item.get("id")
        entry_id = None if raw_id is None else as_id(raw_id, "entry id")
        if entry_id is not None and entry_id not in table:
            raise bad_request(f"Entry {entry_id} does not exist in data source {ds_id}")
        parsed.append((entry_id, item["data"]))
    return parsed, [as_id(d, "entry id to delete") for d in deletes]
