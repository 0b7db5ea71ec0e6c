"""Field encryption for a push: which key, how a batch is encrypted, how the diff still sees plaintext.

* **Key**: ``encrypt.key`` from the config is used as is and never sent anywhere; without it the
  organization keystore provides one (:mod:`fliplet_workers.fliplet.keystore`). Either way it is
  registered as a secret, so no log line can show it.
* **Batches**: :func:`encrypt_batch` encrypts the listed fields of every entry in the CryptoJS format
  Fliplet apps decrypt (:mod:`fliplet_workers.core.crypto`). Numbers, dates and booleans are encrypted
  as their text form (the original crashes on numbers); ``None`` and ``""`` stay as they are. It builds
  new data dicts: the plan's rows are shared with the diff and the retry logic and must stay plaintext.
* **Change detection**: every encryption draws a fresh random salt, so ciphertexts never repeat and
  cannot be compared. We chose to *decrypt the remote values with the known key* (:func:`decoder`, set
  as ``run.decode_remote``) rather than keep a digest of the plaintext from the last successful run:
  it needs no state between runs (nothing to lose, nothing to keep in sync across the fleet), stays
  right when someone edits an entry in Fliplet, and an entry encrypted with another key simply shows as
  changed and is re-encrypted with the current one. The cost is one AES decryption (~15 µs) per
  encrypted field of each row that exists on both sides.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fliplet_workers import secrets
from fliplet_workers.core import crypto
from fliplet_workers.core.batches import Batch
from fliplet_workers.errors import EncryptionError
from fliplet_workers.fliplet import keystore

if TYPE_CHECKING:
    from fliplet_workers.config.model import Operation
    from fliplet_workers.run import OperationRun

__all__ = [
    "PLACEHOLDER",
    "Plaintext",
    "check_fields",
    "decoder",
    "encrypt_batch",
    "key_for",
    "placeholder_batch",
    "resolve_key",
]

PRIMARY_KEY_REFUSED = "You cannot encrypt the Primary Key"
#: What a dry run shows instead of a value when no key exists yet (nothing is created in a dry run).
PLACEHOLDER = "(encrypted with a new keystore key)"

_STATE = "_fliplet_encryption_key"
_state_lock = threading.Lock()


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


def resolve_key(run: OperationRun) -> str | None:
    """The data key of the run's operation: the config's, or the keystore's.

    In a dry run nothing is created: ``None`` when the keystore or its key does not exist yet. A salt
    that does not decrypt the stored key raises :class:`EncryptionError`.
    """
    enc = run.op.encrypt
    if enc is None:
        return None
    if enc.key:
        key = enc.key.reveal()
        secrets.register(key)
        run.log.debug("[ENCRYPTION] A key has been defined by the operation.")
        return key
    run.log.debug("[ENCRYPTION] A key has not been defined. Fetching the key from Fliplet servers...")
    salt = enc.salt.reveal() if enc.salt else None
    secrets.register(salt)
    return keystore.resolve_key(run.client, salt, create=not run.dry_run, note=run.log.info)


def key_for(run: OperationRun, *, create: bool = False) -> str | None:
    """The run's key, resolved once and kept on the run.

    :func:`fliplet_workers.extensions.attach` resolves it (creating keystore and key on a first run).
    A run that was not attached (a fleet commit task) resolves it here, read-only unless ``create``:
    the plan step is the one place that may create a key, so two tasks never race to store two keys.
    """
    with _state_lock:
        cached = run.extras.get(_STATE)
        if cached is not None:
            return cached[0]
        if run.op.encrypt is None:
            key = None
        elif run.op.encrypt.key or create or run.dry_run:
            key = resolve_key(run)
        else:
            salt = run.op.encrypt.salt.reveal() if run.op.encrypt.salt else None
            secrets.register(salt)
            key = keystore.resolve_key(run.client, salt, create=False)
            if key is None:
                raise EncryptionError("The organization keystore holds no encryption key yet: plan the run "
                                      "(which creates it) before committing its batches.")
        run.extras[_STATE] = (key,)
        return key


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
    entries: list[dict[str, Any]] = []
    for entry in batch.entries:
        data = entry.get("data") or {}
        if not any(name in data for name in names):
            entries.append(entry)
            continue
        new_data = dict(data)
        for name in names:
            if name in new_data:
                new_data[name] = change(new_data[name])
        entries.append({**entry, "data": new_data})
    return Batch(number=batch.number, entries=entries, delete=batch.delete, insert_keys=batch.insert_keys)


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
