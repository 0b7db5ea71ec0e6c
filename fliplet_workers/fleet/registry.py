"""Config names → config files, strictly inside the config directory; scanned and validated once per change.

A task message carries a config *name* (``"users"``), never a path or a token: whoever can send a task
can only pick one of the files the operators put in the directory. A name is a file name without its
extension, made of letters, digits, ``_``, ``-`` and ``.``, not starting with a dot; a path, ``..`` or
an absolute name is refused, and so is a symlink that leads outside the directory.

Parsing is cached by (path, mtime, size), so beat can rescan hundreds of configs every few seconds and
a worker loads a config once per change rather than once per batch.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from fliplet_workers.config import Config, load_config
from fliplet_workers.config.loader import NeedsEnvironment
from fliplet_workers.errors import ConfigError
from fliplet_workers.redaction import redact

SUFFIXES = (".yml", ".yaml", ".py")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


@dataclass(frozen=True)
class ConfigFile:
    """One config file as found by a scan: either a loaded ``config`` or the ``problems`` that stop it."""

    name: str
    path: str
    config: Config | None = None
    problems: tuple[str, ...] = ()
    #: ``${NAME}`` variables unset here (and nothing else wrong): fine where they are set.
    needs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.config is not None

    @property
    def problem(self) -> str:
        """The first problem (what ``status`` shows)."""
        return self.problems[0] if self.problems else ""


@dataclass(frozen=True)
class Scan:
    """The directory at one moment. ``signature`` changes whenever a file is added, edited or removed."""

    directory: str
    files: tuple[ConfigFile, ...] = ()
    signature: tuple[tuple[str, int, int], ...] = ()
    error: str | None = None  # the directory itself cannot be read

    @property
    def valid(self) -> list[ConfigFile]:
        return [f for f in self.files if f.ok]

    @property
    def invalid(self) -> list[ConfigFile]:
        """Every file that cannot be loaded here (beat skips them all)."""
        return [f for f in self.files if not f.ok]

    @property
    def needing_env(self) -> list[ConfigFile]:
        """Files whose only problem is a ``${NAME}`` unset in this environment."""
        return [f for f in self.files if not f.ok and f.needs]

    @property
    def broken(self) -> list[ConfigFile]:
        """Files that are wrong whatever the environment (``invalid`` minus ``needing_env``)."""
        return [f for f in self.files if not f.ok and not f.needs]


@dataclass
class _Cached:
    stamp: tuple[int, int]
    result: Config | ConfigError


@dataclass
class Registry:
    directory: str
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> str:
        return os.path.realpath(self.directory)

    # -- names ---------------------------------------------------------------------------------------

    def resolve(self, name: object) -> str:
        """The path of the config called ``name`` (``users`` or ``users.yml``); ConfigError if none."""
        where = os.path.join(self.directory, str(name))
        if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
            raise ConfigError(where, [
                f"{name!r} is not a config name: give the file name of a config in {self.directory} "
                "(letters, digits, '_', '-', '.'), without a path"])
        stem, suffix = os.path.splitext(name)
        candidates = [name] if suffix in SUFFIXES else [name + s for s in SUFFIXES]
        found = [c for c in candidates if os.path.isfile(os.path.join(self.directory, c))]
        if not found:
            raise ConfigError(where, [f"there is no config named '{name}' in {self.directory}"])
        if len(found) > 1:
            raise ConfigError(where, [f"the name '{name}' is ambiguous: {', '.join(found)}; rename one"])
        path = os.path.join(self.directory, found[0])
        if not self._inside(path):
            raise ConfigError(where, [f"'{name}' leads outside the config directory {self.directory}"])
        return path

    def _inside(self, path: str) -> bool:
        root = self.root
        return os.path.commonpath([os.path.realpath(path), root]) == root

    def load(self, name: object) -> Config:
        """The validated config called ``name`` (cached until its file changes); ConfigError otherwise."""
        return self._load_path(self.resolve(name))

    # -- scanning ------------------------------------------------------------------------------------

    def scan(self) -> Scan:
        """Every config file of the directory, loaded or with its problems. Never raises."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as error:
            return Scan(self.directory, error=f"cannot read the config directory {self.directory}: "
                                              f"{error.strerror or error}")
        by_stem: dict[str, list[str]] = {}
        for entry in names:
            stem, suffix = os.path.splitext(entry)
            if suffix in SUFFIXES and not entry.startswith((".", "_")) and \
                    os.path.isfile(os.path.join(self.directory, entry)):
                by_stem.setdefault(stem, []).append(entry)
        files: list[ConfigFile] = []
        signature: list[tuple[str, int, int]] = []
        for stem, entries in sorted(by_stem.items()):
            for entry in entries:
                path = os.path.join(self.directory, entry)
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                signature.append((entry, info.st_mtime_ns, info.st_size))
            files.append(self._scan_one(stem, entries))
        self._forget(f.path for f in files)
        return Scan(self.directory, tuple(files), tuple(signature))

    def _scan_one(self, stem: str, entries: list[str]) -> ConfigFile:
        path = os.path.join(self.directory, entries[0])
        if len(entries) > 1:
            return ConfigFile(stem, path, problems=(
                f"{len(entries)} config files are named '{stem}' ({', '.join(entries)}): rename all but one",))
        if not NAME.fullmatch(stem) or ".." in stem:
            return ConfigFile(stem, path, problems=(
                f"'{entries[0]}' cannot be named in a task: use letters, digits, '_', '-' and '.' only",))
        if not self._inside(path):
            return ConfigFile(stem, path, problems=(f"'{entries[0]}' leads outside the config directory",))
        try:
            return ConfigFile(stem, path, config=self._load_path(path))
        except NeedsEnvironment as error:
            return ConfigFile(stem, path, problems=tuple(error.problems),
                              needs=() if error.others else tuple(error.needs))
        except ConfigError as error:
            return ConfigFile(stem, path, problems=tuple(error.problems) or (error.message,))

    def _load_path(self, path: str) -> Config:
        info = os.stat(path)
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._cache.get(path)
        if cached is None or cached.stamp != stamp:
            result: Config | ConfigError
            try:
                result = load_config(path)
            except ConfigError as error:
                result = error
            except Exception as error:  # a code config that blows up on import, an unreadable file...
                result = ConfigError(path, [f"cannot be loaded: {type(error).__name__}: {redact(str(error))}"])
            cached = _Cached(stamp, result)
            with self._lock:
                self._cache[path] = cached
        if isinstance(cached.result, ConfigError):
            raise cached.result
        return cached.result

    def _forget(self, present: Iterable[str]) -> None:
        keep = set(present)
        with self._lock:
            for path in [p for p in self._cache if p not in keep]:
                del self._cache[path]
