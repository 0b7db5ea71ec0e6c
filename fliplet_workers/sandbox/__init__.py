"""A local Fliplet-compatible HTTP server, for offline runs (``fliplet-agent sandbox``) and tests.

``SandboxServer`` serves the Fliplet REST endpoints the agent uses, plus token-less ``/_sandbox/*``
endpoints to inspect state and inject faults; ``Store`` is its in-memory (optionally persisted) data.
"""

from fliplet_workers.sandbox.server import DEFAULT_PORT, Faults, SandboxServer, serve_forever
from fliplet_workers.sandbox.store import DEMO_TOKEN, NO_ACCESS_TOKEN, SandboxError, Store

__all__ = [
    "DEFAULT_PORT",
    "DEMO_TOKEN",
    "NO_ACCESS_TOKEN",
    "Faults",
    "SandboxError",
    "SandboxServer",
    "Store",
    "serve_forever",
]
