"""Media folders and uploaded files of the sandbox's organizations (``v1/media``).

Why apart from the data: files are bytes with their own access rule (a member of the file's
organization, not a data source's token) and their own persistence (one file each next to the state
file), and the console links file columns to them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from fliplet_workers.sandbox.basics import SandboxError, as_id, bad_request, now_iso


class StoreMedia:
    """The media half of :class:`~fliplet_workers.sandbox.store.Store` (a mixin over its state)."""

    _lock: threading.Lock
    _dirty: bool
    _folders: dict[int, dict[str, Any]]
    _files: dict[int, dict[str, Any]]
    _blobs: dict[int, bytes]

    # provided by the Store
    _check_org: Callable[[str, Any], int]
    _take: Callable[[str], int]
    _user: Callable[[str | None], dict[str, Any]]

    def _public_file(self, f: Mapping[str, Any], base_url: str) -> dict[str, Any]:
        out = dict(f)
        out["url"] = f"{base_url}media/files/{f['id']}/{quote(f['name'])}"
        return out

    def media(self, token: str, org_id: Any, folder_id: Any, base_url: str) -> dict[str, Any]:
        """Folders and files of one folder (or the organization root when ``folder_id`` is None)."""
        with self._lock:
            oid = self._check_org(token, org_id)
            fid = None if folder_id in (None, "") else as_id(folder_id, "folderId")
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
            pid = None if parent is None else as_id(parent, "parentId")
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
            fid = None if folder_id in (None, "") else as_id(folder_id, "folderId")
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
