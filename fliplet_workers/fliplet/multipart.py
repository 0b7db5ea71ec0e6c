"""A ``multipart/form-data`` body streamed from a file: how a file travels to ``POST v1/media/files``.

Why not ``requests``' own ``files=``: it builds the whole body in memory, holding the file twice. This
body is read on demand (fields, then the file, then the closing boundary) and has a length, so
``requests`` sends it as a stream with a ``Content-Length`` and memory stays flat however big the file.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Sequence
from typing import IO, Any
from urllib.parse import quote

__all__ = ["MultipartBody"]


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
