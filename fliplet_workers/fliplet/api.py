"""``FlipletApi``: every Fliplet API call the package makes, as typed methods.

Why a protocol: the run, the fleet, the keystore and the media uploads need these calls, not HTTP.
Two implementations keep the same promises (answers, errors and failure kinds):
:class:`~fliplet_workers.fliplet.client.FlipletClient` over HTTP, and
:class:`~fliplet_workers.fliplet.memory.MemoryApi` in process on the sandbox's store, which lets
tests drive the run and fleet logic in milliseconds and inject any failure (tests/test_memory_api.py
checks that both answer alike).

Failures: :class:`~fliplet_workers.errors.AuthError` (token rejected),
:class:`~fliplet_workers.errors.AccessError` (no access to the data source) and
:class:`~fliplet_workers.errors.ApiError` with its ``kind`` (see :mod:`fliplet_workers.fliplet.failures`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from fliplet_workers.fliplet import lookups

__all__ = ["FlipletApi", "MediaUpload", "data_source_body"]


def data_source_body(name: str, type: str | None, organization_id: int | None) -> dict[str, Any]:  # noqa: A002
    """The body of ``POST v1/data-sources`` (Fliplet's names), as both implementations send it."""
    body: dict[str, Any] = {"name": name}
    if type is not None:
        body["type"] = type
    if organization_id is not None:
        body["organizationId"] = organization_id
    return body


@dataclass(frozen=True)
class MediaUpload:
    """One file to store in a media folder. ``fileobj`` is read from its current position, ``size``
    bytes; the caller seeks back before sending the same upload again."""

    name: str
    md5: str
    content_type: str
    fileobj: IO[bytes]
    size: int
    folder_id: int
    organization_id: int


class FlipletApi(Protocol):
    """The Fliplet API as the agent uses it (see ``shared/fliplet-api.md``)."""

    def user(self) -> dict[str, Any]:
        """The token's user (``GET v1/user``): verifies the token."""
        ...

    def organizations(self) -> list[dict[str, Any]]:
        """The user's organizations, the first one first."""
        ...

    def iter_entries(self, datasource_id: int) -> Iterator[dict[str, Any]]:
        """Every entry of the data source, one at a time (never all in memory over HTTP)."""
        ...

    def commit(self, datasource_id: int, body: dict[str, Any], *, answer: bool = True) -> dict[str, Any]:
        """Apply a commit body (``entries``, ``delete``, ``append``, ``extend``). With ``answer=False``
        the answer is not read and ``{}`` is returned."""
        ...

    def query(self, datasource_id: int, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The entries matching ``body`` (``where``, ``attributes``, ``offset``, ``limit``)."""
        ...

    # The keyed lookups are written once, over ``query``, for every implementation (see :mod:`.lookups`).

    def find_entries(self, datasource_id: int, column: str, keys: list[Any]) -> Iterator[dict[str, Any]]:
        """The entries whose ``column`` value is one of ``keys``, whole (``data/query`` with ``$in``,
        in chunks): an incremental run's remote side."""
        return lookups.find_entries(self, datasource_id, column, keys)

    def find_keys(self, datasource_id: int, column: str, keys: list[Any]) -> list[Any]:
        """Which of ``keys`` exist as ``column`` values remotely (once per matching entry)."""
        return lookups.find_keys(self, datasource_id, column, keys)

    def find_applied_updates(self, datasource_id: int, column: str, updates: list[dict[str, Any]]) -> list[Any]:
        """The ids of ``updates`` (``{"id", "data"}``) whose entry already holds every value sent."""
        return lookups.find_applied_updates(self, datasource_id, column, updates)

    def data_sources(self, *, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002 - Fliplet's name
        """The data sources the token can use, optionally of one ``type`` (e.g. "keystore")."""
        ...

    def create_data_source(self, name: str, *, type: str | None = None,  # noqa: A002 - Fliplet's name
                           organization_id: int | None = None) -> dict[str, Any]:
        """Create a data source (in the user's first organization without ``organization_id``)."""
        ...

    def add_entry(self, datasource_id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Insert one entry whose data is ``data`` (``PUT v1/data-sources/:id/data``)."""
        ...

    def media_folders(self, organization_id: int) -> list[dict[str, Any]]:
        """The folders at the root of the organization's media library."""
        ...

    def create_media_folder(self, name: str, organization_id: int) -> dict[str, Any]:
        """Create a folder at the root of the organization's media library."""
        ...

    def media_files(self, folder_id: int, organization_id: int) -> list[dict[str, Any]]:
        """The files of one media folder (with ``metadata.checksum``, the md5 of their bytes)."""
        ...

    def upload_media(self, upload: MediaUpload) -> list[dict[str, Any]]:
        """Store one file; the answer's ``files`` (normally one, with ``id`` and ``url``)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
