"""Read-only views of the store for the console page and ``/_sandbox/state``.

Why apart from the store's API methods: these answer a person looking at the sandbox, not the agent,
so they page, search and summarise (entry counts, the last change, the commit log newest first), and
they show a token only what the API would give it: data sources it may read, and their commits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from fliplet_workers.sandbox.basics import SandboxError
from fliplet_workers.sandbox.commit_log import CommitLog, CommitRecord, column_rows

Entry = dict[str, Any]
#: The most entries or commits one console request may ask for.
MAX_PAGE = 500


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def matches(entry: Mapping[str, Any], needle: str) -> bool:
    """The console's search: the entry id (``12`` or ``#12``), or text inside any column's value
    (case-insensitive; numbers and objects as their JSON text)."""
    if needle.lstrip("#") == str(entry["id"]):
        return True
    return any(needle in _text(value).casefold() for value in entry["data"].values() if value is not None)


def _columns(entries: list[Entry]) -> list[str]:
    seen: dict[str, None] = {}
    for entry in entries:
        seen.update(dict.fromkeys(entry["data"]))
    return list(seen)


class StoreViews:
    """The console's half of :class:`~fliplet_workers.sandbox.store.Store` (a mixin over its state)."""

    _lock: threading.Lock
    _version: int
    _orgs: dict[int, dict[str, Any]]
    _sources: dict[int, dict[str, Any]]
    _access: dict[int, set[str]]
    _entries: dict[int, dict[int, Entry]]
    _commit_counts: dict[int, int]
    _applied_counts: dict[int, int]
    _changed_at: dict[int, str]
    _log: CommitLog
    _folders: dict[int, dict[str, Any]]
    _files: dict[int, dict[str, Any]]

    # provided by the Store
    _user: Callable[[str | None], dict[str, Any]]
    _source: Callable[[str, int], dict[str, Any]]

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


    # ---------------------------------------------------------------------------------- console

    @property
    def version(self) -> int:
        """A number that grows with every change (the console polls it to know when to refresh)."""
        with self._lock:
            return self._version

    def _readable(self, token: str) -> list[int]:
        self._user(token)
        return [ds_id for ds_id in self._sources if token in self._access[ds_id]]

    def console_index(self, token: str) -> dict[str, Any]:
        """Each data source ``token`` may read, with its entry count, last change and commits."""
        with self._lock:
            readable = self._readable(token)
            sources = [{**self._sources[ds_id], "entries": len(self._entries[ds_id]),
                        "lastChange": self._changed_at.get(ds_id, self._sources[ds_id]["updatedAt"]),
                        "commits": self._commit_counts.get(ds_id, 0),
                        "appliedCommits": self._applied_counts.get(ds_id, 0)} for ds_id in readable]
            logged = len(self._log.newest_first(readable))
            return {"version": self._version, "dataSources": sources, "loggedCommits": logged}

    def entries_page(self, token: str, ds_id: int, search: str = "", offset: int = 0,
                     limit: int = 50) -> dict[str, Any]:
        """One page of a data source's entries, by id, those matching ``search`` only (see :func:`matches`)."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._lock:
            source = dict(self._source(token, ds_id))
            rows = list(self._entries[ds_id].values())
            version = self._version
        needle = search.strip().casefold()
        hits = [e for e in rows if matches(e, needle)] if needle else rows
        page = hits[offset:offset + limit]
        return {"version": version, "dataSource": source, "total": len(rows), "matched": len(hits),
                "offset": offset, "limit": limit, "search": search, "columns": _columns(page), "entries": page}

    def commit_page(self, token: str, ds_id: int | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """The commit log, newest first: those of the data sources ``token`` may read (or of ``ds_id``)."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._lock:
            readable = self._readable(token)
            if ds_id is not None:
                self._source(token, ds_id)
                readable = [ds_id]
            records = self._log.newest_first(readable)
            page = [r.summary(self._sources.get(r.ds_id, {}).get("name", "")) for r in records[offset:offset + limit]]
            return {"version": self._version, "total": len(records), "offset": offset, "limit": limit,
                    "dataSourceId": ds_id, "commits": page}

    def commit_detail(self, token: str, seq: int, offset: int = 0, limit: int = MAX_PAGE) -> dict[str, Any]:
        """One commit with a page of its entries' changes, column by column (404 when the token may
        not read its data source)."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._lock:
            readable = self._readable(token)
            record: CommitRecord | None = self._log.find(seq)
            if record is None or record.ds_id not in readable:
                raise SandboxError(404, f"Commit {seq} is not in the commit log")
            summary = record.summary(self._sources.get(record.ds_id, {}).get("name", ""))
            changes = record.details()[offset:offset + limit]
        summary.update(changesOffset=offset, changesLimit=limit, changes=[
            {"op": c[0], "entryId": c[1], "sameColumns": c[4], "columns": column_rows(c)} for c in changes])
        return summary
