"""``MemoryApi``: the :class:`~fliplet_workers.fliplet.api.FlipletApi` calls in process, on the
sandbox's :class:`~fliplet_workers.sandbox.store.Store`, with failures injected on demand.

Why: the run and the fleet are mostly decisions about answers and failures (retry, look up, split,
stop). Driving them through the sandbox's HTTP server costs a server, sockets and real timeouts per
test; driving them through this class costs microseconds, and a test can say exactly what goes wrong
next, e.g. "the next commit is applied but its answer is lost".

Sameness with the HTTP client is the point, and tests/test_memory_api.py checks it call by call: the
same answers (JSON round-tripped, so a test sees what the client would have parsed), the same typed
errors with the same messages and kinds (:func:`~fliplet_workers.fliplet.client.error_for` maps the
store's refusals exactly as the client maps the server's), the token checked first as the server
does, and the same order as the server's routes (access check, the commit recorded, then the
injected fault, then the change).

Injected failures (:meth:`MemoryApi.fail_next`), as the client reports the sandbox's own faults:

* ``kind="retry"``: an answer of 500, nothing applied ("Sandbox injected failure (HTTP 500)");
* ``kind="unknown"``: the connection is lost; ``applied=True`` applies the call first (the sandbox's
  ``drop-after-apply``), else nothing is applied (``drop-before-apply``);
* ``kind="refused"``: an answer of 400, nothing applied; ``kind="fatal"``: an answer of 409.
"""

from __future__ import annotations

import mimetypes
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from fliplet_workers.errors import ApiError, AuthError
from fliplet_workers.fliplet.api import FlipletApi, MediaUpload, data_source_body
from fliplet_workers.fliplet.client import error_for
from fliplet_workers.fliplet.failures import KINDS, Kind
from fliplet_workers.redaction import register
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxError, Store

__all__ = ["METHODS", "MemoryApi"]

T = TypeVar("T")

#: The calls a failure can be injected into (``find_keys`` and ``find_applied_updates`` are made of
#: ``query`` calls, as over HTTP).
METHODS = frozenset({
    "user", "organizations", "iter_entries", "commit", "query", "data_sources", "create_data_source",
    "add_entry", "media_folders", "create_media_folder", "media_files", "upload_media",
})
_INJECTED: dict[str, tuple[int, str]] = {
    "retry": (500, "Sandbox injected failure"),
    "refused": (400, "Sandbox injected refusal"),
    "fatal": (409, "Sandbox injected conflict"),
}


@dataclass(frozen=True)
class _Fault:
    kind: Kind
    applied: bool
    message: str | None


