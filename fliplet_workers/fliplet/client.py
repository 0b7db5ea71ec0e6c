"""``FlipletClient``: the :class:`~fliplet_workers.fliplet.api.FlipletApi` calls over HTTP (see
``shared/fliplet-api.md``).

On the wire it behaves like the original agent: the base URL comes from the token's region, every
request carries ``Auth-token`` and ``User-Agent: Fliplet Agent/<version>``, and the server's
``message`` is what the user sees. Unlike the original it keeps TLS verification on (``ca_bundle``
for corporate proxies), reuses connections, and reads ``GET .../data`` as a stream so that a million
entries are never held in memory at once.

Every failure leaves here typed and classified (:mod:`fliplet_workers.fliplet.failures`): whoever
calls decides by ``error.kind``, never by an HTTP status code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any

import ijson
import orjson
import requests

from fliplet_workers.errors import AccessError, AgentError, ApiError, AuthError
from fliplet_workers.fliplet.api import FlipletApi, MediaUpload, data_source_body
from fliplet_workers.fliplet.failures import kind_of
from fliplet_workers.fliplet.multipart import MultipartBody
from fliplet_workers.fliplet.sessions import USER_AGENT, new_session
from fliplet_workers.redaction import redact, register

__all__ = ["REGIONS", "USER_AGENT", "FlipletClient", "base_url_for", "error_for"]

REGIONS = {
    "eu": "https://api.fliplet.com/",
    "us": "https://us.api.fliplet.com/",
    "ca": "https://ca.api.fliplet.com/",
}


def base_url_for(token: str, override: str | None = None) -> str:
    """The API base URL: ``override`` if given, else from the token's region prefix (``eu--…``)."""
    if override:
        return override if override.endswith("/") else override + "/"
    return REGIONS.get(str(token)[:2].lower(), REGIONS["eu"])


def error_for(status: int, message: str, datasource_id: int | None, reason: str | None = None) -> AgentError:
    """The typed error for an HTTP error answer with the server's ``message`` (may be empty).

    Shared with :class:`~fliplet_workers.fliplet.memory.MemoryApi`, so both report alike.
    """
    if status == 401:
        return AuthError(message or "the token was rejected (HTTP 401)")
    if status in (403, 404) and datasource_id is not None:
        guidance = (f"You don't have access to the dataSource ({datasource_id}). "
                    "Please check the permissions of your Fliplet user.")
        return AccessError(f"{guidance} The server said: {message}" if message else guidance)
    if status == 403:
        return AccessError(message or "Access denied (HTTP 403)")
    text = message or reason or _phrase(status)
    return ApiError(f"{text} (HTTP {status})", status=status, kind=kind_of(status))


