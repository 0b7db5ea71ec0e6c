"""Fliplet media: the "Files uploaded from DIS" folder, md5 de-duplication and streamed uploads.

What the original agent does, and we keep (see ``shared/fliplet-api.md``, "Files"): files go to the
folder named "Files uploaded from DIS" of the user's *first* organization, created when missing; a
file whose md5 equals the ``metadata.checksum`` (or ``metadata.clientChecksum``) of a file already in
that folder is not uploaded again, its url and id are reused.

What we do differently:

* the folder's file list is read once per run (not once per file) and kept as an md5 index, which
  each upload extends, so the same file named by many rows is uploaded once;
* two workers holding the same bytes at the same time upload them once (a lock per md5);
* the multipart body is *streamed* from the file object (:class:`~.multipart.MultipartBody`, made
  by the HTTP client), with a ``Content-Length``: ``requests``' own ``files=`` encoding would hold
  the whole file in memory, twice, while it builds the body;
* an upload that failed with an unknown outcome (connection lost, timeout) is looked up again by
  md5 before it is resent, so a lost answer does not leave a duplicate file in the folder.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from fliplet_workers.errors import ApiError
from fliplet_workers.fliplet.api import FlipletApi, MediaUpload
from fliplet_workers.fliplet.failures import may_pass_later
from fliplet_workers.fliplet.multipart import MultipartBody  # importable from here, as it was

__all__ = ["FOLDER_NAME", "MediaFile", "MediaFolder", "MultipartBody"]

FOLDER_NAME = "Files uploaded from DIS"
#: Upload attempts after the first one, for answers that say "try again" (5xx) or no answer.
UPLOAD_RETRIES = 2

Note = Callable[[str], None]


@dataclass(frozen=True)
class MediaFile:
    """A file in Fliplet's media library: what a row's column ends up pointing at."""

    id: int
    url: str
    name: str | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> MediaFile:
        return cls(id=raw["id"], url=raw["url"], name=raw.get("name"))


class MediaFolder:
    """The upload folder of one run, with an md5 index of the files it holds. Thread-safe.

    Nothing is read until the first :meth:`find` or :meth:`upload`. ``create=False`` (dry runs) never
    creates the folder: a missing folder then simply holds no files.
    """

    def __init__(self, client: FlipletApi, *, note: Note | None = None, create: bool = True,
                 retry_delay: float = 1.0) -> None:
        self.client = client
        self.create = create
        self.retry_delay = retry_delay
        self._note = note or (lambda _message: None)
        self._lock = threading.Lock()
        self._md5_locks: dict[str, threading.Lock] = {}
        self._by_md5: dict[str, MediaFile] = {}
        self.organization_id: int | None = None
        self.folder_id: int | None = None
        self._opened = False
        #: Files actually sent in this run (not reused), for the summary and the tests.
        self.uploaded = 0

    # -- the folder and its index --------------------------------------------------------------

    def open(self) -> None:
        """Find (or create) the folder and index its files by md5, once."""
        with self._lock:
            if self._opened:
                return
            organizations = self.client.organizations()
            if not organizations:
                raise ApiError("The Fliplet user has no organization to upload files to")
            org = organizations[0]
            self.organization_id = int(org["id"])
            folders = self.client.media_folders(self.organization_id)
            folder = next((f for f in folders if f.get("name") == FOLDER_NAME), None)
            if folder is None and self.create:
                self._note(f'Creating new media folder named "{FOLDER_NAME}" in organization '
                           f"{org.get('name') or self.organization_id}")
                folder = self.client.create_media_folder(FOLDER_NAME, self.organization_id)
            if folder is not None:
                self.folder_id = int(folder["id"])
                self._index(self._list())
            self._opened = True

    def _list(self) -> list[dict[str, Any]]:
        if self.folder_id is None or self.organization_id is None:
            return []
        return self.client.media_files(self.folder_id, self.organization_id)

    def _index(self, files: list[dict[str, Any]]) -> None:
        for raw in files:
            meta = raw.get("metadata") or {}
            try:
                media = MediaFile.from_api(raw)
            except (KeyError, TypeError):
                continue
            for md5 in (meta.get("checksum"), meta.get("clientChecksum")):
                if isinstance(md5, str) and md5:
                    self._by_md5.setdefault(md5.lower(), media)

    def find(self, md5: str) -> MediaFile | None:
        """The folder's file with these bytes, if any (from the run's index: no request)."""
        self.open()
        with self._lock:
            return self._by_md5.get(md5.lower())

    def refresh(self) -> None:
        """Read the folder's file list again (after an upload whose outcome is unknown)."""
        self.open()
        if self.folder_id is None:
            return
        files = self._list()
        with self._lock:
            self._index(files)

    # -- uploads ---------------------------------------------------------------------------------

    def upload(self, fileobj: IO[bytes], size: int, name: str, md5: str,
               content_type: str = "application/octet-stream") -> tuple[MediaFile, bool]:
        """The folder's file with these bytes: reused when already there, else uploaded.

        Returns ``(file, uploaded)``. Only one upload per md5 runs at a time, so the same bytes named by
        several rows are sent once. Raises :class:`ApiError` when the upload fails for good.
        """
        self.open()
        if self.folder_id is None:
            raise ApiError(f'The media folder "{FOLDER_NAME}" does not exist (dry run: nothing is created)')
        md5 = md5.lower()
        with self._lock:
            gate = self._md5_locks.setdefault(md5, threading.Lock())
        with gate:
            existing = self.find(md5)
            if existing is not None:
                return existing, False
            media = self._send(fileobj, size, name, md5, content_type)
            with self._lock:
                self._by_md5[md5] = media
                self.uploaded += 1
            return media, True

    def _send(self, fileobj: IO[bytes], size: int, name: str, md5: str, content_type: str) -> MediaFile:
        assert self.folder_id is not None and self.organization_id is not None  # open() found the folder
        upload = MediaUpload(name=name, md5=md5, content_type=content_type, fileobj=fileobj, size=size,
                             folder_id=self.folder_id, organization_id=self.organization_id)
        start = fileobj.tell()
        attempt = 0
        while True:
            fileobj.seek(start)
            try:
                files = self.client.upload_media(upload)
                if not files:
                    raise ApiError("The upload answer lists no file", kind="retry")
                return MediaFile.from_api(files[0])
            except ApiError as error:
                if not may_pass_later(error.kind) or attempt >= UPLOAD_RETRIES:
                    raise
                attempt += 1
                time.sleep(self.retry_delay * attempt)
                if error.kind == "unknown":  # it may have landed: look before sending it again
                    self.refresh()
                    with self._lock:
                        landed = self._by_md5.get(md5)
                    if landed is not None:
                        return landed
