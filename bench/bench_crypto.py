"""Throughput of the CryptoJS-format encryption: values/s for encrypt and decrypt of short strings.

Usage: python bench/bench_crypto.py [count]   (default 100000)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fliplet_workers.core.crypto import decrypt, encrypt, encrypt_value, generate_key  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    key = generate_key()
    texts = [f"user{i}@example.com" for i in range(count)]

    start = time.perf_counter()
    encrypted = [encrypt(t, key) for t in texts]
    enc_s = time.perf_counter() - start

    start = time.perf_counter()
    decrypted = [decrypt(c, key) for c in encrypted]
    dec_s = time.perf_counter() - start
    assert decrypted == texts

    values = [i * 1.5 for i in range(count)]
    start = time.perf_counter()
    for v in values:
        encrypt_value(v, key)
    val_s = time.perf_counter() - start

    for name, seconds in (("encrypt", enc_s), ("decrypt", dec_s), ("encrypt_value(float)", val_s)):
        print(f"{name:>22}: {count / seconds:>10,.0f} values/s  ({seconds / count * 1e6:.1f} µs/value)")


if __name__ == "__main__":
    main()
