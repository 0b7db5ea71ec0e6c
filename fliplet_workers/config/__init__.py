"""The config model and its loaders. ``load_config(path)`` is the one entry point."""

import os

from fliplet_workers.config.model import (
    Config,
    Database,
    Encryption,
    FileColumn,
    Operation,
)

__all__ = ["Config", "Database", "Encryption", "FileColumn", "Operation", "load_config"]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a YAML (``.yml``/``.yaml``) or Python code config (``.py``)."""
    from fliplet_workers.config.loader import load_config as _load

    return _load(path)