class MemoryApi(FlipletApi):
    """The Fliplet API of one token, in process on ``store``. Thread-safe, like the store.

    ``calls`` lists, in order, the requests the HTTP client would have sent: ``(method, data source id
    or None)``. ``base_url`` only shows in media urls and in lost-connection messages.
    """

    def __init__(self, store: Store, token: str = DEMO_TOKEN, *, base_url: str = "http://sandbox.invalid/") -> None:
        if not token:
            raise AuthError("Auth token is required")
        register(str(token))
        self.store = store
        self.token = str(token)
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.calls: list[tuple[str, int | None]] = []
        self.closed = False
        self._lock = threading.Lock()
        self._faults: dict[str, deque[_Fault]] = {}

    def __repr__(self) -> str:
        return f"MemoryApi(base_url={self.base_url!r})"

    # -- injected failures -------------------------------------------------------------------------

    def fail_next(self, method: str, *, kind: Kind = "retry", applied: bool = False, times: int = 1,
                  message: str | None = None) -> None:
        """Make the next ``times`` calls of ``method`` fail with ``kind`` (queued after earlier ones).

        ``applied=True`` (only with ``kind="unknown"``) applies the call before its answer is lost.
        ``message`` replaces the default text of the error.
        """
        if method not in METHODS:
            raise ValueError(f"fail_next: unknown method {method!r}; one of {', '.join(sorted(METHODS))}")
        if kind not in KINDS:
            raise ValueError(f"fail_next: unknown kind {kind!r}; one of {', '.join(KINDS)}")
        if applied and kind != "unknown":
            raise ValueError("fail_next: applied=True needs kind='unknown' (the other kinds mean not applied)")
        with self._lock:
            self._faults.setdefault(method, deque()).extend([_Fault(kind, applied, message)] * times)

    def pending_failures(self, method: str) -> int:
        """How many injected failures of ``method`` have not been used yet."""
        with self._lock:
            return len(self._faults.get(method, ()))

    def _injected(self, fault: _Fault) -> ApiError:
        if fault.kind == "unknown":
            text = fault.message or f"The connection to {self.base_url} was lost: Connection aborted"
            return ApiError(text, kind="unknown")
        status, text = _INJECTED[fault.kind]
        return ApiError(f"{fault.message or text} (HTTP {status})", status=status, kind=fault.kind)

    # -- one call, as the server's router and the client see it -----------------------------------

    def _call(self, method: str, datasource_id: int | None, apply: Callable[[], T],
              before: Callable[[], object] | None = None) -> T:
        """Token check, data-source check, ``before``, the injected fault if any, then ``apply``;
        the store's refusals become the client's typed errors."""
        with self._lock:
            self.calls.append((method, datasource_id))
            queue = self._faults.get(method)
            fault = queue.popleft() if queue else None
        try:
            if self.store.user_for_token(self.token) is None:
                raise SandboxError(401, "Invalid or expired token")
            if datasource_id is not None:
                self.store.check_source(self.token, datasource_id)
            if before is not None:
                before()
            if fault is None:
                return _wire(apply())
            if fault.applied:
                apply()
        except SandboxError as error:
            raise error_for(error.status, error.message, datasource_id) from None
        raise self._injected(fault)

    # -- FlipletApi: data sources and entries ----------------------------------------------------------

    def user(self) -> dict[str, Any]:
        found = self._call("user", None, lambda: self.store.user_for_token(self.token))
        return dict(found or {})

    def organizations(self) -> list[dict[str, Any]]:
        return list(self._call("organizations", None, lambda: self.store.organizations(self.token)))

    def iter_entries(self, datasource_id: int) -> Iterator[dict[str, Any]]:
        """A generator, like the client's: nothing is asked until the first entry is wanted."""
        yield from self._call("iter_entries", datasource_id, lambda: self.store.snapshot(self.token, datasource_id))

    def commit(self, datasource_id: int, body: dict[str, Any], *, answer: bool = True) -> dict[str, Any]:
        sent = _wire(body)
        applied = self._call("commit", datasource_id,
                             lambda: {"entries": self.store.commit(self.token, datasource_id, sent)},
                             before=lambda: self.store.record_commit(datasource_id, sent))
        return dict(applied) if answer else {}

    def query(self, datasource_id: int, body: dict[str, Any]) -> list[dict[str, Any]]:
        sent = _wire(body)
        return list(self._call("query", datasource_id, lambda: self.store.query(self.token, datasource_id, sent)))

    def data_sources(self, *, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002 - Fliplet's name
        return list(self._call("data_sources", None,
                               lambda: self.store.list_data_sources(self.token, type or None)))

    def create_data_source(self, name: str, *, type: str | None = None,  # noqa: A002 - Fliplet's name
                           organization_id: int | None = None) -> dict[str, Any]:
        body = data_source_body(name, type, organization_id)
        sent = _wire(body)
        return dict(self._call("create_data_source", None, lambda: self.store.create_data_source_for(self.token, sent)))

    def add_entry(self, datasource_id: int, data: dict[str, Any]) -> dict[str, Any]:
        sent = _wire(data)
        return dict(self._call("add_entry", datasource_id, lambda: self.store.put_entry(self.token, datasource_id, sent)))

    # -- FlipletApi: media -----------------------------------------------------------------------------

    def media_folders(self, organization_id: int) -> list[dict[str, Any]]:
        listing = self._call("media_folders", None,
                             lambda: self.store.media(self.token, organization_id, None, self.base_url))
        return list(listing.get("folders") or [])

    def create_media_folder(self, name: str, organization_id: int) -> dict[str, Any]:
        body = {"name": name, "organizationId": organization_id}
        return dict(self._call("create_media_folder", None, lambda: self.store.create_folder(self.token, body)))

    def media_files(self, folder_id: int, organization_id: int) -> list[dict[str, Any]]:
        listing = self._call("media_files", None,
                             lambda: self.store.media(self.token, organization_id, folder_id, self.base_url))
        return list(listing.get("files") or [])

    def upload_media(self, upload: MediaUpload) -> list[dict[str, Any]]:
        """Reads the file's ``size`` bytes; the content type is guessed from the name when the upload
        says ``application/octet-stream``, as the sandbox server does."""

        def store_file() -> dict[str, Any]:
            content = upload.fileobj.read(upload.size)
            if len(content) < upload.size:
                raise OSError("The file got shorter while it was being uploaded")
            content_type = upload.content_type
            if not content_type or content_type == "application/octet-stream":
                content_type = mimetypes.guess_type(upload.name)[0] or "application/octet-stream"
            return self.store.add_file(self.token, upload.organization_id, upload.folder_id, upload.name, content,
                                       content_type, upload.md5, self.base_url)

        return [self._call("upload_media", None, store_file)]

    def close(self) -> None:
        self.closed = True


def _wire(value: Any) -> Any:
    """``value`` as it comes out of a JSON round trip (what the other side of HTTP would see)."""
    return orjson.loads(orjson.dumps(value))
