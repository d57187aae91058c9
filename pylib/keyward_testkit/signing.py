"""The signed envelopes the filter verifies (engine/src/signed_snapshot.rs, engine/src/chunked.rs).

The only place that signs: if the engine's signature scheme changes, only `signature` changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json

SNAPSHOT_FORMAT = "keyward.signed-snapshot.v1"
MANIFEST_FORMAT = "keyward.signed-manifest.v1"
FORMATS = {"snapshot": SNAPSHOT_FORMAT, "manifest": MANIFEST_FORMAT}


def signature(secret: bytes, payload: bytes) -> str:
    """HMAC-SHA256, hex, over the exact bytes the envelope embeds."""
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def sign_envelope(payload_json: bytes, key_id: str, secret: bytes, kind: str = "snapshot") -> bytes:
    """`{"format", "key_id", "signature", <kind>: payload}` with the payload embedded byte for byte
    (the filter verifies the raw value). kind: "snapshot" or "manifest" (the chunked layout)."""
    return b'{"format":%s,"key_id":%s,"signature":"%s","%s":%s}' % (
        json.dumps(FORMATS[kind]).encode(), json.dumps(key_id).encode(), signature(secret, payload_json).encode(),
        kind.encode(), payload_json,
    )
