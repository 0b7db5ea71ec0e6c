"""Field encryption in the format Fliplet apps read: CryptoJS / OpenSSL "Salted__" AES.

Fliplet apps decrypt with ``CryptoJS.AES.decrypt(ciphertext, passphrase)``, so every value we
encrypt must be exactly what ``CryptoJS.AES.encrypt(text, passphrase).toString()`` makes::

    base64( b"Salted__" + salt[8] + AES-256-CBC(key, iv, PKCS#7(utf8(text))) )

where ``key`` (32 bytes) and ``iv`` (16 bytes) come from OpenSSL's ``EVP_BytesToKey`` with MD5 and
one iteration over ``utf8(passphrase) + salt``. The passphrase is the data key (from the config, or
from the organization keystore). The salt is fresh and random for every value, so equal plaintexts
give different ciphertexts.

This format has no integrity check (no MAC): a wrong passphrase is detected only because the
padding, or the UTF-8 decoding, almost always fails. :func:`decrypt` reports both as
:class:`~fliplet_workers.errors.EncryptionError`; a tiny fraction of wrong keys can still yield
"valid" garbage, which callers that must be sure (the keystore) should check further.

Cost: one value costs three MD5 blocks and one AES context (~15 µs, dominated by setting up the
``cryptography`` cipher object). Nothing derived from the passphrase is cached between calls: the
salt is random per value, so there is nothing safe and useful to reuse (reusing a salt would reuse
key *and* IV, which leaks equal prefixes).

Errors never carry the passphrase, the plaintext or the ciphertext.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import secrets
import string
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fliplet_workers.core.rows import normalise_value
from fliplet_workers.errors import EncryptionError

__all__ = [
    "ENCRYPTED_PREFIX",
    "KEY_LENGTH",
    "decrypt",
    "encrypt",
    "encrypt_value",
    "generate_key",
    "looks_encrypted",
    "value_text",
]

#: Every CryptoJS passphrase ciphertext starts with this: base64 of ``b"Salted__"`` (its first 7.5 bytes).
ENCRYPTED_PREFIX = "U2FsdGVkX1"
#: Length of a key made by :func:`generate_key`, as the original agent makes them.
KEY_LENGTH = 32

_MAGIC = b"Salted__"
_SALT_LEN = 8
_BLOCK = 16
_KEY_ALPHABET = string.ascii_letters + string.digits


# --------------------------------------------------------------------------------------------
# The CryptoJS format
# --------------------------------------------------------------------------------------------


def _evp_bytes_to_key(password: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """OpenSSL ``EVP_BytesToKey(MD5, count=1)`` for AES-256-CBC: 48 bytes → (key[32], iv[16]).

    ``D_1 = MD5(P + S)``, ``D_i = MD5(D_{i-1} + P + S)``; key = D_1 + D_2, iv = D_3. MD5 here is
    part of a fixed wire format, not a security choice of ours (hence ``usedforsecurity=False``,
    which also keeps it working on FIPS-restricted OpenSSL builds).
    """
    data = password + salt
    md5 = hashlib.md5
    d1 = md5(data, usedforsecurity=False).digest()
    d2 = md5(d1 + data, usedforsecurity=False).digest()
    d3 = md5(d2 + data, usedforsecurity=False).digest()
    return d1 + d2, d3


def _passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str):
        raise EncryptionError(f"The encryption key must be text, not {type(passphrase).__name__}.")
    try:
        return passphrase.encode("utf-8")
    except UnicodeEncodeError:
        # CryptoJS (Utf8.parse) throws on lone surrogates too. Say where, never what.
        raise EncryptionError("The encryption key is not valid Unicode text (it has a lone surrogate).") from None


def encrypt(plaintext: str, passphrase: str, *, salt: bytes | None = None) -> str:
    """Encrypt ``plaintext`` exactly as ``CryptoJS.AES.encrypt(plaintext, passphrase).toString()``.

    ``salt`` (8 bytes) exists only for deterministic tests; leave it out in real use, a fresh random
    salt is drawn from :mod:`secrets` for every call. Raises :class:`EncryptionError` when the text or
    key cannot be encoded as UTF-8 (lone surrogates), and :class:`TypeError` for a non-text
    ``plaintext`` (use :func:`encrypt_value` for row values of other types).
    """
    if not isinstance(plaintext, str):
        raise TypeError(f"encrypt() takes text, not {type(plaintext).__name__}; use encrypt_value()")
    if salt is None:
        salt = secrets.token_bytes(_SALT_LEN)
    elif len(salt) != _SALT_LEN:
        raise ValueError(f"the salt must be {_SALT_LEN} bytes, not {len(salt)}")
    password = _passphrase_bytes(passphrase)
    try:
        data = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise EncryptionError("Cannot encrypt a value: it is not valid Unicode text (it has a lone surrogate).") from None
    key, iv = _evp_bytes_to_key(password, salt)
    pad = _BLOCK - len(data) % _BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(data + bytes((pad,)) * pad) + encryptor.finalize()
    return binascii.b2a_base64(_MAGIC + salt + body, newline=False).decode("ascii")


def decrypt(ciphertext: str, passphrase: str) -> str:
    """Decrypt a CryptoJS passphrase ciphertext (the inverse of :func:`encrypt`).

    Raises :class:`EncryptionError` when the value is not base64, is not in the "Salted__" format,
    has a bad length or bad padding (almost always: a wrong key), or does not decrypt to UTF-8 text.
    """
    if not isinstance(ciphertext, str):
        raise EncryptionError(f"Cannot decrypt a value: expected encrypted text, got {type(ciphertext).__name__}.")
    password = _passphrase_bytes(passphrase)
    try:
        raw = binascii.a2b_base64(ciphertext.strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        raise EncryptionError("Cannot decrypt a value: it is not valid base64 text.") from None
    if not raw.startswith(_MAGIC):
        raise EncryptionError(
            "Cannot decrypt a value: it is not in the CryptoJS/OpenSSL format (no \"Salted__\" header)."
        )
    body = raw[len(_MAGIC) + _SALT_LEN :]
    if len(raw) < len(_MAGIC) + _SALT_LEN + _BLOCK or len(body) % _BLOCK:
        raise EncryptionError(
            f"Cannot decrypt a value: the encrypted data has a bad length ({len(body)} bytes after the "
            f"header, expected a non-zero multiple of {_BLOCK}); it was truncated or altered."
        )
    key, iv = _evp_bytes_to_key(password, raw[len(_MAGIC) : len(_MAGIC) + _SALT_LEN])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes((pad,)) * pad:
        raise EncryptionError("Cannot decrypt a value: wrong encryption key (or the data was altered).")
    try:
        return padded[:-pad].decode("utf-8")
    except UnicodeDecodeError:
        raise EncryptionError(
            "Cannot decrypt a value: the result is not UTF-8 text (wrong encryption key, or the data was altered)."
        ) from None


def looks_encrypted(value: object) -> bool:
    """Cheap check: is ``value`` a string in the CryptoJS passphrase format (``U2FsdGVkX1…``)?

    It does not decrypt; a plain text that happens to start with those characters also passes.
    """
    return isinstance(value, str) and value.startswith(ENCRYPTED_PREFIX)


def generate_key(length: int = KEY_LENGTH) -> str:
    """A new data key: ``length`` (32) letters and digits from a cryptographically secure generator.

    The original agent draws from a non-cryptographic generator; the alphabet and length are kept,
    the source of randomness is :mod:`secrets` (~190 bits for 32 characters).
    """
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(length))


# --------------------------------------------------------------------------------------------
# Row values → the text that gets encrypted
# --------------------------------------------------------------------------------------------


def encrypt_value(value: Any, passphrase: str) -> Any:
    """Encrypt one row field as the sync sends it.

    ``None`` and ``""`` are returned unchanged (the original encrypts only non-empty values), so is
    a non-finite float or ``Decimal`` (JSON carries it as ``null``). Anything else is turned into
    its text by :func:`value_text` and encrypted. (The original crashes on numbers; we encrypt their
    JavaScript text form, e.g. ``1.0`` → ``"1"``, which is what an app shows once decrypted.)
    """
    if value is None or (isinstance(value, str) and value == ""):
        return value
    text = value_text(value)
    if text is None:
        return None
    return encrypt(text, passphrase)


def value_text(value: Any) -> str | None:
    """The text a value has in the original's JSON, i.e. what JavaScript's ``String(v)`` would give.

    The value is first shaped as the original's JSON carries it (``rows.normalise_value``: dates to
    ISO text, Decimals to numbers…), so a raw value and its normalised form give the same text:
    ``bool`` → ``"true"``/``"false"``, numbers → JavaScript number text (``1.0`` → ``"1"``,
    ``1e21`` → ``"1e+21"``), ``dict``/``list`` → compact JSON as ``JSON.stringify`` writes it,
    NaN/infinities/``None`` → ``None``.
    """
    value = normalise_value(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    return _js_json(value)


def _js_number(value: float) -> str:
    """``Number.prototype.toString()`` of a finite float (ECMAScript Number::toString, radix 10).

    Python's ``repr`` and JavaScript both print the shortest digit string that round-trips; only
    the layout differs (``1.0`` vs ``1``, ``1e-07`` vs ``1e-7``, ``1e+16`` vs ``10000000000000000``).
    """
    if value == 0:
        return "0"  # also -0.0: String(-0) is "0"
    sign = "-" if value < 0 else ""
    # digits d1..dk and n such that value = 0.d1..dk × 10^n
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = int(exponent) + k
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def _js_json(value: Any) -> str:
    """Compact JSON as ``JSON.stringify`` writes the normalised value (no spaces, raw non-ASCII)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        items = (f"{json.dumps(_key_text(k), ensure_ascii=False)}:{_js_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_js_json(v) for v in value) + "]"
    if isinstance(value, (int, float, Decimal)):
        text = value_text(value)
        return "null" if text is None else text
    return json.dumps(value_text(value), ensure_ascii=False)


def _key_text(key: Any) -> str:
    """An object key as text, as ``rows.normalise_value`` makes it (``str(k)``)."""
    return key if isinstance(key, str) else str(key)
