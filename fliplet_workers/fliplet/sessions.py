"""The one place that makes ``requests`` sessions: the Fliplet client's, the file downloads', the
source functions' ``http`` and the alert webhooks'.

Why one place: each session must get the same four things right, and four hand-made sessions got
them differently:

* TLS: verification stays on; ``ca_bundle`` (a corporate proxy's CA) or else the environment's
  ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``. With ``trust_env`` on, ``requests`` lets the
  environment's bundle override an explicit one; here the explicit one wins;
* proxies: ``HTTP(S)_PROXY`` / ``NO_PROXY`` are read from the environment once, when the session is
  made, not on every request (``requests`` re-reads the environment each time: ~0.3 ms per commit);
* ``User-Agent: Fliplet Agent/<version>``, as the original agent sends;
* a connection pool sized for the threads that share the session.

The caller closes the session (``session.close()``) when its run ends.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from fliplet_workers import __version__

if TYPE_CHECKING:
    from requests.sessions import _Settings

__all__ = ["USER_AGENT", "new_session"]

USER_AGENT = f"Fliplet Agent/{__version__}"


def new_session(*, base_url: str | None = None, ca_bundle: str | None = None,
                headers: Mapping[str, str] | None = None, pool_size: int = 8) -> requests.Session:
    """A session with TLS, proxies, User-Agent and pool set as described in the module docstring.

    ``base_url``: the one site the session talks to (the Fliplet API), whose proxy is then looked up
    once; without it (downloads, webhooks, user code) ``NO_PROXY`` is applied per URL, from the
    environment as it was when the session was made.
    """
    if base_url:
        session = requests.Session()
        session.proxies.update(requests.utils.get_environ_proxies(base_url))
    else:
        session = _ProxiesReadOnce(urllib.request.getproxies_environment())
    session.trust_env = False
    env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    session.verify = ca_bundle or env_bundle or True
    session.headers["User-Agent"] = USER_AGENT
    session.headers.update(headers or {})
    size = max(1, pool_size)
    adapter = HTTPAdapter(pool_connections=size, pool_maxsize=size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _ProxiesReadOnce(requests.Session):
    """A session for many sites: the environment's proxies as read once, ``NO_PROXY`` per URL."""

    def __init__(self, environ_proxies: Mapping[str, str]) -> None:
        super().__init__()
        self._environ = dict(environ_proxies)
        self._proxies = {k: v for k, v in self._environ.items() if k != "no"}

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> _Settings:
        if not proxies and self._proxies:
            host = urlsplit(str(url)).hostname or ""
            bypass = urllib.request.proxy_bypass_environment(host, self._environ)  # type: ignore[attr-defined]
            proxies = {} if bypass else dict(self._proxies)
        return super().merge_environment_settings(url, proxies, stream, verify, cert)
