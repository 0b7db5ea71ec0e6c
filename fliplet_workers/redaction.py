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
_pattern: re.Pattern[str] | None = None
#: The secrets as a tuple, for the cheap substring test that spares most lines the regex.
_candidates: tuple[str, ...] = ()


def register(value: str | None) -> None:
    """Remember a secret so that :func:`redact` can scrub it from any text."""
    global _pattern, _candidates
    if value and len(value) >= 4 and str(value) not in _known:
        _known.add(str(value))
        _candidates = tuple(_known)
        _pattern = None


def _known_pattern() -> re.Pattern[str] | None:
    """One regex for every registered secret, longest first. A secret is only replaced where it is not
    part of a longer word or number (so a password ``1234`` does not mangle port ``41234``)."""
    global _pattern
    if _pattern is None and _known:
        alternatives = "|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True))
        _pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
    return _pattern


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s]+)@")


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and any URL password replaced by ``***``.

    Called for every log line (one or two per source row at ``debug``), so each regex runs only
    where a plain substring test says it could match: a URL password needs ``://``, a secret needs
    to occur as a substring at all."""
    out = str(text)
    if "://" in out:
        out = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}:***@", out)
    for secret in _candidates:
        if secret in out:
            pattern = _known_pattern()
            return pattern.sub("***", out) if pattern is not None else out
    return out
