"""What every part of the sandbox shares: the refusal it answers with, ids as Fliplet reads them,
and timestamps as Fliplet writes them.

Why a module of its own: the store, its query language, the commit log and the HTTP layer all raise
the same :class:`SandboxError`, and none of them should import another just for it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


class SandboxError(Exception):
    """A request the sandbox refuses: becomes ``{"message": ...}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> SandboxError:
    return SandboxError(400, message)


def now_iso() -> str:
    """UTC time as a JavaScript ``Date.toJSON()`` gives it: ``2024-01-31T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_id(value: Any, what: str) -> int:
    """Accept an int id, or a string of digits as Fliplet does; refuse anything else."""
    if isinstance(value, bool):
        raise bad_request(f"Invalid {what}: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise bad_request(f"Invalid {what}: {value!r}")



def non_negative(value: Any, what: str) -> int | None:
    """A paging number (``offset``, ``limit``): None when absent, else a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{what} must be a non-negative integer")
    return value
