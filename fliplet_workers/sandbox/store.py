"""The sandbox's data: an in-memory model of the bits of Fliplet the agent touches.

Why a hand-written store rather than SQLite: the sandbox must answer ``GET .../data`` for a million
entries in well under a second and apply a 1000-entry commit in milliseconds, and it must be easy to
inspect from tests. Plain dicts keyed by id, behind one lock, do both.

Two rules keep concurrent readers safe without holding the lock while they serialise:

* an entry dict (and its ``data`` dict) is never mutated once stored: an update stores a *new* entry
  dict, so a snapshot (a list of references) taken under the lock stays consistent afterwards;
* persistence snapshots under the lock too, then serialises and writes outside it.

Persistence (optional): one JSON file, loaded at start and written atomically (tmp + rename) by a
background thread at most every couple of seconds when something changed, and on stop. Uploaded file
bytes go to a ``<data file>.media/`` directory next to it. Commit bodies are kept in memory only (the
last 1000 per data source); their counters are persisted.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

log = logging.getLogger("fliplet_workers.sandbox")

#: The demo token printed by ``fliplet-agent sandbox``: it can read and write data sources 1 and 2.
DEMO_TOKEN = "eu--sandbox-token"
#: A valid token (``GET v1/user`` works) that has access to no data source: for 403 tests.
NO_ACCESS_TOKEN = "eu--no-access-token"

#: How many commit bodies are remembered per data source (older ones are forgotten, still counted).
COMMIT_LOG_SIZE = 1000
#: Format version of the persisted JSON file.
FILE_VERSION = 1

Entry = dict[str, Any]
Predicate = Callable[[Mapping[str, Any]], bool]


class SandboxError(Exception):
    """A request the sandbox refuses: becomes ``{"message": ...}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> SandboxError:
    return SandboxError(400, message)


