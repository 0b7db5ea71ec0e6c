"""Saving the sandbox's state to one JSON file, and loading it back.

Why this shape: a user's rehearsal data should survive a restart, but a save must never leave a
half-written file (tmp + rename) and must not stall requests (the state is snapshotted under the
lock, serialised and written outside it, by a background thread at most every couple of seconds).
Uploaded file bytes go to a ``<data file>.media/`` directory next to it.

Compatibility: keys are only ever added (``commitLog``, ``changedAt`` came with the console), so a
file written by an older sandbox loads, with an empty commit log and each data source's last change
taken from its entries.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from fliplet_workers.sandbox.commit_log import CommitLog

log = logging.getLogger("fliplet_workers.sandbox")

#: Format version of the persisted JSON file (additions keep it: older files still load).
FILE_VERSION = 1


class StorePersistence:
    """The persistence half of :class:`~fliplet_workers.sandbox.store.Store` (a mixin over its state)."""

    data_file: Path | None
    _lock: threading.Lock
    _save_lock: threading.Lock
    _dirty: bool
    _autosave_stop: threading.Event
    _autosave_thread: threading.Thread | None
    _next: dict[str, int]
    _orgs: dict[int, dict[str, Any]]
    _users: dict[int, dict[str, Any]]
    _tokens: dict[str, int]
    _sources: dict[int, dict[str, Any]]
    _access: dict[int, set[str]]
    _entries: dict[int, dict[int, dict[str, Any]]]
    _commit_counts: dict[int, int]
    _applied_counts: dict[int, int]
    _changed_at: dict[int, str]
    _log: CommitLog
    _folders: dict[int, dict[str, Any]]
    _files: dict[int, dict[str, Any]]
    _blobs: dict[int, bytes]
    _blobs_on_disk: set[int]

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _media_dir(self) -> Path:
        assert self.data_file is not None
        return self.data_file.with_name(self.data_file.name + ".media")

    def _load(self, path: Path) -> None:
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read the sandbox data file {path}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
            raise ValueError(f"{path} is not a sandbox data file (version {FILE_VERSION})")
        self._next = {k: int(v) for k, v in doc["next"].items()}
        self._orgs = {o["id"]: o for o in doc["organizations"]}
        self._users = {u["id"]: u for u in doc["users"]}
        self._tokens = dict(doc["tokens"])
        self._sources = {}
        self._access = {}
        self._entries = {}
        for s in doc["dataSources"]:
            tokens = s.pop("accessTokens")
            self._sources[s["id"]] = s
            self._access[s["id"]] = set(tokens)
            self._entries[s["id"]] = {e["id"]: e for e in doc["entries"].get(str(s["id"]), [])}
        self._load_history(doc)
        self._folders = {f["id"]: f for f in doc.get("folders", [])}
        self._files = {f["id"]: f for f in doc.get("files", [])}
        media = self._media_dir()
        for file_id in self._files:
            blob = media / str(file_id)
            if blob.exists():
                self._blobs[file_id] = blob.read_bytes()
                self._blobs_on_disk.add(file_id)
        self._dirty = False
        log.debug("Loaded sandbox data from %s", path)

    def _load_history(self, doc: dict[str, Any]) -> None:
        """Commit counters, the commit log and each data source's last change (the last two are
        absent from files written before the console: then the newest entry's ``updatedAt``)."""
        self._commit_counts = {int(k): v for k, v in doc.get("commitCounts", {}).items()}
        self._applied_counts = {int(k): v for k, v in doc.get("appliedCommitCounts", {}).items()}
        self._log.load(doc.get("commitLog"))
        changed = {int(k): str(v) for k, v in doc.get("changedAt", {}).items()}
        for ds_id, source in self._sources.items():
            if ds_id not in changed:
                stamps = [str(e.get("updatedAt", "")) for e in self._entries[ds_id].values()]
                changed[ds_id] = max([str(source.get("updatedAt", "")), *stamps])
        self._changed_at = changed

    def save(self) -> None:
        """Write the data file atomically if one is configured (no-op otherwise)."""
        if self.data_file is None:
            return
        with self._save_lock:
            with self._lock:
                doc = {
                    "version": FILE_VERSION,
                    "next": dict(self._next),
                    "organizations": list(self._orgs.values()),
                    "users": list(self._users.values()),
                    "tokens": dict(self._tokens),
                    "dataSources": [{**s, "accessTokens": sorted(self._access[i])}
                                    for i, s in self._sources.items()],
                    "entries": {str(i): list(t.values()) for i, t in self._entries.items()},
                    "commitCounts": {str(k): v for k, v in self._commit_counts.items()},
                    "appliedCommitCounts": {str(k): v for k, v in self._applied_counts.items()},
                    "changedAt": {str(k): v for k, v in self._changed_at.items()},
                    "commitLog": self._log.to_doc(),
                    "folders": list(self._folders.values()),
                    "files": list(self._files.values()),
                }
                new_blobs = {i: b for i, b in self._blobs.items() if i not in self._blobs_on_disk}
                live_blobs = set(self._blobs)
                self._dirty = False
            try:
                self._write(doc, new_blobs, live_blobs)
            except BaseException:
                self._dirty = True
                raise

    def _write(self, doc: dict[str, Any], new_blobs: dict[int, bytes], live_blobs: set[int]) -> None:
        assert self.data_file is not None
        media = self._media_dir()
        if new_blobs or media.exists():
            media.mkdir(parents=True, exist_ok=True)
            for file_id, blob in new_blobs.items():
                _atomic_write(media / str(file_id), blob)
            for stale in media.iterdir():
                if stale.name.isdigit() and int(stale.name) not in live_blobs:
                    stale.unlink()
        _atomic_write(self.data_file, orjson.dumps(doc))
        with self._lock:
            self._blobs_on_disk = (self._blobs_on_disk | set(new_blobs)) & live_blobs
        log.debug("Saved sandbox data to %s", self.data_file)

    def start_autosave(self, interval: float = 2.0) -> None:
        """Save from a background thread at most every ``interval`` seconds, when dirty.

        Serialising holds the GIL, so a big store is saved less often: the pause after a save is at
        least ten times what the save took (a million entries: every ~15 s instead of every 2 s).
        """
        if self.data_file is None or self._autosave_thread is not None:
            return
        self._autosave_stop.clear()

        def loop() -> None:
            pause = interval
            while not self._autosave_stop.wait(pause):
                if not self._dirty:
                    continue
                started = time.monotonic()
                try:
                    self.save()
                except Exception:  # keep serving; the next round retries
                    log.exception("Cannot save the sandbox data file %s", self.data_file)
                pause = max(interval, 10 * (time.monotonic() - started))

        self._autosave_thread = threading.Thread(target=loop, name="sandbox-autosave", daemon=True)
        self._autosave_thread.start()

    def stop_autosave(self) -> None:
        thread, self._autosave_thread = self._autosave_thread, None
        if thread is not None:
            self._autosave_stop.set()
            thread.join()


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
