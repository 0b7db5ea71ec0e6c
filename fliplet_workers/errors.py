"""Typed, user-facing errors.

Each failure a user can meet has its own type and a message written for that user. They are raised
deep in the code and caught once, at the edge (CLI or Celery task), which logs them with the
original agent's wording and picks the exit code. No message ever contains a secret: callers pass
already-redacted text (see ``fliplet_workers.redaction``).
"""

from __future__ import annotations

from fliplet_workers.fliplet.failures import Kind, kind_of


class AgentError(Exception):
    """Base of every error the agent reports to the user."""

    exit_code = 1
    #: The original agent's log-table prefix for this failure, e.g. "Unable to connect to the database".
    headline = "There was an error running your config file."

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def log_text(self) -> str:
        """The line the edge logs, in the original's wording: "<headline>: <message>"."""
        head = self.headline.rstrip(".:")
        return f"{head}: {self.message}" if self.message else self.headline


class ConfigError(AgentError):
    """The config file cannot be used. Lists every problem found, each with file, line and option."""

    exit_code = 2
    headline = "There was an error running your config file."

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s) found:\n{body}")

    def log_text(self) -> str:
        return f"There was an error running your config file. {self.message}"


class SourceConnectError(AgentError):
    headline = "Unable to connect to the database"


class SourceQueryError(AgentError):
    headline = "Cannot execute database query"


class SourceError(AgentError):
    """A non-SQL source (API, file, code-config function) failed."""

    headline = "There was an error running your config file."


class AuthError(AgentError):
    """The token is missing or rejected (HTTP 401)."""

    headline = "Unable to authenticate with Fliplet API"
    #: Nothing else would pass either: the run stops (see ``fliplet.failures``).
    kind: Kind = "fatal"


class AccessError(AgentError):
    """The token has no access to the data source (HTTP 403/404 on it)."""

    headline = "You don't have access to the dataSource"
    kind: Kind = "fatal"

    def log_text(self) -> str:
        return self.message


class ApiError(AgentError):
    """Any other failed Fliplet API call. ``status`` is None when no answer came back.

    ``kind`` says what the caller may do about it (``fliplet.failures``: "retry", "unknown",
    "refused", "fatal"); the Fliplet adapter sets it, and callers decide by it alone. Without it, it
    is derived from ``status`` and ``outcome_unknown``.
    """

    headline = "Cannot sync data to Fliplet servers"

    def __init__(self, message: str, status: int | None = None, outcome_unknown: bool = False, *,
                 kind: Kind | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind: Kind = kind or kind_of(status, outcome_unknown)

    @property
    def outcome_unknown(self) -> bool:
        """True when the request may have been applied (timeout, dropped connection)."""
        return self.kind == "unknown"


class EncryptionError(AgentError):
    headline = "Cannot sync data to Fliplet servers"


class FileFetchError(AgentError):
    """One file named in a row could not be read; the row is still synced without that column."""

    headline = "Unable to fetch file"


class ColumnError(AgentError):
    """An option names a column the source's rows do not have (``primary_column: ID`` for ``id``).

    Raised after the first row is read and before anything is sent: with a wrong key column every
    row would be keyless, and in replace mode every entry an orphan to delete.
    """

    headline = "There was an error running your config file."


class DeleteLimitError(AgentError):
    """The run would delete more entries than ``delete_limit`` allows, and this is known before
    anything is sent (replace mode without a primary key deletes every entry)."""

    headline = "Cannot sync data to Fliplet servers"
