"""What a failed Fliplet API call means for the caller: retry it, find out whether it was applied,
split the batch, or stop.

Why here: only the adapter knows HTTP. It turns every failure into one of four kinds, and the retry
rules (``core/retry.py``) and the media uploads decide by kind alone, so the core never sees a status
code. The kinds:

* ``"retry"``: known *not* applied and worth sending again: an answer of 5xx, 408 or 429, or a
  connection that was never established (refused, DNS, connect timeout);
* ``"unknown"``: may have been applied: no answer in time, or the connection was lost after the
  request was sent;
* ``"refused"``: the server refuses something in the request (400, 413, 422): sending it again as it
  is fails again, but a smaller part of it may pass;
* ``"fatal"``: anything else (401, 403, other statuses, an answer that is not JSON).

This module imports nothing from the package, so ``errors.py`` can use it.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["retry", "unknown", "refused", "fatal"]
KINDS: tuple[Kind, ...] = ("retry", "unknown", "refused", "fatal")

#: Answers that say the request was not applied and may pass if sent again.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
#: Answers that say the server refuses something in the request: split the batch.
SPLITTABLE = frozenset({400, 413, 422})


def kind_of(status: int | None, outcome_unknown: bool = False) -> Kind:
    """The kind of a failure with this HTTP ``status`` (None: no answer came back)."""
    if outcome_unknown:
        return "unknown"
    if status is None or status in RETRYABLE:
        return "retry"
    if status in SPLITTABLE:
        return "refused"
    return "fatal"


def may_pass_later(kind: Kind) -> bool:
    """Whether sending the same request again may succeed (after a lookup if ``unknown``)."""
    return kind in ("retry", "unknown")
