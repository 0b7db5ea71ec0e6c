"""Per-run extensions of a push: file uploads and field encryption.

They hook into a run at two points: ``run.prepare`` rewrites each batch just before it is sent
(upload files, encrypt fields) and ``run.decode_remote`` turns remote data back into comparable
plaintext for the diff.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fliplet_workers.run import OperationRun


def attach(run: OperationRun) -> None:
    """Set ``run.prepare`` and ``run.decode_remote`` for the operation's files and encryption."""
    return None
