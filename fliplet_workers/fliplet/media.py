"""Fliplet media: the "Files uploaded from DIS" folder, md5 de-duplication and streamed uploads.

What the original agent does, and we keep (see ``shared/fliplet-api.md``, "Files"): files go to the
folder named "Files uploaded from DIS" of the user's *first* organization, created when missing; a
file whose md5 equals the ``metadata.checksum`` (or ``metadata.clientChecksum``) of a file already in
that folder is not uploaded again, its url and id are reused.

What we do differently:

* the folder's file list is read once per run (not once per file) and kept as an md5 index, which
  each upload extends, so the same file named by many rows is uploaded once;
* two workers holding the same bytes at the same time upload them once (a lock per md5);
* the multipart body is *streamed* from the file object (:class:`MultipartBody`), with a
  ``Content-Length``: ``requests``' own ``files=`` encoding would hold the whole file in memory,
  twice, while it builds the body;
* an upload that failed with an unknown outcome (connection lost, timeout) is looked up again by
  md5 before it is resent, so a lost answer does not leave a duplicate file in the folder.
"""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote

from fliplet_workers.errors import ApiError
from fliplet_workers.fliplet.client import FlipletClient

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


class MultipartBody(io.RawIOBase):
    """A ``multipart/form-data`` body read on demand: text fields, then one file, never all in memory.

    ``requests`` sends any object with ``read`` and ``__len__`` as a stream with a ``Content-Length``
    (urllib3 reads it in 16 KiB blocks), so memory stays flat however big the file is.
    """

    def __init__(self, fields: Sequence[tuple[str, str]], file_field: str, filename: str, file_type: str,
                 fileobj: IO[bytes], size: int) -> None:
        super().__init__()
        self.boundary = "----FlipletAgent" + secrets.token_hex(16)
        head = b"".join(
            self._part_head(name) + value.encode("utf-8") + b"\r\n" for name, value in fields
        ) + self._part_head(file_field, filename, file_type)
        self._head = head
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self._file = fileobj
        self._start = fileobj.tell()
        self._size = size
        self._length = len(head) + size + len(self._tail)
        self.rewind()

    def _part_head(self, name: str, filename: str | None = None, file_type: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f"; {_filename_params(filename)}"
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if file_type is not None:
            lines.append(f"Content-Type: {file_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def rewind(self) -> None:
        """Back to the first byte, to send the same body again."""
        self._file.seek(self._start)
        self._segment = 0  # 0: head, 1: file, 2: tail, 3: done
        self._offset = 0
        self._file_left = self._size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._length
        out: list[bytes] = []
        want = size
        while want > 0 and self._segment < 3:
            if self._segment == 1:
                chunk = self._file.read(min(want, self._file_left)) if self._file_left else b""
                if not chunk:
                    if self._file_left:
                        raise OSError("The file got shorter while it was being uploaded")
                    self._segment += 1
                    continue
                self._file_left -= len(chunk)
            else:
                fixed = self._head if self._segment == 0 else self._tail
                chunk = fixed[self._offset:self._offset + want]
                self._offset += len(chunk)
                if self._offset >= len(fixed):
                    self._segment += 1
                    self._offset = 0
            out.append(chunk)
            want -= len(chunk)
        return b"".join(out)


def _filename_params(filename: str) -> str:
    """``filename="…"`` (ASCII, quotes escaped as browsers do) plus RFC 5987 ``filename*`` if needed."""
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace('"', "%22").replace("\r", " ")
    ascii_name = ascii_name.replace("\n", " ")
    if ascii_name == filename:
        return f'filename="{ascii_name}"'
    return f"filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


class MediaFolder:
    """The upload folder of one run, with an md5 index of the files it holds. Thread-safe.

    Nothing is read until the first :meth:`find` or :meth:`upload`. ``create=False`` (dry runs) never
    creates the folder: a missing folder then simply holds no files.
    """

    def __init__(self, client: FlipletClient, *, note: Note | None = None, create: bool = True,
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
            root = self.client.json("GET", "v1/media/", params={"organizationId": self.organization_id})
            folder = next((f for f in root.get("folders") or [] if f.get("name") == FOLDER_NAME), None)
            if folder is None and self.create:
                self._note(f'Creating new media folder named "{FOLDER_NAME}" in organization '
                           f"{org.get('name') or self.organization_id}")
                folder = self.client.json("POST", "v1/media/folders",
                                          json={"name": FOLDER_NAME, "organizationId": self.organization_id})
            if folder is not None:
                self.folder_id = int(folder["id"])
                self._index(self._list())
            self._opened = True

    def _list(self) -> list[dict[str, Any]]:
        answer = self.client.json("GET", "v1/media",
                                  params={"folderId": self.folder_id, "organizationId": self.organization_id})
        return list(answer.get("files") or [])

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
        body = MultipartBody([("checksum", md5)], "files", name, content_type, fileobj, size)
        params = {"folderId": self.folder_id, "name": name, "organizationId": self.organization_id}
        attempt = 0
        while True:
            body.rewind()
            try:
                answer = self.client.post_stream("v1/media/files", body, content_type=body.content_type,
                                                 params=params)
                files = answer.get("files") if isinstance(answer, dict) else None
                if not files:
                    raise ApiError("The upload answer lists no file")
                return MediaFile.from_api(files[0])
            except ApiError as error:
                retryable = error.outcome_unknown or error.status is None or error.status >= 500
                if not retryable or attempt >= UPLOAD_RETRIES:
                    raise
                attempt += 1
                time.sleep(self.retry_delay * attempt)
                if error.outcome_unknown:  # it may have landed: look before sending it again
                    self.refresh()
                    with self._lock:
                        landed = self._by_md5.get(md5)
                    if landed is not None:
                        return landed
