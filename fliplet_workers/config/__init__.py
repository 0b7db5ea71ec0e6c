"""The config model and its loaders. ``load_config(path)`` is the one entry point.

Every option is declared once, in :mod:`.options`; ``python -m fliplet_workers.config.reference``
prints the README's option reference from it. The loaders are imported on first use so that code
reading only the model (the core, the fleet's tasks) does not import YAML or run the option table.
"""

import os

from fliplet_workers.config.model import (
    Config,
    Database,
    Encryption,
    FileColumn,
    Operation,
)
from fliplet_workers.config.problems import NeedsEnvironment

__all__ = ["Config", "Database", "Encryption", "FileColumn", "NeedsEnvironment", "Operation", "load_config"]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a YAML (``.yml``/``.yaml``) or Python code config (``.py``)."""
    from fliplet_workers.config.loader import load_config as _load

    return _load(path)
