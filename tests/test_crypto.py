"""CryptoJS-compatible encryption: known answers from the real CryptoJS, both directions, and the rules
for row values.

The live tests run ``tests/cryptojs/cryptojs.js`` with Node.js and the npm package ``crypto-js`` from
``.ci/node/node_modules``. They are never skipped: when Node or crypto-js is missing they fail and
say how to install it (``npm install --prefix .ci/node crypto-js@4``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import shutil
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fliplet_workers.core import crypto
from fliplet_workers.core.crypto import (
    ENCRYPTED_PREFIX,
    decrypt,
    encrypt,
    encrypt_value,
    generate_key,
    looks_encrypted,
    value_text,
)
from fliplet_workers.errors import EncryptionError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "cryptojs" / "cryptojs.js"
CRYPTOJS_DIR = ROOT / ".ci" / "node" / "node_modules" / "crypto-js"
VECTORS = json.loads((ROOT / "tests" / "data" / "cryptojs_vectors.json").read_text(encoding="utf-8"))
INSTALL_HINT = "run `npm install --prefix .ci/node crypto-js@4` from the repository root"

PASSPHRASE = "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY"


# --------------------------------------------------------------------------------------------
# The real CryptoJS, through node
# --------------------------------------------------------------------------------------------


class CryptoJS:
    """Runs the node helper; one subprocess per call, many items per call."""

    def __init__(self, node: str) -> None:
        self.node = node

    def __call__(self, op: str, items: list[Any]) -> list[Any]:
        proc = subprocess.run(
            [self.node, str(SCRIPT)],
            input=json.dumps({"op": op, "items": items}),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            pytest.fail(f"cryptojs.js {op} failed (exit {proc.returncode}): {proc.stderr.strip()}\n{INSTALL_HINT}")
        answer = json.loads(proc.stdout)
        assert len(answer["results"]) == len(items)
        return list(answer["results"])


@pytest.fixture(scope="module")
def cryptojs() -> CryptoJS:
    node = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    if node is None:
        pytest.fail(f"Node.js is required for the CryptoJS known-answer tests: install node, then {INSTALL_HINT}")
    if not (CRYPTOJS_DIR / "package.json").exists():
        pytest.fail(f"crypto-js is not installed in {CRYPTOJS_DIR}: {INSTALL_HINT}")
    return CryptoJS(node)


_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\n\r",
    "àéîõüçñßøåæœÀÉÎÕÜÇÑ",
    "日本語中文한국어テキスト",
    "🎉🔐👩‍💻🇬🇧😀𝔘𝔫𝔦",
    "\u0000\u0001\u001f\u007f\u00a0\u2028\u2029\ufeff",
    "مرحباשלום",
]


def _random_text(rng: random.Random, max_len: int) -> str:
    length = rng.choice([0, 1, 15, 16, 17, rng.randint(0, max_len)])
    alphabet = rng.choice(_ALPHABETS + ["".join(_ALPHABETS)])
    return "".join(rng.choice(alphabet) for _ in range(length))


def _random_pairs(seed: int, count: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = [(_random_text(rng, 300), _random_text(rng, 80)) for _ in range(count)]
    pairs += [("x" * 20_000, PASSPHRASE), ("", ""), ("only text", ""), ("", "only key")]
    return pairs


# --------------------------------------------------------------------------------------------
# 1. Committed vectors made by CryptoJS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["text"][:20])
def test_cryptojs_vectors_decrypt(vector: dict[str, str]) -> None:
    assert looks_encrypted(vector["ciphertext"])
    assert decrypt(vector["ciphertext"], vector["passphrase"]) == vector["text"]


def test_vector_file_is_varied() -> None:
    vectors = VECTORS["vectors"]
    assert len(vectors) >= 20
    assert any(len(v["text"]) > 1000 for v in vectors)
    assert any(len(v["passphrase"]) > 100 for v in vectors)
    assert any(len(v["passphrase"]) <= 1 for v in vectors)
    assert any(any(ord(c) > 0xFFFF for c in v["text"]) for v in vectors)
    assert any(any(ord(c) > 0x7F for c in v["passphrase"]) for v in vectors)


# --------------------------------------------------------------------------------------------
# 2-3. Live, both directions
# --------------------------------------------------------------------------------------------


def test_our_encrypt_decrypts_with_cryptojs(cryptojs: CryptoJS) -> None:
    pairs = _random_pairs(seed=20240101, count=300)
    ours = [encrypt(text, pw) for text, pw in pairs]
    results = cryptojs("decrypt", [{"ciphertext": c, "passphrase": pw} for c, (_, pw) in zip(ours, pairs, strict=True)])
    for (text, _), result, ciphertext in zip(pairs, results, ours, strict=True):
        assert result == {"text": text}, ciphertext


def test_cryptojs_encrypt_decrypts_with_ours(cryptojs: CryptoJS) -> None:
    pairs = _random_pairs(seed=4242, count=300)
    results = cryptojs("encrypt", [{"text": text, "passphrase": pw} for text, pw in pairs])
    for (text, pw), result in zip(pairs, results, strict=True):
        assert looks_encrypted(result["ciphertext"])
        assert decrypt(result["ciphertext"], pw) == text


def test_encrypt_value_output_decrypts_with_cryptojs(cryptojs: CryptoJS) -> None:
    values: list[Any] = [1, 1.0, 1.5, True, False, -0.0, 1e21, {"a": [1, 2.5, "é"]}, dt.date(2024, 2, 29)]
    ours = [encrypt_value(v, PASSPHRASE) for v in values]
    results = cryptojs("decrypt", [{"ciphertext": c, "passphrase": PASSPHRASE} for c in ours])
    assert [r["text"] for r in results] == [value_text(v) for v in values]


# --------------------------------------------------------------------------------------------
# 4. Fixed salt: byte-for-byte equal to CryptoJS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["salted"], ids=lambda v: v["salt"])
def test_fixed_salt_matches_committed_cryptojs_output(vector: dict[str, str]) -> None:
    ours = encrypt(vector["text"], vector["passphrase"], salt=bytes.fromhex(vector["salt"]))
    assert ours == vector["ciphertext"]
    assert decrypt(ours, vector["passphrase"]) == vector["text"]


def test_fixed_salt_matches_cryptojs_live(cryptojs: CryptoJS) -> None:
    rng = random.Random(7)
    items = [
        {"text": text, "passphrase": pw, "salt": rng.randbytes(8).hex()}
        for text, pw in _random_pairs(seed=99, count=100)
    ]
    results = cryptojs("encrypt_salted", items)
    for item, result in zip(items, results, strict=True):
        assert encrypt(item["text"], item["passphrase"], salt=bytes.fromhex(item["salt"])) == result["ciphertext"]


def test_format_layout() -> None:
    salt = bytes(range(8))
    raw = base64.b64decode(encrypt("0123456789abcdef", "pw", salt=salt))
    assert raw[:8] == b"Salted__" and raw[8:16] == salt
    assert len(raw) == 16 + 32  # 16 bytes of text + a full block of PKCS#7 padding


def test_salt_is_random_per_call() -> None:
    outputs = {encrypt("same text", PASSPHRASE) for _ in range(50)}
    assert len(outputs) == 50
    assert all(decrypt(c, PASSPHRASE) == "same text" for c in outputs)


def test_salt_must_be_8_bytes() -> None:
    with pytest.raises(ValueError):
        encrypt("x", "pw", salt=b"short")


# --------------------------------------------------------------------------------------------
# 5. Errors never leak the key or the text
# --------------------------------------------------------------------------------------------

SECRET_KEY = "Sup3rS3cretPassphrase-DoNotLog"
SECRET_TEXT = "confidential text that must not appear"


def _assert_clean(err: EncryptionError) -> None:
    for secret in (SECRET_KEY, SECRET_TEXT):
        assert secret not in str(err)
        assert secret not in err.log_text()
        assert secret not in repr(err)


def test_wrong_passphrase_raises_without_leaking() -> None:
    # Fixed salts keep this deterministic: a wrong key passes the padding check ~1/256 of the time
    # and then almost always fails the UTF-8 check; none of these 200 does either.
    for i in range(200):
        ciphertext = encrypt(SECRET_TEXT, SECRET_KEY, salt=i.to_bytes(8, "big"))
        with pytest.raises(EncryptionError) as info:
            decrypt(ciphertext, SECRET_KEY + "x")
        _assert_clean(info.value)
        assert "key" in info.value.message


def test_cryptojs_vector_with_wrong_passphrase() -> None:
    vector = VECTORS["vectors"][0]
    with pytest.raises(EncryptionError, match="wrong encryption key"):
        decrypt(vector["ciphertext"], "not the key")


@pytest.mark.parametrize(
    ("ciphertext", "fragment"),
    [
        ("not base64 at all!", "base64"),
        ("U2FsdGVkX1", "base64"),  # truncated: bad padding of the base64 itself
        (base64.b64encode(b"Plain___" + bytes(24)).decode(), "Salted__"),
        (base64.b64encode(b"").decode(), "Salted__"),
        (base64.b64encode(b"Salted__12345678").decode(), "bad length"),
        (base64.b64encode(b"Salted__12345678" + bytes(17)).decode(), "bad length"),
    ],
)
def test_malformed_ciphertexts(ciphertext: str, fragment: str) -> None:
    with pytest.raises(EncryptionError) as info:
        decrypt(ciphertext, SECRET_KEY)
    assert fragment in info.value.message
    _assert_clean(info.value)


def test_non_utf8_plaintext_is_reported() -> None:
    # Build a ciphertext of invalid UTF-8 with valid padding, through the same primitives.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    salt = bytes(8)
    key, iv = crypto._evp_bytes_to_key(SECRET_KEY.encode(), salt)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = enc.update(b"\xff\xfe\xfd" + bytes([13]) * 13) + enc.finalize()
    ciphertext = base64.b64encode(b"Salted__" + salt + body).decode()
    with pytest.raises(EncryptionError, match="not UTF-8") as info:
        decrypt(ciphertext, SECRET_KEY)
    _assert_clean(info.value)


def test_lone_surrogates_are_refused_without_leaking() -> None:
    with pytest.raises(EncryptionError) as info:
        encrypt("text\ud800", SECRET_KEY)
    _assert_clean(info.value)
    with pytest.raises(EncryptionError) as info:
        encrypt(SECRET_TEXT, SECRET_KEY + "\udc00")
    _assert_clean(info.value)
    with pytest.raises(EncryptionError):
        decrypt(VECTORS["vectors"][0]["ciphertext"], "\ud800")


def test_type_errors() -> None:
    with pytest.raises(TypeError, match="encrypt_value"):
        encrypt(12, "pw")  # type: ignore[arg-type]
    with pytest.raises(EncryptionError, match="expected encrypted text"):
        decrypt(None, "pw")  # type: ignore[arg-type]


def test_decrypt_tolerates_surrounding_whitespace() -> None:
    ciphertext = encrypt("hi", "pw")
    assert decrypt(f"  {ciphertext}\n", "pw") == "hi"


# --------------------------------------------------------------------------------------------
# encrypt_value, value_text, looks_encrypted, generate_key
# --------------------------------------------------------------------------------------------


def test_encrypt_value_leaves_empty_values() -> None:
    assert encrypt_value(None, PASSPHRASE) is None
    assert encrypt_value("", PASSPHRASE) == ""
    assert encrypt_value(float("nan"), PASSPHRASE) is None
    assert encrypt_value(float("inf"), PASSPHRASE) is None
    assert encrypt_value(Decimal("NaN"), PASSPHRASE) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (" ", " "),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (1, "1"),
        (-42, "-42"),
        (2**70, str(2**70)),
        (1.0, "1"),
        (-0.0, "0"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (-2.25, "-2.25"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (2.0**60, "1152921504606847000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (123e-20, "1.23e-18"),
        (-1.5e300, "-1.5e+300"),
        (5e-324, "5e-324"),
        (Decimal("1.50"), "1.5"),
        (Decimal("100"), "100"),
        (Decimal("1E+2"), "100"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 678_999), "2024-01-02T03:04:05.678Z"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-01-02T01:04:05.000Z"),
        (dt.date(2024, 2, 29), "2024-02-29T00:00:00.000Z"),
        (dt.time(13, 45, 0), "13:45:00"),
        (b"\x00\xffbin", "AP9iaW4="),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ({"a": 1, "b": [1.0, None, "é\n\"q\""], "c": {"d": True}}, '{"a":1,"b":[1,null,"é\\n\\"q\\""],"c":{"d":true}}'),
        ([1.5, float("nan"), dt.date(2024, 1, 1)], '[1.5,null,"2024-01-01T00:00:00.000Z"]'),
        ((), "[]"),
        ({}, "{}"),
    ],
)
def test_value_text(value: Any, text: str) -> None:
    assert value_text(value) == text
    encrypted = encrypt_value(value, PASSPHRASE)
    assert looks_encrypted(encrypted)
    assert decrypt(encrypted, PASSPHRASE) == text


def test_value_text_matches_javascript_string(cryptojs: CryptoJS) -> None:
    rng = random.Random(3)
    floats = [rng.uniform(-1e6, 1e6) for _ in range(200)]
    floats += [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(300)]
    floats += [float(i) for i in (0, 7, 10**15, 10**16, 10**21, 10**22, 2**53, 2**53 + 2)]
    floats += [1e-5, 1e-6, 1e-7, 0.5e-6, 123456789.123, 5e-324, 1.7976931348623157e308]
    values: list[Any] = floats + [True, False, 12, -7, {"k": [1.0, 2.5e-9, "x\u2028y", None, {"z": False}]}]
    assert [value_text(v) for v in values] == cryptojs("string", values)


def test_value_text_agrees_with_row_normalisation() -> None:
    from fliplet_workers.core.rows import normalise_value

    samples: list[Any] = [
        1.0, 2.5, Decimal("3.10"), Decimal("7"), dt.datetime(2024, 5, 6, 7, 8, 9, 123_456),
        dt.date(2020, 1, 1), dt.time(1, 2, 3), b"abc", uuid.UUID(int=5), {"a": 1.0, "b": [Decimal("2.5")]},
        True, 3, "text",
    ]
    for value in samples:
        assert value_text(value) == value_text(normalise_value(value)), value


def test_looks_encrypted() -> None:
    assert looks_encrypted(encrypt("x", "pw"))
    assert all(looks_encrypted(v["ciphertext"]) for v in VECTORS["vectors"])
    assert base64.b64encode(b"Salted__").decode()[:10] == ENCRYPTED_PREFIX
    for value in (None, "", "plain", 12, b"U2FsdGVkX1", "u2fsdgvkx1abc", "U2FsdGVk"):
        assert not looks_encrypted(value)


def test_generate_key() -> None:
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert len(key) == 32
        assert key.isascii() and key.isalnum()
    assert len(generate_key(16)) == 16
    # every class of character shows up: the alphabet really is letters and digits
    joined = "".join(keys)
    assert any(c.isdigit() for c in joined) and any(c.islower() for c in joined) and any(c.isupper() for c in joined)


def test_generated_key_round_trips_as_keystore_entry(cryptojs: CryptoJS) -> None:
    # The keystore stores the data key encrypted with the salt as passphrase; apps read it with CryptoJS.
    key = generate_key()
    salt = "123-456"
    stored = encrypt(key, salt)
    assert cryptojs("decrypt", [{"ciphertext": stored, "passphrase": salt}]) == [{"text": key}]
    value = encrypt_value("secret field", key)
    assert cryptojs("decrypt", [{"ciphertext": value, "passphrase": key}]) == [{"text": "secret field"}]