class FlipletClient(FlipletApi):
    """One authenticated session against the Fliplet API."""

    def __init__(
        self,
        token: str,
        base_url: str | None = None,
        *,
        ca_bundle: str | None = None,
        timeout: float = 60.0,
        pool_size: int = 8,
    ) -> None:
        if not token:
            raise AuthError("Auth token is required")
        register(str(token))
        self.base_url = base_url_for(token, base_url)
        self.timeout = timeout
        self.session = new_session(base_url=self.base_url, ca_bundle=ca_bundle,
                                   headers={"Auth-token": str(token)}, pool_size=pool_size)

    def __repr__(self) -> str:
        return f"FlipletClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    # -- transport -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        stream: bool = False,
        datasource_id: int | None = None,
        timeout: float | None = None,
        content_type: str | None = None,
    ) -> requests.Response:
        """Send one request; map failures to AuthError / AccessError / ApiError (with its kind)."""
        body = orjson.dumps(json) if json is not None else data
        if json is not None:
            content_type = "application/json"
        headers = {"Content-Type": content_type} if content_type else None
        try:
            response = self.session.request(
                method, self.base_url + path.lstrip("/"), data=body, params=params, headers=headers,
                stream=stream, timeout=timeout or self.timeout,
            )
        except requests.exceptions.RequestException as error:
            raise self._transport_error(error, timeout) from None
        if response.status_code >= 400:
            raise error_for(response.status_code, _server_message(response), datasource_id, response.reason)
        return response

    def _transport_error(self, error: requests.exceptions.RequestException, timeout: float | None) -> ApiError:
        """No answer: "retry" when the request never reached the server, else "unknown"."""
        if isinstance(error, requests.exceptions.ConnectTimeout):
            return ApiError(f"Could not connect to {self.base_url} (timed out)", kind="retry")
        if isinstance(error, requests.exceptions.SSLError):
            return ApiError(f"TLS verification of {self.base_url} failed: {redact(str(error))}. "
                            "Set 'ca_bundle' to your proxy's CA certificate file.", kind="retry")
        if isinstance(error, requests.exceptions.ConnectionError):
            if _never_connected(error):
                return ApiError(f"Could not connect to {self.base_url}: {_reason(error)}", kind="retry")
            return ApiError(f"The connection to {self.base_url} was lost: {_reason(error)}", kind="unknown")
        if isinstance(error, requests.exceptions.Timeout):
            hint = "" if timeout else " (option 'timeout')"
            return ApiError(f"No answer from {self.base_url} within {timeout or self.timeout:g} seconds{hint}",
                            kind="unknown")
        return ApiError(redact(str(error)), kind="unknown")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any call, its JSON answer parsed. For code configs' ``agent.api`` (arbitrary paths); the
        package itself uses the typed methods below."""
        return _parse_json(self.request(method, path, **kwargs), path)

    # -- data sources and entries ------------------------------------------------------------------

    def user(self) -> dict[str, Any]:
        """``GET v1/user``: verifies the token."""
        return dict(self.json("GET", "v1/user").get("user") or {})

    def organizations(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "v1/organizations").get("organizations") or [])

    def iter_entries(self, datasource_id: int) -> Iterator[dict[str, Any]]:
        """``GET v1/data-sources/:id/data``, parsed incrementally, one entry at a time."""
        response = self.request("GET", f"v1/data-sources/{datasource_id}/data", stream=True,
                                datasource_id=datasource_id)
        response.raw.decode_content = True
        try:
            yield from ijson.items(response.raw, "entries.item", use_float=True)
        except (ijson.JSONError, requests.exceptions.RequestException, OSError) as error:
            raise ApiError(f"Reading the entries of data source {datasource_id} failed: {redact(str(error))}",
                           kind="unknown") from None
        finally:
            response.close()

    def commit(self, datasource_id: int, body: dict[str, Any], *, answer: bool = True) -> dict[str, Any]:
        """``POST v1/data-sources/:id/commit``. With ``answer=False`` the response (every affected
        entry) is not parsed: nobody reads it unless a code config's ``onSync`` asks for it."""
        path = f"v1/data-sources/{datasource_id}/commit"
        if not answer:
            self.request("POST", path, json=body, datasource_id=datasource_id)
            return {}
        return dict(self.json("POST", path, json=body, datasource_id=datasource_id))

    def query(self, datasource_id: int, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``POST v1/data-sources/:id/data/query`` (``where``, ``attributes``, ``limit``…)."""
        answer = self.json("POST", f"v1/data-sources/{datasource_id}/data/query", json=body,
                           datasource_id=datasource_id)
        return list(answer.get("entries") or []) if isinstance(answer, dict) else list(answer)

    def data_sources(self, *, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002 - Fliplet's name
        """``GET v1/data-sources[?type=...]``."""
        answer = self.json("GET", "v1/data-sources", params={"type": type} if type else None)
        return list(answer.get("dataSources") or [])

    def create_data_source(self, name: str, *, type: str | None = None,  # noqa: A002 - Fliplet's name
                           organization_id: int | None = None) -> dict[str, Any]:
        """``POST v1/data-sources``."""
        body = data_source_body(name, type, organization_id)
        created = self.json("POST", "v1/data-sources", json=body)
        return dict(created.get("dataSource") or created)

    def add_entry(self, datasource_id: int, data: dict[str, Any]) -> dict[str, Any]:
        """``PUT v1/data-sources/:id/data``: one new entry whose data is the body."""
        return dict(self.json("PUT", f"v1/data-sources/{datasource_id}/data", json=data,
                              datasource_id=datasource_id))

    # -- media -----------------------------------------------------------------------------------

    def media_folders(self, organization_id: int) -> list[dict[str, Any]]:
        """``GET v1/media/?organizationId=``: the root folders."""
        return list(self.json("GET", "v1/media/", params={"organizationId": organization_id}).get("folders") or [])

    def create_media_folder(self, name: str, organization_id: int) -> dict[str, Any]:
        """``POST v1/media/folders``."""
        return dict(self.json("POST", "v1/media/folders", json={"name": name, "organizationId": organization_id}))

    def media_files(self, folder_id: int, organization_id: int) -> list[dict[str, Any]]:
        """``GET v1/media?folderId=&organizationId=``."""
        answer = self.json("GET", "v1/media", params={"folderId": folder_id, "organizationId": organization_id})
        return list(answer.get("files") or [])

    def upload_media(self, upload: MediaUpload) -> list[dict[str, Any]]:
        """``POST v1/media/files`` with a streamed multipart body (see :mod:`.multipart`)."""
        body = MultipartBody([("checksum", upload.md5)], "files", upload.name, upload.content_type,
                             upload.fileobj, upload.size)
        params = {"folderId": upload.folder_id, "name": upload.name, "organizationId": upload.organization_id}
        path = "v1/media/files"
        answer = _parse_json(self.request("POST", path, data=body, params=params, content_type=body.content_type),
                             path)
        return list(answer.get("files") or []) if isinstance(answer, dict) else []


def _parse_json(response: requests.Response, path: str) -> Any:
    try:
        return orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:
        raise ApiError(f"The server sent a response that is not JSON for {path}",
                       status=response.status_code, kind="fatal") from None


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or ""
        return redact(str(message))
    return ""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _never_connected(error: requests.exceptions.ConnectionError) -> bool:
    """True when the request never reached the server (refused, DNS): safe to resend as is."""
    text = repr(error.args[0]) if error.args else ""
    return any(mark in text for mark in ("NewConnectionError", "NameResolutionError", "Connection refused",
                                         "Failed to establish a new connection"))


def _reason(error: Exception) -> str:
    text = str(error.args[0]) if error.args else str(error)
    for mark in ("Connection refused", "Connection aborted", "RemoteDisconnected", "Connection reset"):
        if mark in text:
            return mark
    return redact(text)[:200]
