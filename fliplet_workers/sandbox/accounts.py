"""Users, their tokens and organizations: who a request acts as.

Why apart: every API call starts here (401 for an unknown token, 403 outside the user's
organizations), and the console's login checks a token the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fliplet_workers.sandbox.basics import SandboxError, as_id


class StoreAccounts:
    """The accounts half of :class:`~fliplet_workers.sandbox.store.Store` (a mixin over its state)."""

    _lock: threading.Lock
    _dirty: bool
    _version: int
    _orgs: dict[int, dict[str, Any]]
    _users: dict[int, dict[str, Any]]
    _tokens: dict[str, int]
    _sources: dict[int, dict[str, Any]]
    _access: dict[int, set[str]]
    # provided by the Store
    _take: Callable[[str], int]

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
            self._version += 1

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
        oid = as_id(org_id, "organizationId")
        if oid not in self._orgs:
            raise SandboxError(404, f"Organization {oid} not found")
        if oid not in user["organizationIds"]:
            raise SandboxError(403, f"You don't have access to organization {oid}")
        return oid

    def organizations(self, token: str) -> list[dict[str, Any]]:
        with self._lock:
            user = self._user(token)
            return [dict(self._orgs[o]) for o in user["organizationIds"] if o in self._orgs]
