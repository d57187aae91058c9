"""The signed envelopes the filter verifies (engine/src/signed_snapshot.rs, engine/src/chunked.rs,
engine/src/signature.rs).

The only place that signs: if the engine's signature scheme changes, only this module changes.
Ed25519 over `<format>\\n` + SHA-256(payload), the payload embedded byte for byte; the private key
stays with whoever signs (the control plane, or a test posing as one), and filters hold the public
key only. `symmetric_envelope` builds the pre-Ed25519 (HMAC) format, which filters must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SNAPSHOT_FORMAT = "keyward.signed-snapshot.v2"
MANIFEST_FORMAT = "keyward.signed-manifest.v2"
FORMATS = {"snapshot": SNAPSHOT_FORMAT, "manifest": MANIFEST_FORMAT}
SYMMETRIC_FORMATS = {"snapshot": "keyward.signed-snapshot.v1", "manifest": "keyward.signed-manifest.v1"}

PrivateKey = Union[Ed25519PrivateKey, bytes]


def private_key(key: PrivateKey) -> Ed25519PrivateKey:
    """An Ed25519 key from a key, a 32-byte seed, or a PKCS#8 PEM file's bytes."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    if key.startswith(b"-----BEGIN"):
        loaded = serialization.load_pem_private_key(key, password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return loaded
    return Ed25519PrivateKey.from_private_bytes(key)


def public_key_base64(key: PrivateKey) -> str:
    """The public key as `sync.public_keys[].public_key_base64` takes it."""
    raw = private_key(key).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def signature(key: PrivateKey, payload: bytes, kind: str = "snapshot") -> str:
    """Hex Ed25519 signature of a `kind` document whose payload is these exact bytes."""
    message = FORMATS[kind].encode() + b"\n" + hashlib.sha256(payload).digest()
    return private_key(key).sign(message).hex()


def sign_envelope(payload_json: bytes, key_id: str, key: PrivateKey, kind: str = "snapshot") -> bytes:
    """`{"format", "key_id", "signature", <kind>: payload}` with the payload embedded byte for byte
    (the filter verifies the raw value). kind: "snapshot" or "manifest" (the chunked layout)."""
    return b'{"format":%s,"key_id":%s,"signature":"%s","%s":%s}' % (
        json.dumps(FORMATS[kind]).encode(), json.dumps(key_id).encode(), signature(key, payload_json, kind).encode(),
        kind.encode(), payload_json,
    )


def symmetric_envelope(payload_json: bytes, key_id: str, secret: bytes, kind: str = "snapshot") -> bytes:
    """The envelope keyward signed before Ed25519: HMAC-SHA256 with a secret every data plane held.
    Only for tests that prove the filter refuses it."""
    mac = hmac.new(secret, payload_json, hashlib.sha256).hexdigest()
    return b'{"format":%s,"key_id":%s,"signature":"%s","%s":%s}' % (
        json.dumps(SYMMETRIC_FORMATS[kind]).encode(), json.dumps(key_id).encode(), mac.encode(), kind.encode(),
        payload_json,
    )
