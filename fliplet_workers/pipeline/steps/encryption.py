"""The encryption step of a push: which key, how a batch is encrypted, how the diff still sees plaintext.

* **Key**: ``encrypt.key`` from the config is used as is and never sent anywhere; without it the
  organization keystore provides one (:mod:`fliplet_workers.fliplet.keystore`). Either way it is
  registered as a secret, so no log line can show it. It is resolved once per run (:func:`resolve_key`)
  and held by the run's :class:`EncryptStep`; the fleet's commit tasks keep it per worker process and
  config (:mod:`fliplet_workers.fleet.clients`), never in Redis or in a task's arguments.
* **Batches**: :func:`encrypt_batch` encrypts the listed fields of every entry in the CryptoJS format
  Fliplet apps decrypt (:mod:`fliplet_workers.core.crypto`). Numbers, dates and booleans are encrypted
  as their text form (the original crashes on numbers); ``None`` and ``""`` stay as they are. It builds
  new data dicts: the plan's rows are shared with the diff and the retry logic and must stay plaintext.
* **Change detection**: every encryption draws a fresh random salt, so ciphertexts never repeat and
  cannot be compared. We chose to *decrypt the remote values with the known key* (:func:`decoder`, the
  diff's ``decode_remote``) rather than keep a digest of the plaintext from the last successful run:
  it needs no state between runs (nothing to lose, nothing to keep in sync across the fleet), stays
  right when someone edits an entry in Fliplet, and an entry encrypted with another key simply shows as
  changed and is re-encrypted with the current one. The cost is one AES decryption (~15 µs) per
  encrypted field of each row that exists on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fliplet_workers import redaction
from fliplet_workers.config.model import Operation
from fliplet_workers.core import crypto
from fliplet_workers.core.batches import Batch
from fliplet_workers.errors import EncryptionError
from fliplet_workers.fliplet import keystore
from fliplet_workers.fliplet.api import FlipletApi
from fliplet_workers.pipeline.spec import RunSpec

__all__ = [
    "PLACEHOLDER",
    "EncryptStep",
    "KeyCache",
    "Plaintext",
    "check_fields",
    "decoder",
    "encrypt_batch",
    "placeholder_batch",
    "resolve_key",
]

PRIMARY_KEY_REFUSED = "You cannot encrypt the Primary Key"
#: What a dry run shows instead of a value when no key exists yet (nothing is created in a dry run).
PLACEHOLDER = "(encrypted with a new keystore key)"
NO_KEY_YET = ("The organization keystore holds no encryption key yet: plan the run (which creates it) before "
              "committing its batches.")

Note = Callable[[str], None]


def check_fields(op: Operation) -> None:
    """Refuse, before anything is sent, a config that would encrypt the primary key (it must stay
    comparable for the diff and readable for the apps' lookups)."""
    enc = op.encrypt
    if enc is None:
        return
    if not enc.fields:
        raise EncryptionError("You need to define a list of fields to encrypt ('encrypt.fields').")
    if op.primary_column is not None and op.primary_column in enc.fields:
        raise EncryptionError(PRIMARY_KEY_REFUSED)


def resolve_key(op: Operation, api: FlipletApi, *, create: bool, debug: Note | None = None,
                note: Note | None = None) -> str | None:
    """The data key of ``op``: the config's, or the keystore's (created when ``create``: only the
    step that plans a run may create it, so two tasks never race to store two keys).

    ``None`` when the keystore or its key does not exist and ``create`` is off. A salt that does not
    decrypt the stored key raises :class:`EncryptionError`.
    """
    enc = op.encrypt
    if enc is None:
        return None
    say = debug or (lambda message: None)
    if enc.key:
        key = enc.key.reveal()
        redaction.register(key)
        say("[ENCRYPTION] A key has been defined by the operation.")
        return key
    say("[ENCRYPTION] A key has not been defined. Fetching the key from Fliplet servers...")
    salt = enc.salt.reveal() if enc.salt else None
    redaction.register(salt)
    return keystore.resolve_key(api, salt, create=create, note=note)


def read_key(op: Operation, api: FlipletApi) -> str:
    """The key for a step that may not create it (a fleet commit task): the config's, or the keystore's.
    Raises :class:`EncryptionError` when the keystore holds none yet."""
    key = resolve_key(op, api, create=False)
    if key is None:
        raise EncryptionError(NO_KEY_YET)
    return key


class KeyCache:
    """Keys read by :func:`read_key`, one per config and operation, for one run at a time (the fleet
    keeps a cache per worker process: three keystore requests per run and worker, not per task).

    Why per run: a run's key is fixed once its planner has resolved it, but between runs someone may
    replace the keystore; a new run id reads the key again. The entry is also named by a digest of what
    the key depends on (token, URL, salt, configured key), so a changed config reads it again. The key
    itself is only ever in this process's memory."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], tuple[str, str, str]] = {}  # → (run, digest, key)

    def key(self, spec: RunSpec, api: FlipletApi, run: str = "") -> str:
        enc = spec.op.encrypt
        if enc is None:
            raise EncryptionError("The operation encrypts no field.")
        parts = (spec.config.auth_token, spec.config.api_url, enc.salt or "", enc.key or "")
        digest = hashlib.sha256("\x00".join(str.__str__(str(p)) for p in parts).encode()).hexdigest()
        name = (spec.config.path, spec.index)
        known = self._keys.get(name)
        if known is not None and known[:2] == (run, digest):
            return known[2]
        key = read_key(spec.op, api)
        self._keys[name] = (run, digest, key)
        return key

    def clear(self) -> None:
        self._keys.clear()


@dataclass(frozen=True)
class EncryptStep:
    """Encrypts ``fields`` of each batch with the run's ``key``; without a key (a dry run before the
    first real run) it shows :data:`PLACEHOLDER` instead. Built once per run, holding its key."""

    fields: tuple[str, ...]
    key: str | None

    def apply(self, batch: Batch) -> Batch:
        if not self.fields:
            return batch
        if self.key is None:
            return placeholder_batch(batch, self.fields)
        return encrypt_batch(batch, self.fields, self.key)

    def only(self, keep: Callable[[str], bool]) -> EncryptStep:
        """The same step for the fields ``keep`` accepts (the fleet encrypts file columns later)."""
        return EncryptStep(tuple(f for f in self.fields if keep(f)), self.key)

    def decode_remote(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """The diff's ``decode_remote``: decrypt remote values with the key (None without one)."""
        return decoder(self.fields, self.key) if self.key is not None else None


