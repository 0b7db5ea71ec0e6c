"""A thin client for the Fliplet REST API calls the agent makes (see ``shared/fliplet-api.md``).

On the wire it behaves like the original agent: the base URL comes from the token's region, every
request carries ``Auth-token`` and ``User-Agent: Fliplet Agent/<version>``, and the server's
``message`` is what the user sees. Unlike the original it keeps TLS verification on (``ca_bundle``
for corporate proxies), reuses connections, and reads ``GET .../data`` as a stream so that a million
entries are never held in memory at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import ijson
import orjson
import requests
from requests.adapters import HTTPAdapter

from fliplet_workers import __version__
from fliplet_workers.errors import AccessError, ApiError, AuthError
from fliplet_workers.secrets import redact, register

REGIONS = {
    "eu": "https://api.fliplet.com/",
    "us": "https://us.api.fliplet.com/",
    "ca": "https://ca.api.fliplet.com/",
}
USER_AGENT = f"Fliplet Agent/{__version__}"


def base_url_for(token: str, override: str | None = None) -> str:
    """The API base URL: ``override`` if given, else from the token's region prefix (``eu--…``)."""
    if override:
        return override if override.endswith("/") else override + "/"
    return REGIONS.get(str(token)[:2].lower(), REGIONS["eu"])


class FlipletClient:
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
        self.session = requests.Session()
        self.session.headers.update({"Auth-token": str(token), "User-Agent": USER_AGENT})
        # The environment (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE…) is read once here instead of on
        # every request (requests re-reads it each time, ~0.3 ms per commit).
        env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self.session.verify = ca_bundle or env_bundle or True
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

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
        files: Any = None,
        data: Any = None,
        stream: bool = False,
        datasource_id: int | None = None,
        timeout: float | None = None,
        content_type: str | None = None,
    ) -> requests.Response:
        """Send one request; map failures to AuthError / AccessError / ApiError.

        ``ApiError.outcome_unknown`` is set when the request may have been applied (the connection was
        lost or no answer came in time); a refused connection is known not to have been.
        """
        url = self.base_url + path.lstrip("/")
        body = orjson.dumps(json) if json is not None else data
        if json is not None:
            content_type = "application/json"
        headers = {"Content-Type": content_type} if content_type else None
        try:
            response = self.session.request(
                method, url, data=body, params=params, files=files, headers=headers,
                stream=stream, timeout=timeout or self.timeout,
            )
        except requests.exceptions.ConnectTimeout:
            raise ApiError(f"Could not connect to {self.base_url} (timed out)") from None
        except requests.exceptions.SSLError as error:
            raise ApiError(f"TLS verification of {self.base_url} failed: {redact(str(error))}. "
                           "Set 'ca_bundle' to your proxy's CA certificate file.") from None
        except requests.exceptions.ConnectionError as error:
            if _never_connected(error):
                raise ApiError(f"Could not connect to {self.base_url}: {_reason(error)}") from None
            raise ApiError(f"The connection to {self.base_url} was lost: {_reason(error)}",
                           outcome_unknown=True) from None
        except requests.exceptions.Timeout:
            hint = "" if timeout else " (option 'timeout')"
            raise ApiError(f"No answer from {self.base_url} within {timeout or self.timeout:g} seconds{hint}",
                           outcome_unknown=True) from None
        except requests.exceptions.RequestException as error:
            raise ApiError(redact(str(error)), outcome_unknown=True) from None
        if response.status_code >= 400:
            self._raise_for(response, datasource_id)
        return response

    def _raise_for(self, response: requests.Response, datasource_id: int | None) -> None:
        message = _server_message(response)
        status = response.status_code
        if status == 401:
            raise AuthError(message or "the token was rejected (HTTP 401)")
        if status in (403, 404) and datasource_id is not None:
            guidance = (f"You don't have access to the dataSource ({datasource_id}). "
                        "Please check the permissions of your Fliplet user.")
            raise AccessError(f"{guidance} The server said: {message}" if message else guidance)
        if status == 403:
            raise AccessError(message or "Access denied (HTTP 403)")
        raise ApiError(f"{message or response.reason} (HTTP {status})", status=status)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _parse_json(self.request(method, path, **kwargs), path)

    # -- calls -----------------------------------------------------------------------------------

    def user(self) -> dict[str, Any]:
        """``GET v1/user``: verifies the token."""
        return dict(self.json("GET", "v1/user").get("user") or {})

    def iter_entries(self, datasource_id: int) -> Iterator[dict[str, Any]]:
        """``GET v1/data-sources/:id/data``, parsed incrementally, one entry at a time."""
        response = self.request("GET", f"v1/data-sources/{datasource_id}/data", stream=True,
                                datasource_id=datasource_id)
        response.raw.decode_content = True
        try:
            yield from ijson.items(response.raw, "entries.item", use_float=True)
        except (ijson.JSONError, requests.exceptions.RequestException, OSError) as error:
            raise ApiError(f"Reading the entries of data source {datasource_id} failed: {redact(str(error))}",
                           outcome_unknown=True) from None
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

    def find_keys(self, datasource_id: int, column: str, keys: list[Any]) -> list[Any]:
        """Which of ``keys`` exist as ``column`` values remotely (to re-plan an unknown outcome)."""
        found: list[Any] = []
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            entries = self.query(datasource_id, {"where": {column: {"$in": chunk}}, "attributes": [column]})
            found.extend((e.get("data") or {}).get(column) for e in entries)
        return found

    def find_applied_updates(self, datasource_id: int, column: str, updates: list[dict[str, Any]]) -> list[Any]:
        """The ids of ``updates`` (``{"id", "data"}``) whose entry already holds every value sent, looked
        up by their ``column`` value (to confirm an unanswered commit's updates instead of re-sending)."""
        by_key: dict[Any, list[dict[str, Any]]] = {}
        for update in updates:
            key = (update.get("data") or {}).get(column)
            if key is not None and not isinstance(key, (dict, list)):
                by_key.setdefault(key, []).append(update)
        applied: list[Any] = []
        keys = list(by_key)
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            remote = {e.get("id"): e.get("data") or {}
                      for e in self.query(datasource_id, {"where": {column: {"$in": chunk}}})}
            for key in chunk:
                for update in by_key[key]:
                    held = remote.get(update["id"])
                    if held is not None and all(k in held and held[k] == v for k, v in update["data"].items()):
                        applied.append(update["id"])
        return applied

    def organizations(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "v1/organizations").get("organizations") or [])

    def post_stream(
        self,
        path: str,
        body: Any,
        *,
        content_type: str,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """POST a streamed body with its own ``Content-Type`` (a multipart upload); parse the JSON answer.

        Why: ``requests``' own ``files=`` encoding builds the whole multipart body in memory. ``body``
        is a file-like object with ``read`` and ``__len__`` (see ``fliplet.media.MultipartBody``), sent
        with a ``Content-Length`` and read in small blocks.
        """
        response = self.request("POST", path, data=body, params=params, content_type=content_type,
                                timeout=timeout)
        return _parse_json(response, path)


def _parse_json(response: requests.Response, path: str) -> Any:
    try:
        return orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:
        raise ApiError(f"The server sent a response that is not JSON for {path}",
                       status=response.status_code) from None


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or ""
        return redact(str(message))
    return ""


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
