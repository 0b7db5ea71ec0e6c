"""Read the file a row names: remote (http/https), local (a path), or SharePoint.

Why its own module: reading is plain I/O with its own failure vocabulary (every failure becomes a
:class:`~fliplet_workers.errors.FileFetchError` whose reason holds no secret), shared by the
foreground's file step and the fleet's upload tasks; the step that uploads and rewrites rows is
:mod:`.files`.

Memory stays flat: downloads are written in 1 MiB chunks to a spooled temporary file (in memory up to
1 MiB, on disk beyond) while their md5 is computed; local files are read in place (one pass for the
md5, one for the upload).

* ``remote``: http/https ``GET`` with the configured ``headers``, ``timeout`` from the config.
* ``local``: an absolute path, or a name inside ``directory`` (network shares are paths too); a name
  that leads outside the directory (``..``, an absolute path) is refused.
* ``sharepoint``: ``GET`` with the ``username``/``password`` answering the server's challenge: NTLM
  (what the original's sp-request uses on premises; needs the ``requests_ntlm`` package) or Basic.
  Credentials are only sent when the server asks. SharePoint Online's claims/SAML sign-in is not
  supported. ``fileType: inherit`` keeps the file's own name, anything else uploads it as
  ``file.jpg``, as the original does.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from fliplet_workers.config.model import FileColumn
from fliplet_workers.errors import FileFetchError
from fliplet_workers.redaction import redact

HttpNtlmAuth: Any
try:  # optional: NTLM for SharePoint on premises
    from requests_ntlm import HttpNtlmAuth
except ImportError:  # pragma: no cover - depends on the environment
    HttpNtlmAuth = None

__all__ = [
    "FetchedFile",
    "SharePointAuth",
    "fetch",
    "os_reason",
    "remote_name",
    "resolve_local",
    "safe_name",
]

CHUNK = 1 << 20
#: Downloads up to this size stay in memory; bigger ones spill to a temporary file.
SPOOL_IN_MEMORY = 1 << 20
SHAREPOINT_DEFAULT_NAME = "file.jpg"
_OCTET = "application/octet-stream"




class FetchedFile:
    """A file ready to upload: an open binary file object at its start, its size, md5 and name.

    A context manager: leaving it closes the file object (and deletes a temporary file).
    """

    def __init__(self, fileobj: IO[bytes], size: int, md5: str, name: str, content_type: str) -> None:
        self.fileobj = fileobj
        self.size = size
        self.md5 = md5
        self.name = name
        self.content_type = content_type

    def __enter__(self) -> FetchedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fileobj.close()


def fetch(spec: FileColumn, location: str, http: requests.Session, timeout: float) -> FetchedFile:
    """Read the file ``location`` names, as ``spec`` says. Raises :class:`FileFetchError` with a
    reason that contains no secret."""
    if spec.type == "local":
        return fetch_local(spec, location)
    if spec.type == "remote":
        headers = {str(k): str.__str__(v) for k, v in spec.headers.items()}
        return fetch_remote(location, http, timeout, headers=headers)
    if spec.type == "sharepoint":
        auth = SharePointAuth(spec.username or "", str.__str__(spec.password) if spec.password else "")
        fetched = fetch_remote(location, http, timeout, auth=auth, sharepoint=True)
        if spec.file_type != "inherit":
            fetched.name = SHAREPOINT_DEFAULT_NAME
        fetched.content_type = mimetypes.guess_type(fetched.name)[0] or fetched.content_type
        return fetched
    raise FileFetchError(f"unknown file type '{spec.type}'")


def fetch_local(spec: FileColumn, location: str) -> FetchedFile:
    path = resolve_local(spec, location)
    try:
        fileobj = open(path, "rb")  # noqa: SIM115 - handed to FetchedFile, which closes it
    except OSError as error:
        raise FileFetchError(os_reason(error)) from None
    try:
        if not os.path.isfile(path):
            raise FileFetchError("not a regular file")
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        while chunk := fileobj.read(CHUNK):
            md5.update(chunk)
            size += len(chunk)
        fileobj.seek(0)
    except FileFetchError:
        fileobj.close()
        raise
    except OSError as error:
        fileobj.close()
        raise FileFetchError(os_reason(error)) from None
    name = safe_name(os.path.basename(path))
    return FetchedFile(fileobj, size, md5.hexdigest(), name, mimetypes.guess_type(name)[0] or _OCTET)


def resolve_local(spec: FileColumn, location: str) -> str:
    """The path a local location names: inside ``spec.directory`` when set, else absolute."""
    if not location:
        raise FileFetchError("empty file name")
    if "\x00" in location:
        raise FileFetchError("the file name contains a NUL character")
    if spec.directory:
        base = os.path.abspath(os.path.expanduser(spec.directory))
        if os.path.isabs(location) or os.path.splitdrive(location)[0]:
            raise FileFetchError(f"'{location}' is not a name inside the directory '{spec.directory}'")
        path = os.path.normpath(os.path.join(base, location))
        if os.path.commonpath([base, path]) != base:
            raise FileFetchError(f"'{location}' leads outside the directory '{spec.directory}'")
        return path
    path = os.path.expanduser(location)
    if not os.path.isabs(path):
        raise FileFetchError(f"'{location}' is not an absolute path (set 'directory' to read names "
                             "relative to a folder)")
    return os.path.normpath(path)


def fetch_remote(url: str, http: requests.Session, timeout: float, *, headers: dict[str, str] | None = None,
                 auth: AuthBase | None = None, sharepoint: bool = False) -> FetchedFile:
    """Download ``url`` into a spooled temporary file, computing its md5 on the way."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FileFetchError("not an http:// or https:// URL")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed by FetchedFile
    try:
        with http.get(url, headers=headers, auth=auth, stream=True, timeout=(timeout, timeout)) as response:
            if response.status_code >= 400:
                raise FileFetchError(_status_reason(response, sharepoint))
            md5 = hashlib.md5(usedforsecurity=False)
            size = 0
            for chunk in response.iter_content(CHUNK):
                md5.update(chunk)
                spool.write(chunk)
                size += len(chunk)
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        spool.seek(0)
    except FileFetchError:
        spool.close()
        raise
    except requests.exceptions.Timeout:
        spool.close()
        raise FileFetchError(f"no answer within {timeout:g} seconds") from None
    except requests.exceptions.RequestException as error:
        spool.close()
        raise FileFetchError(_request_reason(error, timeout)) from None
    except OSError as error:  # the temporary file (disk full...)
        spool.close()
        raise FileFetchError(f"cannot write the temporary copy: {os_reason(error)}") from None
    name = remote_name(url, content_type)
    return FetchedFile(spool, size, md5.hexdigest(), name, content_type or mimetypes.guess_type(name)[0] or _OCTET)