def encrypt_batch(batch: Batch, fields: Iterable[str], key: str) -> Batch:
    """A copy of ``batch`` whose entries have ``fields`` encrypted with ``key``.

    Only entries that carry one of the fields get a new data dict; the others are shared as they are.
    """
    names = tuple(fields)
    return _map_fields(batch, names, lambda value: crypto.encrypt_value(value, key))


def placeholder_batch(batch: Batch, fields: Iterable[str]) -> Batch:
    """For a dry run without a key: non-empty values of ``fields`` replaced by :data:`PLACEHOLDER`, so
    the dump shows what would be encrypted without printing the plaintext."""
    names = tuple(fields)
    return _map_fields(batch, names, lambda value: value if value is None or value == "" else PLACEHOLDER)


def _map_fields(batch: Batch, names: tuple[str, ...], change: Callable[[Any], Any]) -> Batch:
    entries = []
    for entry in batch.entries:
        data = entry.data
        if not any(name in data for name in names):
            entries.append(entry)
            continue
        new_data = dict(data)
        for name in names:
            if name in new_data:
                new_data[name] = change(new_data[name])
        entries.append(entry.with_data(new_data))
    return batch.with_entries(entries)


class Plaintext(str):
    """A decrypted remote value that equals every local value with the same text form.

    The diff compares local values (typed: ``30``, ``1.5``, ``"2024-01-02T00:00:00.000Z"``) with remote
    ones; an encrypted field comes back as text, so ``Plaintext("30") == 30`` must hold, as the value
    an app shows once decrypted is the same. Comparison uses :func:`crypto.value_text`, the very text
    that was encrypted.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return str.__eq__(self, other)
        text = crypto.value_text(other)
        return text is not None and str.__eq__(self, text)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


_BOOLEANS = {"true": True, "false": False}


def decoder(fields: Iterable[str], key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A ``decode_remote`` for the diff: decrypt the values of ``fields`` that look encrypted.

    Values that do not look encrypted, or do not decrypt with ``key`` (another key), are left as they
    are: they then differ from the local value and the row is re-sent, encrypted with the current key.
    Decrypted ``"true"``/``"false"`` become booleans (the diff tells ``True`` from ``"true"``), so a
    boolean field compares equal; the price is that the *text* "true" in an encrypted field always
    shows as changed.
    """
    names = tuple(fields)

    def decode(data: dict[str, Any]) -> dict[str, Any]:
        out = data
        for name in names:
            value = data.get(name)
            if not isinstance(value, str) or not crypto.looks_encrypted(value):
                continue
            try:
                text = crypto.decrypt(value, key)
            except EncryptionError:
                continue
            if out is data:
                out = dict(data)  # never change the caller's dict
            boolean = _BOOLEANS.get(text)
            out[name] = boolean if boolean is not None else Plaintext(text)
        return out

    return decode
