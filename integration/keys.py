"""Generate real keys in keyward's formats and the policy records that match them."""

from __future__ import annotations

import hashlib
import secrets
import zlib
from dataclasses import dataclass
from typing import Optional

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rand_base62(n: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n))


def base62_fixed(value: int, width: int = 6) -> str:
    """Base62 (alphabet 0-9A-Za-z), most significant digit first, zero-padded to `width`."""
    digits = []
    while value:
        value, r = divmod(value, 62)
        digits.append(BASE62[r])
    s = "".join(reversed(digits)) or ""
    if len(s) > width:
        raise ValueError("value does not fit")
    return s.rjust(width, "0")


def crc32_base62(text: str) -> str:
    return base62_fixed(zlib.crc32(text.encode()) & 0xFFFFFFFF)


@dataclass
class Key:
    """A plaintext key and what the policy stores about it."""

    plaintext: str
    id: str
    secret: Optional[str] = None  # key_id_secret only
    secret_sha256: Optional[str] = None
    key_sha256: Optional[str] = None

    def hashes(self) -> list[str]:
        return [h for h in (self.secret_sha256, self.key_sha256) if h]

    def record(self, **fields) -> dict:
        rec = {"id": self.id}
        if self.secret_sha256:
            rec["secret_sha256"] = self.secret_sha256
        if self.key_sha256:
            rec["key_sha256"] = self.key_sha256
        rec.update(fields)
        return rec


def ak_key(key_id: Optional[str] = None, secret_len: int = 32, prefix: str = "ak_", sep: str = ".") -> Key:
    key_id = key_id or ("k" + rand_base62(9))
    secret = rand_base62(secret_len)
    return Key(plaintext=f"{prefix}{key_id}{sep}{secret}", id=key_id, secret=secret, secret_sha256=sha256_hex(secret))


def vpx_key(env: str = "live", body_len: int = 32, key_id: Optional[str] = None, prefix: str = "vpx_") -> Key:
    plaintext = f"{prefix}{env}_{rand_base62(body_len)}"
    return Key(plaintext=plaintext, id=key_id or ("v" + rand_base62(9)), key_sha256=sha256_hex(plaintext))


def vpx_checksum_key(env: str = "live", body_len: int = 32, prefix: str = "cks_", key_id: Optional[str] = None) -> Key:
    """A prefixed opaque key whose last 6 body characters are crc32_base62 of everything before."""
    head = f"{prefix}{env}_{rand_base62(body_len - 6)}"
    plaintext = head + crc32_base62(head)
    return Key(plaintext=plaintext, id=key_id or ("c" + rand_base62(9)), key_sha256=sha256_hex(plaintext))


def break_checksum(plaintext: str) -> str:
    """Same key with one checksum character changed (still base62, same length)."""
    last = plaintext[-1]
    repl = "0" if last != "0" else "1"
    return plaintext[:-1] + repl