def remote_name(url: str, content_type: str | None) -> str:
    """The URL path's base name plus the extension of ``content_type``, unless it already has one
    for that type (the original always appends it: ``John.jpg.jpeg``)."""
    path = urlsplit(url).path
    base = safe_name(unquote(path.rstrip("/").rsplit("/", 1)[-1])) if path.strip("/") else "file"
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind or kind == _OCTET:
        return base
    extension = mimetypes.guess_extension(kind)
    if not extension:
        return base
    suffix = os.path.splitext(base)[1].lower()
    if suffix and (suffix in mimetypes.guess_all_extensions(kind) or mimetypes.guess_type(base)[0] == kind):
        return base
    return base + extension


def safe_name(name: str) -> str:
    """A file name without path separators or control characters (never empty)."""
    cleaned = "".join("_" if ch in "/\\" or ord(ch) < 32 else ch for ch in name).strip()
    return cleaned or "file"


def _status_reason(response: requests.Response, sharepoint: bool) -> str:
    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
    if sharepoint and response.status_code in (401, 403):
        challenge = response.headers.get("WWW-Authenticate", "")
        if "ntlm" in challenge.lower() or "negotiate" in challenge.lower():
            if HttpNtlmAuth is None:
                return reason + " (the server asks for NTLM: install the requests_ntlm package)"
            return reason + " (the SharePoint user name or password was refused)"
        if "basic" in challenge.lower():
            return reason + " (the SharePoint user name or password was refused)"
        host = (urlsplit(response.url).hostname or "").lower()
        if host.endswith(".sharepoint.com"):
            return reason + (" (SharePoint Online sign-in with a user name and password is not supported; "
                             "share the file with a link, or read it as a 'remote' file with headers)")
    return reason


def _request_reason(error: requests.exceptions.RequestException, timeout: float) -> str:
    text = str(error)
    if "timed out" in text.lower():
        return f"no data within {timeout:g} seconds"
    if isinstance(error, requests.exceptions.ConnectionError):
        for mark in ("Name or service not known", "nodename nor servname", "Connection refused",
                     "Connection reset", "Connection aborted", "RemoteDisconnected", "IncompleteRead"):
            if mark in text:
                return f"connection failed ({mark})"
        return "connection failed"
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                          requests.exceptions.InvalidSchema)):
        return "not a valid URL"
    return redact(type(error).__name__)


def os_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    return redact(error.strerror or str(error))


# --------------------------------------------------------------------------------------------
# SharePoint: answer the server's challenge
# --------------------------------------------------------------------------------------------


class SharePointAuth(AuthBase):
    """Sends the credentials only when the server asks (a 401), in the scheme it asks for.

    NTLM (or Negotiate, answered with NTLM) through ``requests_ntlm`` when installed: that is what
    on-premises SharePoint wants and what the original agent's sp-request speaks. Basic otherwise.
    Waiting for the challenge costs one round trip per file but never sends a password in a scheme
    the server did not ask for. ``username`` may be ``DOMAIN\\user``.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.register_hook("response", self._answer)
        return request

    def _answer(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "").lower()
        if ("ntlm" in challenge or "negotiate" in challenge) and HttpNtlmAuth is not None:
            try:
                answered: requests.Response = HttpNtlmAuth(self.username, self.password).response_hook(
                    response, **kwargs)
            except Exception:  # no NTLM challenge came back, or the handshake broke: keep the 401
                return response
            return answered
        if "basic" not in challenge or "Authorization" in response.request.headers:
            return response
        _ = response.content  # read the 401 body so the connection can be reused
        response.close()
        retry = response.request.copy()
        HTTPBasicAuth(self.username, self.password)(retry)
        adapter = getattr(response, "connection", None)
        if adapter is None:
            return response
        answered = adapter.send(retry, **kwargs)
        answered.history.append(response)
        return answered