def now_iso() -> str:
    """UTC time as a JavaScript ``Date.toJSON()`` gives it: ``2024-01-31T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _as_id(value: Any, what: str) -> int:
    """Accept an int id, or a string of digits as Fliplet does; refuse anything else."""
    if isinstance(value, bool):
        raise bad_request(f"Invalid {what}: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise bad_request(f"Invalid {what}: {value!r}")


# --------------------------------------------------------------------------------------- queries

_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _like_regex(pattern: Any, ignore_case: bool) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise bad_request("$like needs a string pattern")
    parts = []
    for char in pattern:
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _compare(op: Callable[[Any, Any], bool], arg: Any) -> Predicate:
    def pred(value: Any) -> bool:
        if value is None or arg is None:
            return False
        try:
            return bool(op(value, arg))
        except TypeError:  # "a" > 1: SQL would not match either
            return False

    return pred


def _operator(op: str, arg: Any) -> Callable[[Any], bool]:
    """One Sequelize operator applied to a column value."""
    if op == "$eq":
        return lambda v: v == arg
    if op == "$ne":
        return lambda v: v != arg
    if op in ("$in", "$notIn", "$nin"):
        if not isinstance(arg, list):
            raise bad_request(f"{op} needs a list")
        keys = list(arg)
        if op == "$in":
            return lambda v: v in keys
        return lambda v: v not in keys
    if op in _COMPARATORS:
        return _compare(_COMPARATORS[op], arg)
    if op in ("$like", "$iLike", "$notLike", "$notILike"):
        rx = _like_regex(arg, ignore_case=op.lower().endswith("ilike"))
        negate = op.startswith("$not")

        def like(v: Any) -> bool:
            hit = v is not None and rx.fullmatch(v if isinstance(v, str) else str(v)) is not None
            return hit != negate

        return like
    raise bad_request(f"Unsupported query operator: {op}")


def _column_predicate(column: str, cond: Any) -> Predicate:
    if isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
        tests = [_operator(op, arg) for op, arg in cond.items()]
    elif isinstance(cond, list):
        tests = [_operator("$in", cond)]
    else:
        tests = [_operator("$eq", cond)]
    return lambda data: all(test(data.get(column)) for test in tests)


def compile_where(where: Any) -> Predicate:
    """Turn a Sequelize-style ``where`` on data columns into a predicate on an entry's ``data``.

    Supports ``{"col": value}``, a list value (``IN``), the operators ``$eq $ne $in $notIn $gt $gte
    $lt $lte $like $iLike $notLike $notILike`` and the combinators ``$or`` / ``$and`` (lists of wheres).
    """
    if where is None:
        return lambda data: True
    if not isinstance(where, dict):
        raise bad_request("where must be an object")
    preds: list[Predicate] = []
    for key, cond in where.items():
        if key in ("$or", "$and"):
            if not isinstance(cond, list):
                raise bad_request(f"{key} needs a list")
            subs = [compile_where(c) for c in cond]
            preds.append(_any_of(subs) if key == "$or" else _all_of(subs))
        elif key.startswith("$"):
            raise bad_request(f"Unsupported query operator: {key}")
        else:
            preds.append(_column_predicate(key, cond))
    return _all_of(preds)


def _any_of(preds: list[Predicate]) -> Predicate:
    return lambda data: any(p(data) for p in preds)


def _all_of(preds: list[Predicate]) -> Predicate:
    return lambda data: all(p(data) for p in preds)


def _non_negative(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{what} must be a non-negative integer")
    return value


# ----------------------------------------------------------------------------------------- store


class Store:
    """Thread-safe model of organizations, users and tokens, data sources, entries and media.

    Methods named after API calls take the caller's token and raise :class:`SandboxError` for
    401/403/404/400; helper methods (``create_data_source``, ``entries``, ``add_token``...) are for
    tests and the CLI and trust their caller.
    """

    def __init__(self, data_file: str | os.PathLike[str] | None = None) -> None:
        self.data_file = Path(data_file) if data_file else None
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._dirty = False
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
        self._commit_log: dict[int, deque[Any]] = {}
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

    # ------------------------------------------------------------------------ users and tokens

    def _add_token(self, token: str, email: str, ds_ids: Iterable[int], full_name: str | None = None) -> None:
        user = next((u for u in self._users.values() if u["email"] == email), None)
        if user is None:
            name = full_name or email.split("@")[0]
            first, _, last = name.partition(" ")
            uid = self._take("user")
            user = {"id": uid, "email": email, "fullName": name, "firstName": first, "lastName": last,
                    "organizationIds": [1]}
            self._users[uid] = user
        self._tokens[token] = user["id"]
        for ds_id in ds_ids:
            if ds_id not in self._sources:
                raise KeyError(f"data source {ds_id} does not exist")
            self._access[ds_id].add(token)

    def add_token(self, token: str, user_email: str, datasource_ids: Iterable[int] = ()) -> None:
        """Make ``token`` valid for the user ``user_email`` (created in org 1 if new), with access to
        the given data sources."""
        with self._lock:
            self._add_token(token, user_email, list(datasource_ids))
            self._dirty = True

    def _user(self, token: str | None) -> dict[str, Any]:
        uid = self._tokens.get(token) if token else None
        if uid is None:
            raise SandboxError(401, "Invalid or expired token")
        return self._users[uid]

    def user_for_token(self, token: str | None) -> dict[str, Any] | None:
        with self._lock:
            uid = self._tokens.get(token) if token else None
            return None if uid is None else self._public_user(self._users[uid])

    @staticmethod
    def _public_user(user: Mapping[str, Any]) -> dict[str, Any]:
        return {k: user[k] for k in ("id", "email", "fullName", "firstName", "lastName")}

    def _check_org(self, token: str, org_id: Any) -> int:
        user = self._user(token)
        oid = _as_id(org_id, "organizationId")
        if oid not in self._orgs:
            raise SandboxError(404, f"Organization {oid} not found")
        if oid not in user["organizationIds"]:
            raise SandboxError(403, f"You don't have access to organization {oid}")
        return oid

    def organizations(self, token: str) -> list[dict[str, Any]]:
        with self._lock:
            user = self._user(token)
            return [dict(self._orgs[o]) for o in user["organizationIds"] if o in self._orgs]

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
        self._dirty = True
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
            oid = _as_id(org_id, "organizationId") if org_id else None
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

    def record_commit(self, ds_id: int, body: Any) -> None:
        """Remember a commit body as received (before faults and validation), bounded in memory."""
        with self._lock:
            log_ = self._commit_log.setdefault(ds_id, deque(maxlen=COMMIT_LOG_SIZE))
            log_.append(body)
            self._commit_counts[ds_id] = self._commit_counts.get(ds_id, 0) + 1
            self._dirty = True

    def commits(self, ds_id: int) -> list[Any]:
        """The last (up to 1000) commit bodies received for ``ds_id``, oldest first (copies)."""
        with self._lock:
            bodies = list(self._commit_log.get(ds_id, ()))
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

        The whole body is validated first, so a 400 changes nothing.
        """
        if not isinstance(body, dict):
            raise bad_request("The commit body must be a JSON object")
        items = body.get("entries", [])
        deletes = body.get("delete") or []
        if not isinstance(items, list) or not isinstance(deletes, list):
            raise bad_request("entries and delete must be lists")
        append = bool(body.get("append", False))
        extend = bool(body.get("extend", False))
        parsed: list[tuple[int | None, dict[str, Any]]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
                raise bad_request("Each entry must be an object with a data object")
            raw_id = item.get("id")
            parsed.append((None if raw_id is None else _as_id(raw_id, "entry id"), item["data"]))
        delete_ids = [_as_id(d, "entry id to delete") for d in deletes]

        with self._lock:
            self._source(token, ds_id)
            table = self._entries[ds_id]
            for entry_id, _data in parsed:
                if entry_id is not None and entry_id not in table:
                    raise bad_request(f"Entry {entry_id} does not exist in data source {ds_id}")
            stamp = now_iso()
            affected: list[Entry] = []
            for entry_id, data in parsed:
                if entry_id is None:
                    entry_id = self._take("entry")
                    entry = {"id": entry_id, "dataSourceId": ds_id, "data": data,
                             "createdAt": stamp, "updatedAt": stamp}
                else:
                    old = table[entry_id]
                    new_data = {**old["data"], **data} if extend else data
                    entry = {**old, "data": new_data, "updatedAt": stamp}
                table[entry_id] = entry
                affected.append(entry)
            if not append:
                kept = {e["id"] for e in affected}
                self._entries[ds_id] = table = {k: v for k, v in table.items() if k in kept}
            for entry_id in delete_ids:
                table.pop(entry_id, None)
            self._applied_counts[ds_id] = self._applied_counts.get(ds_id, 0) + 1
            self._dirty = True
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
        self._dirty = True
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
            self._dirty = True
            return entry

    def delete_entry(self, token: str, ds_id: int, entry_id: int) -> Entry:
        """``DELETE v1/data-sources/:id/data/:entryId``: remove one entry; returns what was removed."""
        with self._lock:
            entry = self._entry(token, ds_id, entry_id)
            del self._entries[ds_id][entry_id]
            self._dirty = True
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
            if not append and not bool(body.get("append", False)):
                self._entries[ds_id] = {}
            stamp = now_iso()
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
        offset = _non_negative(body.get("offset"), "offset") or 0
        limit = _non_negative(body.get("limit"), "limit")
        rows = self.snapshot(token, ds_id)
        hits = [e for e in rows if match(e["data"])]
        hits = hits[offset:] if limit is None else hits[offset:offset + limit]
        if attributes is not None:
            hits = [{**e, "data": {a: e["data"][a] for a in attributes if a in e["data"]}} for e in hits]
        return hits

    # ---------------------------------------------------------------------------------- media

    def _public_file(self, f: Mapping[str, Any], base_url: str) -> dict[str, Any]:
        out = dict(f)
        out["url"] = f"{base_url}media/files/{f['id']}/{quote(f['name'])}"
        return out

    def media(self, token: str, org_id: Any, folder_id: Any, base_url: str) -> dict[str, Any]:
        """Folders and files of one folder (or the organization root when ``folder_id`` is None)."""
        with self._lock:
            oid = self._check_org(token, org_id)
            fid = None if folder_id in (None, "") else _as_id(folder_id, "folderId")
            if fid is not None:
                folder = self._folders.get(fid)
                if folder is None or folder["organizationId"] != oid:
                    raise SandboxError(404, f"Folder {fid} not found")
            folders = [dict(f) for f in self._folders.values()
                       if f["organizationId"] == oid and f["parentId"] == fid]
            files = [self._public_file(f, base_url) for f in self._files.values()
                     if f["organizationId"] == oid and f["folderId"] == fid]
            return {"folders": folders, "files": files}

    def create_folder(self, token: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            raise bad_request("A folder needs a name")
        with self._lock:
            oid = self._check_org(token, body.get("organizationId"))
            parent = body.get("parentId")
            pid = None if parent is None else _as_id(parent, "parentId")
            if pid is not None and pid not in self._folders:
                raise SandboxError(404, f"Folder {pid} not found")
            fid = self._take("folder")
            folder = {"id": fid, "name": body["name"], "organizationId": oid, "parentId": pid,
                      "createdAt": now_iso()}
            self._folders[fid] = folder
            self._dirty = True
            return dict(folder)

    def add_file(self, token: str, org_id: Any, folder_id: Any, name: str, content: bytes,
                 content_type: str, client_checksum: str | None, base_url: str) -> dict[str, Any]:
        """Store one uploaded file; its ``metadata.checksum`` is the md5 of the bytes."""
        if not name or "/" in name:
            raise bad_request("The file needs a name without slashes")
        with self._lock:
            oid = self._check_org(token, org_id)
            fid = None if folder_id in (None, "") else _as_id(folder_id, "folderId")
            if fid is not None and (fid not in self._folders or self._folders[fid]["organizationId"] != oid):
                raise SandboxError(404, f"Folder {fid} not found")
            file_id = self._take("file")
            record = {"id": file_id, "name": name, "folderId": fid, "organizationId": oid,
                      "size": len(content), "contentType": content_type, "createdAt": now_iso(),
                      "metadata": {"checksum": hashlib.md5(content).hexdigest(),
                                   "clientChecksum": client_checksum}}
            self._files[file_id] = record
            self._blobs[file_id] = content
            self._dirty = True
            return self._public_file(record, base_url)

    def file_content(self, token: str, file_id: int, name: str) -> tuple[str, bytes]:
        """(content type, bytes) of an uploaded file, for a token of a member of the file's
        organization (401/403 otherwise); 404 unless both id and name match."""
        with self._lock:
            self._user(token)
            record = self._files.get(file_id)
            if record is None or record["name"] != name or file_id not in self._blobs:
                raise SandboxError(404, "File not found")
            self._check_org(token, record["organizationId"])
            return record["contentType"], self._blobs[file_id]

    # ---------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """A summary for ``GET /_sandbox/state`` and the HTML page."""
        with self._lock:
            return {
                "dataSources": [
                    {**s, "entries": len(self._entries[ds_id]),
                     "commits": self._commit_counts.get(ds_id, 0),
                     "appliedCommits": self._applied_counts.get(ds_id, 0)}
                    for ds_id, s in self._sources.items()],
                "organizations": list(self._orgs.values()),
                "media": {"folders": len(self._folders), "files": len(self._files)},
            }

    def preview(self, token: str, limit: int) -> list[tuple[dict[str, Any], int, list[Entry]]]:
        """(data source, entry count, first ``limit`` entries) for every data source ``token`` may read
        (the HTML page shows a user only what the API would give them)."""
        with self._lock:
            self._user(token)
            out = []
            for ds_id, s in self._sources.items():
                if token not in self._access[ds_id]:
                    continue
                table = self._entries[ds_id]
                first: list[Entry] = []
                for entry in table.values():
                    if len(first) >= limit:
                        break
                    first.append(entry)
                out.append((dict(s), len(table), first))
            return out

    # ---------------------------------------------------------------------------- persistence

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _media_dir(self) -> Path:
        assert self.data_file is not None
        return self.data_file.with_name(self.data_file.name + ".media")

    def _load(self, path: Path) -> None:
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read the sandbox data file {path}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
            raise ValueError(f"{path} is not a sandbox data file (version {FILE_VERSION})")
        self._next = {k: int(v) for k, v in doc["next"].items()}
        self._orgs = {o["id"]: o for o in doc["organizations"]}
        self._users = {u["id"]: u for u in doc["users"]}
        self._tokens = dict(doc["tokens"])
        self._sources = {}
        self._access = {}
        self._entries = {}
        for s in doc["dataSources"]:
            tokens = s.pop("accessTokens")
            self._sources[s["id"]] = s
            self._access[s["id"]] = set(tokens)
            self._entries[s["id"]] = {e["id"]: e for e in doc["entries"].get(str(s["id"]), [])}
        self._commit_counts = {int(k): v for k, v in doc.get("commitCounts", {}).items()}
        self._applied_counts = {int(k): v for k, v in doc.get("appliedCommitCounts", {}).items()}
        self._folders = {f["id"]: f for f in doc.get("folders", [])}
        self._files = {f["id"]: f for f in doc.get("files", [])}
        media = self._media_dir()
        for file_id in self._files:
            blob = media / str(file_id)
            if blob.exists():
                self._blobs[file_id] = blob.read_bytes()
                self._blobs_on_disk.add(file_id)
        self._dirty = False
        log.debug("Loaded sandbox data from %s", path)

    def save(self) -> None:
        """Write the data file atomically if one is configured (no-op otherwise)."""
        if self.data_file is None:
            return
        with self._save_lock:
            with self._lock:
                doc = {
                    "version": FILE_VERSION,
                    "next": dict(self._next),
                    "organizations": list(self._orgs.values()),
                    "users": list(self._users.values()),
                    "tokens": dict(self._tokens),
                    "dataSources": [{**s, "accessTokens": sorted(self._access[i])}
                                    for i, s in self._sources.items()],
                    "entries": {str(i): list(t.values()) for i, t in self._entries.items()},
                    "commitCounts": {str(k): v for k, v in self._commit_counts.items()},
                    "appliedCommitCounts": {str(k): v for k, v in self._applied_counts.items()},
                    "folders": list(self._folders.values()),
                    "files": list(self._files.values()),
                }
                new_blobs = {i: b for i, b in self._blobs.items() if i not in self._blobs_on_disk}
                live_blobs = set(self._blobs)
                self._dirty = False
            try:
                self._write(doc, new_blobs, live_blobs)
            except BaseException:
                self._dirty = True
                raise

    def _write(self, doc: dict[str, Any], new_blobs: dict[int, bytes], live_blobs: set[int]) -> None:
        assert self.data_file is not None
        media = self._media_dir()
        if new_blobs or media.exists():
            media.mkdir(parents=True, exist_ok=True)
            for file_id, blob in new_blobs.items():
                _atomic_write(media / str(file_id), blob)
            for stale in media.iterdir():
                if stale.name.isdigit() and int(stale.name) not in live_blobs:
                    stale.unlink()
        _atomic_write(self.data_file, orjson.dumps(doc))
        with self._lock:
            self._blobs_on_disk = (self._blobs_on_disk | set(new_blobs)) & live_blobs
        log.debug("Saved sandbox data to %s", self.data_file)

    def start_autosave(self, interval: float = 2.0) -> None:
        """Save from a background thread at most every ``interval`` seconds, when dirty.

        Serialising holds the GIL, so a big store is saved less often: the pause after a save is at
        least ten times what the save took (a million entries: every ~15 s instead of every 2 s).
        """
        if self.data_file is None or self._autosave_thread is not None:
            return
        self._autosave_stop.clear()

        def loop() -> None:
            pause = interval
            while not self._autosave_stop.wait(pause):
                if not self._dirty:
                    continue
                started = time.monotonic()
                try:
                    self.save()
                except Exception:  # keep serving; the next round retries
                    log.exception("Cannot save the sandbox data file %s", self.data_file)
                pause = max(interval, 10 * (time.monotonic() - started))

        self._autosave_thread = threading.Thread(target=loop, name="sandbox-autosave", daemon=True)
        self._autosave_thread.start()

    def stop_autosave(self) -> None:
        thread, self._autosave_thread = self._autosave_thread, None
        if thread is not None:
            self._autosave_stop.set()
            thread.join()


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
