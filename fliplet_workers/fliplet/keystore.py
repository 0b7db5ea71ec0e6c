"""The organization keystore: where Fliplet keeps the data key of encrypted fields, itself encrypted.

The flow is the original agent's, so apps that read the key with
``Fliplet.DataSources.Encryption.KeyStore.getKey(salt)`` keep working (see ``shared/fliplet-api.md``,
"Encryption"):

1. the first organization of the user (``GET v1/organizations``);
2. its keystore: a data source of type ``keystore`` (``GET v1/data-sources?type=keystore``), created
   when missing (``POST v1/data-sources``);
3. the keystore's first entry holds ``content``: the data key encrypted in the CryptoJS format with the
   *salt* as passphrase. The salt is the configured one, or ``"<organization id>-<keystore id>"``;
4. no entry: a new key from a cryptographically secure generator (the original's is not), encrypted
   with the salt and stored with ``PUT v1/data-sources/:id/data``.

Unlike the original, which takes the first keystore it is shown, we take the keystore of the first
organization (a user in several organizations could otherwise mix keys up), and a salt that does not
decrypt the stored key is a clear error instead of a silent new key.

The key and the salt are registered as secrets: they never reach a log line or an error message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fliplet_workers import redaction
from fliplet_workers.core import crypto
from fliplet_workers.errors import ApiError, EncryptionError
from fliplet_workers.fliplet.api import FlipletApi

__all__ = ["KeystoreRef", "WRONG_SALT", "find_keystore", "resolve_key"]

Note = Callable[[str], None]

WRONG_SALT = (
    "The encryption key stored in the keystore could not be decrypted with the given salt. Set 'salt' "
    "under 'encrypt' to the salt the key was stored with (without 'salt' the default is "
    "'<organization id>-<keystore id>'), or remove the keystore entry to start over with a new key "
    "(data encrypted with the old key then becomes unreadable)."
)
#: Longest text we accept as a decrypted data key (real ones are 32 characters).
_MAX_KEY_LENGTH = 1024


@dataclass(frozen=True)
class KeystoreRef:
    """The keystore data source of an organization."""

    id: int
    organization_id: int

    def default_salt(self) -> str:
        return f"{self.organization_id}-{self.id}"


def find_keystore(api: FlipletApi, *, create: bool, note: Note | None = None) -> KeystoreRef | None:
    """The first organization's keystore; created when missing if ``create``, else ``None``."""
    say = note or (lambda _message: None)
    organizations = api.organizations()
    if not organizations:
        raise ApiError("The Fliplet user has no organization, so there is no keystore for the encryption key")
    org_id = int(organizations[0]["id"])
    sources = [s for s in api.data_sources(type="keystore") if s.get("type", "keystore") == "keystore"]
    mine = [s for s in sources if _as_int(s.get("organizationId")) in (org_id, None)]
    if mine:
        source = mine[0]
        say("[ENCRYPTION] Keystore found.")
        return KeystoreRef(id=int(source["id"]), organization_id=_as_int(source.get("organizationId")) or org_id)
    if not create:
        return None
    say("[ENCRYPTION] Generating new keystore...")
    source = api.create_data_source("Keystore", type="keystore", organization_id=org_id)
    return KeystoreRef(id=int(source["id"]), organization_id=org_id)


def resolve_key(api: FlipletApi, salt: str | None, *, create: bool, note: Note | None = None) -> str | None:
    """The data key from the keystore, creating keystore and key when missing if ``create``.

    Returns ``None`` only when ``create`` is false and there is no key yet (a dry run). Raises
    :class:`EncryptionError` when the stored key does not decrypt with the salt.
    """
    say = note or (lambda _message: None)
    keystore = find_keystore(api, create=create, note=say)
    if keystore is None:
        return None
    passphrase = salt or keystore.default_salt()
    redaction.register(passphrase)
    content = _stored_content(api, keystore.id)
    if content is not None:
        say("[ENCRYPTION] Key found. Decrypting key...")
        key = _decrypt_key(content, passphrase)
        redaction.register(key)
        return key
    if not create:
        return None
    say("[ENCRYPTION] Generating new key...")
    key = crypto.generate_key()
    redaction.register(key)
    say("[ENCRYPTION] Uploading key to Fliplet APIs...")
    api.add_entry(keystore.id, {"createdAt": int(time.time()), "source": "Fliplet Agent",
                                   "content": crypto.encrypt(key, passphrase)})
    return key


def _stored_content(api: FlipletApi, keystore_id: int) -> str | None:
    """``data.content`` of the keystore's first entry that has one."""
    for entry in api.iter_entries(keystore_id):  # a keystore holds one entry, two at most
        content = (entry.get("data") or {}).get("content")
        if isinstance(content, str) and content:
            return content
    return None


def _decrypt_key(content: str, passphrase: str) -> str:
    """Decrypt the stored key; anything that is not a plausible key means a wrong salt.

    The CryptoJS format has no MAC: about one wrong passphrase in 256 passes the padding check, so the
    result must also be non-empty printable text of a sane length.
    """
    try:
        key = crypto.decrypt(content, passphrase)
    except EncryptionError:
        raise EncryptionError(WRONG_SALT) from None
    if not key or len(key) > _MAX_KEY_LENGTH or not key.isprintable():
        raise EncryptionError(WRONG_SALT)
    return key


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
