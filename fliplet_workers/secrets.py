"""Keep secrets (tokens, passwords, keys) out of logs, reprs, task arguments and exceptions."""

from __future__ import annotations

import re


class Secret(str):
    """A string that never shows itself: ``repr``/``format`` print ``***``.

    It is still a ``str`` so it can be passed to drivers and headers; use ``.reveal()`` where the
    real value is meant, to make that visible in review.
    """

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)


_known: set[str] = set()


def register(value: str | None) -> None:
    """Remember a secret so that :func:`redact` can scrub it from any text."""
    if value and len(value) >= 4:
        _known.add(str(value))


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s]+)@")


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and any URL password replaced by ``***``."""
    out = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}:***@", str(text))
    for value in sorted(_known, key=len, reverse=True):
        if value in out:
            out = out.replace(value, "***")
    return out
