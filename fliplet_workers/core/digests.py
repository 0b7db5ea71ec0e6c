"""Digests: a 64-bit code per value, equal exactly when the diff holds two values equal.

Why: the remote index (:mod:`.remote_index`) lives for a whole run and must not hold a million
entries' data, only what the comparison needs. Each column value becomes one signed 64-bit code,
packed into the entry's bytes; a row's value is coded the same way and the codes are compared.

Why these codes (issue 9: indexing a million entries was ~4 µs per entry, most of it hashing):

* text (most values) is coded by Python's own string hash, computed in C and cached on the string:
  SipHash-1-3 under a key drawn at random when the process starts (unless ``PYTHONHASHSEED`` fixes
  it), so the codes mean nothing outside this process. Two different texts share a code with a
  chance of 2**-64 per compared value, as the former BLAKE2b digests did;
* whole numbers within ±2**55, ``null``, ``true`` and ``false`` are coded exactly, each in a band of
  its own (a tag in the top byte), so that no two of them ever share a code;
* everything else (larger numbers, fractions, objects, lists) is coded by 64 bits of BLAKE2b of its
  canonical bytes (:func:`canonical`), salted with a random secret of the :class:`Coder`.

The equality coded is the diff's (``same_data``): ``1`` and ``1.0`` are equal (JavaScript has one
number type), ``true`` is not ``1``, objects are equal whatever their key order, NaN equals nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from hashlib import blake2b
from typing import Any

#: Exact codes: the tag in the top byte, the value in the 56 bits below it.
INT_TAG = 0x11 << 56
LOW56 = (1 << 56) - 1
SMALL = 1 << 55  # whole numbers in [-SMALL, SMALL) are coded exactly
NULL_CODE = 0x12 << 56
FALSE_CODE = 0x13 << 56
TRUE_CODE = FALSE_CODE | 1

#: The value types a code stands for exactly (their equality is the diff's). A remote value of any
#: other type (a decoder's ``Plaintext``, with its own equality) is kept whole instead.
CODED = frozenset({str, int, float, bool, type(None), dict, list})


class Coder:
    """Codes values; holds the secret that salts the BLAKE2b codes of this run's index."""

    def __init__(self) -> None:
        self.secret = os.urandom(16)

    def code(self, value: Any) -> int | None:
        """The code of one value of a :data:`CODED` type; None for any other type (kept whole)."""
        kind = type(value)
        if kind is str:
            return hash(value)
        if kind is int:
            return INT_TAG | (value & LOW56) if -SMALL <= value < SMALL else self._long(canonical(value))
        if value is None:
            return NULL_CODE
        if kind is bool:
            return TRUE_CODE if value else FALSE_CODE
        if kind is float:
            if value.is_integer():
                return self.code(int(value))
            return self._long(canonical(value))
        if kind is dict or kind is list:
            return self._long(canonical(value))
        return None

    def row_code(self, value: Any) -> int:
        """The code of a source row's value, of any type: subclasses of text and numbers (which
        normalised rows may carry) are coded as their plain value, anything else by its text."""
        code = self.code(value)
        if code is not None:
            return code
        if isinstance(value, bool):
            return TRUE_CODE if value else FALSE_CODE
        if isinstance(value, str):
            return hash(str(value))
        if isinstance(value, int):
            return self.code(int(value)) or 0
        if isinstance(value, float):
            return self.code(float(value)) or 0
        return self._long(canonical(value))

    def _long(self, data: bytes) -> int:
        return int.from_bytes(blake2b(self.secret + data, digest_size=8).digest(), "little", signed=True)


def canonical(value: Any) -> bytes:
    """Bytes that are equal exactly when the diff holds two values equal: whole numbers alike
    whatever their type (``1`` and ``1.0``), fractional numbers by ``repr`` (exact), objects and lists
    as canonical JSON (keys sorted, whole floats as ints). NaN equals nothing, so it gets random
    bytes that match no other value."""
    kind = type(value)
    if kind is int:
        return b"i" + value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    if kind is float:
        if value.is_integer():
            return canonical(int(value))
        if value != value:
            return b"x" + os.urandom(16)
        return b"d" + repr(value).encode()
    if isinstance(value, str):
        return b"s" + str(value).encode("utf-8", "surrogatepass")
    return b"j" + json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                             default=str).encode("utf-8", "surrogatepass")


def _plain(value: Any) -> Any:
    """A nested value with whole floats as ints (``{"a": 1.0}`` equals ``{"a": 1}``)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
