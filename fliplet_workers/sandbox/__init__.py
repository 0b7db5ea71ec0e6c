"""A local Fliplet-compatible HTTP server, for offline runs (``fliplet-agent sandbox``) and tests.

``SandboxServer`` serves the Fliplet REST endpoints the agent and apps use, a console page behind a
token login (data sources, their entries, and the log of every commit received with each entry's
change, before → after), and ``/_sandbox/*`` endpoints (the sandbox's own token only) to inspect
state and inject faults; ``Store`` is its in-memory (optionally persisted) data. It refuses foreign
``Host`` and ``Origin`` headers, so that a web page cannot reach it from a desktop's browser.
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
