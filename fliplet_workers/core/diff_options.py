"""The options the diff is run with (derived from an operation's config), shared by its parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Where the diff says what it decided about each row (the original's debug lines), if anywhere:
#: called with one line at a time. A note that also has an attribute ``lines`` (a callable taking
#: several lines) is given the two lines about a row that exists remotely in one call: the agent's
#: log does (``logs.OperationLog``), which spares a clock read and a routing check per row.
Note = Callable[[str], None]


@dataclass(frozen=True)
class DiffOptions:
    primary_column: str | None
    case_insensitive: bool = False
    timestamp_column: str | None = None
    delete_column: str | None = None
    mode: str = "update"  # "update" keeps orphans, "replace" deletes them
    #: Columns left out of the content comparison (file columns: the remote holds the Fliplet URL).
    ignore_columns: frozenset[str] = frozenset()
    #: Turns a remote entry's data back into comparable plaintext (decrypts encrypted fields).
    decode_remote: Callable[[dict[str, Any]], dict[str, Any]] | None = None
