"""Keyed lookups through ``FlipletApi.query`` (``where: {<column>: {$in: [...]}}``, in chunks): the
entries of given keys (an incremental run's remote side), and what an unanswered commit did (which
insert keys exist, which updates the remote already holds).

Why shared: the HTTP client and the in-memory API must answer these two questions identically (the
retry rules in ``core/retry.py`` rest on them), so both call these functions over their own ``query``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the protocol's lookup methods call these functions
    from fliplet_workers.fliplet.api import FlipletApi

__all__ = ["LOOKUP_CHUNK", "find_applied_updates", "find_entries", "find_keys"]

#: Lookups ask for at most this many keys at a time (``$in`` lists stay a sane size).
LOOKUP_CHUNK = 1000


def find_entries(api: FlipletApi, datasource_id: int, column: str, keys: list[Any]) -> Iterator[dict[str, Any]]:
    """Every entry whose ``column`` value is one of ``keys`` (exactly: ``"5"`` is not ``5``), whole,
    asked ``LOOKUP_CHUNK`` keys at a time; no request for no keys."""
    for start in range(0, len(keys), LOOKUP_CHUNK):
        yield from api.query(datasource_id, {"where": {column: {"$in": keys[start:start + LOOKUP_CHUNK]}}})


def find_keys(api: FlipletApi, datasource_id: int, column: str, keys: list[Any]) -> list[Any]:
    """Which of ``keys`` exist as ``column`` values remotely, asked ``LOOKUP_CHUNK`` keys at a time."""
    found: list[Any] = []
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start:start + LOOKUP_CHUNK]
        entries = api.query(datasource_id, {"where": {column: {"$in": chunk}}, "attributes": [column]})
        found.extend((e.get("data") or {}).get(column) for e in entries)
    return found


def find_applied_updates(api: FlipletApi, datasource_id: int, column: str, updates: list[dict[str, Any]]) -> list[Any]:
    """The ids of ``updates`` (``{"id", "data"}``) whose entry already holds every value sent, looked
    up by their ``column`` value (to confirm an unanswered commit's updates instead of re-sending)."""
    by_key: dict[Any, list[dict[str, Any]]] = {}
    for update in updates:
        key = (update.get("data") or {}).get(column)
        if key is not None and not isinstance(key, (dict, list)):
            by_key.setdefault(key, []).append(update)
    applied: list[Any] = []
    keys = list(by_key)
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start:start + LOOKUP_CHUNK]
        remote = {e.get("id"): e.get("data") or {}
                  for e in api.query(datasource_id, {"where": {column: {"$in": chunk}}})}
        for key in chunk:
            for update in by_key[key]:
                held = remote.get(update["id"])
                if held is not None and all(k in held and held[k] == v for k, v in update["data"].items()):
                    applied.append(update["id"])
    return applied
