"""What a worker process keeps from task to task: API clients and encryption keys, per config.

Why: a commit task is small (one batch), so what it would otherwise rebuild every time dominates it.
The API client keeps its HTTP connections open (a commit then costs no TCP or TLS handshake); the
encryption key is resolved once per config (three keystore requests) rather than by every task.
Both live in this process's memory only: a key is never written to Redis, a task's arguments or a log.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Any

from fliplet_workers.config import Config
from fliplet_workers.fliplet.client import FlipletClient
from fliplet_workers.pipeline.connect import connect_client
from fliplet_workers.pipeline.spec import RunSpec
from fliplet_workers.pipeline.steps.encryption import KeyCache


class FleetError(Exception):
    """An unexpected failure of a step, with a message already scrubbed of secrets (shown in Flower)."""


_local = threading.local()


def shared_client(config: Config) -> FlipletClient:
    """One API client per config and thread, kept from task to task so that its HTTP connections
    stay open. A changed token, URL or CA bundle gets a new client."""
    clients: dict[str, tuple[tuple[Any, ...], FlipletClient]] = _local.__dict__.setdefault("clients", {})
    token = hashlib.sha256(str.__str__(config.auth_token).encode()).hexdigest()
    wanted = (token, config.api_url, config.ca_bundle, config.timeout)
    known = clients.get(config.path)
    if known is not None and known[0] == wanted:
        return known[1]
    if known is not None:
        known[1].close()
    client = connect_client(config)
    clients[config.path] = (wanted, client)
    return client


#: The encryption keys this worker process has read, by config (never written anywhere).
KEYS = KeyCache()


def commit_key(spec: RunSpec, client: FlipletClient, run_id: str) -> str:
    """The operation's encryption key for a commit task: read (never created: the planning task is
    the one place that may create it, so two tasks never race to store two keys) once per worker
    process, config and run."""
    return KEYS.key(spec, client, run_id)


def worker_label() -> str:
    """Which process does a step: recorded in the batch state (and used by the tests to find it)."""
    return f"{socket.gethostname()}:{os.getpid()}"
