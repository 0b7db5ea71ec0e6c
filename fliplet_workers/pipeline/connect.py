"""Open what a run needs, logging each step with the original agent's wording.

Shared by the foreground agent and the fleet's planning task, so both announce the same steps.
"""

from __future__ import annotations

from typing import Any

from fliplet_workers.config.model import Config
from fliplet_workers.fliplet.api import FlipletApi
from fliplet_workers.fliplet.client import FlipletClient
from fliplet_workers.fliplet.sessions import USER_AGENT
from fliplet_workers.logs import OperationLog
from fliplet_workers.sources.reader import open_database


def connect_client(config: Config, log: OperationLog | None = None) -> FlipletClient:
    client = FlipletClient(config.auth_token, config.api_url, ca_bundle=config.ca_bundle, timeout=config.timeout)
    if log is not None:
        log.info(f"User Agent for outgoing HTTP requests has been set to {USER_AGENT}")
        log.debug(f"Regional URL has been set to {client.base_url}")
    return client


def authenticate(api: FlipletApi, log: OperationLog) -> dict[str, Any]:
    log.info("Authenticating with Fliplet API...")
    user = api.user()
    name = user.get("email") or user.get("fullName") or "unknown user"
    log.info(f"Authentication has been verified successfully. You're logged in as {name}")
    return user


def connect_database(config: Config, log: OperationLog) -> Any:
    if config.database is None:
        return None
    log.info("Initialising connection with source database...")
    db = open_database(config)
    log.info("Connection has been established successfully.")
    return db
