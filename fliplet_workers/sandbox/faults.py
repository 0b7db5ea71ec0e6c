"""Injected failures and latency: how tests and benchmarks make the sandbox misbehave on purpose.

Why: the agent's failure paths (a commit that errors, an answer that never comes, a slow server) are
the product, and they can only be tested against a peer that fails exactly when asked to.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from fliplet_workers.sandbox.basics import bad_request

FAULT_KINDS = ("commit", "data", "query", "upload")
FAULT_ACTIONS = ("ok", "error", "drop-after-apply", "drop-before-apply")


# ----------------------------------------------------------------------------------------- faults


class Faults:
    """Injected failures and latency, per kind of call (``commit``, ``data``, ``query``, ``upload``).

    A configuration looks like ``{"commit": ["error", "drop-after-apply", "ok"], "commit_delay_ms":
    50, "data_delay_ms": 0}``: each list is a queue consumed one action per request of that kind;
    an empty queue means "ok". Setting a configuration replaces the previous one entirely.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[str]] = {k: deque() for k in FAULT_KINDS}
        self._delays_ms: dict[str, float] = dict.fromkeys(FAULT_KINDS, 0.0)

    def configure(self, config: Mapping[str, Any]) -> None:
        """Replace the whole configuration; raises ``SandboxError(400)`` on an unknown key/action."""
        if not isinstance(config, Mapping):
            raise bad_request("The fault configuration must be a JSON object")
        queues: dict[str, deque[str]] = {k: deque() for k in FAULT_KINDS}
        delays = dict.fromkeys(FAULT_KINDS, 0.0)
        for key, value in config.items():
            if key in FAULT_KINDS:
                if not isinstance(value, list) or any(a not in FAULT_ACTIONS for a in value):
                    raise bad_request(f"{key} must be a list of {', '.join(FAULT_ACTIONS)}")
                queues[key].extend(value)
            elif key.endswith("_delay_ms") and key[: -len("_delay_ms")] in FAULT_KINDS:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise bad_request(f"{key} must be a non-negative number")
                delays[key[: -len("_delay_ms")]] = float(value)
            else:
                raise bad_request(f"Unknown fault setting: {key}")
        with self._lock:
            self._queues, self._delays_ms = queues, delays

    def set(self, **config: Any) -> None:
        """Python spelling of :meth:`configure`: ``faults.set(commit=["error"], commit_delay_ms=50)``."""
        self.configure(config)

    def clear(self) -> None:
        self.configure({})

    def next_action(self, kind: str) -> str:
        with self._lock:
            queue = self._queues[kind]
            return queue.popleft() if queue else "ok"

    def delay_seconds(self, kind: str) -> float:
        with self._lock:
            return self._delays_ms[kind] / 1000.0

    def describe(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {k: list(q) for k, q in self._queues.items()}
            out.update({f"{k}_delay_ms": v for k, v in self._delays_ms.items()})
            return out
