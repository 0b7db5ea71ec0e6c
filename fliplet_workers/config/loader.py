"""Load a config file: the one entry point, choosing the format by the file's extension.

``.yml``/``.yaml`` files are read by :mod:`.yaml_config`, ``.py`` files by :mod:`.code_config`. Both
read their options through the table of :mod:`.options` and report every problem at once as one
:class:`~fliplet_workers.errors.ConfigError` (see :mod:`.problems`); this module only dispatches,
so that neither format imports the other and nothing here is imported back.
"""

from __future__ import annotations

import os
from pathlib import Path

from fliplet_workers.config.code_config import load_code_config
from fliplet_workers.config.model import Config
from fliplet_workers.config.problems import NeedsEnvironment
from fliplet_workers.config.yaml_config import load_yaml_config
from fliplet_workers.errors import ConfigError

__all__ = ["NeedsEnvironment", "load_config"]

YAML_SUFFIXES = (".yml", ".yaml")
CODE_SUFFIXES = (".py",)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a YAML (``.yml``/``.yaml``) or Python code config (``.py``).

    Raises :class:`ConfigError` listing every problem found (:class:`NeedsEnvironment` when some of
    them are only unset ``${NAME}`` variables).
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return load_yaml_config(file)
    if suffix in CODE_SUFFIXES:
        return load_code_config(file)
    raise ConfigError(
        str(path),
        [f"{file.name}: unsupported config file type '{suffix or '(none)'}'; use .yml, .yaml or .py"],
    )
