//! Signed snapshots: how a policy travels from the control plane to the filter.
//!
//! The envelope carries the snapshot as an embedded JSON value and an Ed25519 signature by the
//! control plane's private key (see [`crate::signature`]) over that value's exact bytes, so
//! nothing has to be re-serialized into a canonical form to verify it:
//!
//! `{"format": "keyward.signed-snapshot.v2", "key_id": "ops-1", "signature": "<hex>", "snapshot": {...}}`
//!
//! A signed snapshot must carry `expires_at`, and one past it is refused: a captured snapshot
//! cannot be replayed to a data plane after it expired, not even to a freshly started one.

use core::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::field_error::{from_json, FieldError};
use crate::signature::{find_key, PublicKey, SigningKey};
use crate::snapshot::{Policy, Snapshot};

pub const ENVELOPE_FORMAT: &str = "keyward.signed-snapshot.v2";
/// The format keyward used while snapshots were signed with a shared HMAC key: refused, with
/// its own message, since that key was readable wherever a data plane's configuration was.
pub const SYMMETRIC_ENVELOPE_FORMAT: &str = "keyward.signed-snapshot.v1";

/// A signed envelope as received: its payload under `snapshot` (a snapshot envelope) or
/// `manifest` (a chunked manifest).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<'a> {
    format: String,
    key_id: String,
    signature: String,
    #[serde(borrow, default)]
    snapshot: Option<&'a RawValue>,
    #[serde(borrow, default)]
    manifest: Option<&'a RawValue>,
}

/// The envelope field a signed document's payload travels in.
#[derive(Clone, Copy)]
pub(crate) enum PayloadField {
    Snapshot,
    Manifest,
}

impl PayloadField {
    fn name(self) -> &'static str {
        match self {
            PayloadField::Snapshot => "snapshot",
            PayloadField::Manifest => "manifest",
        }
    }
}

/// What a signed document is: its format, the format of its HMAC-signed predecessor, and the
/// field its payload travels in.
pub(crate) struct DocumentKind {
    pub format: &'static str,
    pub symmetric_format: &'static str,
    pub field: PayloadField,
}

pub(crate) const SNAPSHOT_DOCUMENT: DocumentKind = DocumentKind {
    format: ENVELOPE_FORMAT,
    symmetric_format: SYMMETRIC_ENVELOPE_FORMAT,
    field: PayloadField::Snapshot,
};

/// Why a pushed snapshot was not used. The last good policy stays in force in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRejected {
    NotAnEnvelope(String),
    UnknownFormat,
    /// Signed with a shared (HMAC) key, the format before public-key signatures.
    SymmetricSignature,
    UnknownSigningKey,
    BadSignature,
    InvalidSnapshot(FieldError),
    /// Past its `expires_at` (a stale capture, or a control plane silent for too long).
    Expired {
        expires_at: u64,
        now: u64,
    },
}

impl SnapshotRejected {
    /// A short, stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotRejected::NotAnEnvelope(_) => "not_an_envelope",
            SnapshotRejected::UnknownFormat => "unknown_format",
            SnapshotRejected::SymmetricSignature => "symmetric_signature",
            SnapshotRejected::UnknownSigningKey => "unknown_signing_key",
            SnapshotRejected::BadSignature => "bad_signature",
            SnapshotRejected::InvalidSnapshot(_) => "invalid_snapshot",
            SnapshotRejected::Expired { .. } => "expired",
        }
    }
}

impl fmt::Display for SnapshotRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotRejected::NotAnEnvelope(detail) => write!(f, "not a signed snapshot: {detail}"),
            SnapshotRejected::UnknownFormat => write!(f, "unknown envelope format"),
            SnapshotRejected::SymmetricSignature => write!(
                f,
                "signed with a shared (HMAC) key, which is no longer accepted: the control plane \
                 must sign with its Ed25519 key"
            ),
            SnapshotRejected::UnknownSigningKey => write!(f, "signed with an unknown key id"),
            SnapshotRejected::BadSignature => write!(f, "signature does not verify"),
            SnapshotRejected::InvalidSnapshot(error) => write!(f, "invalid snapshot: {error}"),
            SnapshotRejected::Expired { expires_at, now } => {
                write!(f, "expired at {expires_at} (now {now})")
            }
        }
    }
}

/// The payload of a signed `kind` envelope, once its format is right and its signature verifies
/// with the key it names. Nothing in the payload is read before that.
pub(crate) fn verified_payload<'a>(
    envelope: &'a [u8],
    kind: &DocumentKind,
    keys: &[PublicKey],
) -> Result<&'a [u8], SnapshotRejected> {
    let envelope: EnvelopeIn<'a> = serde_json::from_slice(envelope)
        .map_err(|e| SnapshotRejected::NotAnEnvelope(e.to_string()))?;
    if envelope.format == kind.symmetric_format {
        return Err(SnapshotRejected::SymmetricSignature);
    }
    if envelope.format != kind.format {
        return Err(SnapshotRejected::UnknownFormat);
    }
    let payload = match kind.field {
        PayloadField::Snapshot => envelope.snapshot,
        PayloadField::Manifest => envelope.manifest,
    }
    .ok_or_else(|| SnapshotRejected::NotAnEnvelope(format!("no {} field", kind.field.name())))?;
    let key = find_key(keys, &envelope.key_id).ok_or(SnapshotRejected::UnknownSigningKey)?;
    let payload = payload.get().as_bytes();
    if !key.verifies(kind.format, payload, &envelope.signature) {
        return Err(SnapshotRejected::BadSignature);
    }
    Ok(payload)
}

/// A signed document must say when it stops being valid, and must not be past it at `now`.
pub(crate) fn check_expiry(expires_at: Option<u64>, now: u64) -> Result<(), SnapshotRejected> {
    match expires_at {
        None => Err(SnapshotRejected::InvalidSnapshot(FieldError::new(
            "expires_at",
            "a signed snapshot must carry expires_at",
        ))),
        Some(expires_at) if expires_at <= now => Err(SnapshotRejected::Expired { expires_at, now }),
        Some(_) => Ok(()),
    }
}

/// Wraps a payload document (its exact bytes) in a signed envelope of `kind`.
pub(crate) fn sign_document(
    kind: &DocumentKind,
    payload_json: &str,
    key: &SigningKey,
) -> Result<String, SnapshotRejected> {
    let (format, field) = (kind.format, kind.field.name());
    let raw: &RawValue = serde_json::from_str(payload_json)
        .map_err(|e| SnapshotRejected::NotAnEnvelope(e.to_string()))?;
    let signature = key.sign(format, raw.get().as_bytes());
    let text = |value: &str| {
        serde_json::to_string(value).map_err(|e| SnapshotRejected::NotAnEnvelope(e.to_string()))
    };
    // The payload goes in byte for byte: the signature covers these exact bytes.
    Ok(format!(
        "{{\"format\":{},\"key_id\":{},\"signature\":\"{signature}\",{}:{}}}",
        text(format)?,
        text(&key.id)?,
        text(field)?,
        raw.get()
    ))
}

/// Wraps a snapshot document (its exact bytes) in a signed envelope.
pub fn sign_snapshot(snapshot_json: &str, key: &SigningKey) -> Result<String, SnapshotRejected> {
    sign_document(&SNAPSHOT_DOCUMENT, snapshot_json, key)
}

/// Checks the envelope's signature against the configured public keys, then parses and
/// validates the snapshot, and refuses it without `expires_at` or past it at `now` (Unix
/// seconds). Nothing in the snapshot is read before the signature verifies.
pub fn verify_snapshot(
    envelope: &[u8],
    keys: &[PublicKey],
    now: u64,
) -> Result<Policy, SnapshotRejected> {
    let body = verified_payload(envelope, &SNAPSHOT_DOCUMENT, keys)?;
    let snapshot: Snapshot = from_json(body).map_err(SnapshotRejected::InvalidSnapshot)?;
    check_expiry(snapshot.expires_at, now)?;
    Policy::compile(snapshot).map_err(SnapshotRejected::InvalidSnapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::tests::{other_key, test_key};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SNAPSHOT: &str =
        r#"{"version": 2, "issued_at": 10, "expires_at": 100, "projects": [], "keys": []}"#;
    const NOW: u64 = 50;

    fn public(id: &str) -> PublicKey {
        test_key(id).public_key()
    }

    #[test]
    fn signed_snapshot_verifies_and_parses() {
        let envelope = sign_snapshot(SNAPSHOT, &test_key("k1")).expect("signs");
        assert!(envelope.contains(SNAPSHOT), "embedded byte for byte");
        let policy = verify_snapshot(envelope.as_bytes(), &[public("k0"), public("k1")], NOW)
            .expect("verifies");
        assert_eq!(policy.version, 2);
    }

    #[test]
    fn tampering_is_detected() {
        let envelope = sign_snapshot(SNAPSHOT, &test_key("k1")).expect("signs");
        let tampered = envelope.replace(r#""version": 2"#, r#""version": 3"#);
        assert_ne!(tampered, envelope);
        assert_eq!(
            verify_snapshot(tampered.as_bytes(), &[public("k1")], NOW),
            Err(SnapshotRejected::BadSignature)
        );
    }

    #[test]
    fn unknown_key_unsigned_symmetric_and_garbage_are_rejected() {
        let envelope = sign_snapshot(SNAPSHOT, &test_key("k1")).expect("signs");
        assert_eq!(
            verify_snapshot(envelope.as_bytes(), &[public("k2")], NOW),
            Err(SnapshotRejected::UnknownSigningKey)
        );
        assert!(matches!(
            verify_snapshot(SNAPSHOT.as_bytes(), &[public("k1")], NOW),
            Err(SnapshotRejected::NotAnEnvelope(_))
        ));
        let wrong_format = envelope.replace(ENVELOPE_FORMAT, "other.v9");
        assert_eq!(
            verify_snapshot(wrong_format.as_bytes(), &[public("k1")], NOW),
            Err(SnapshotRejected::UnknownFormat)
        );
        let symmetric = envelope.replace(ENVELOPE_FORMAT, SYMMETRIC_ENVELOPE_FORMAT);
        assert_eq!(
            verify_snapshot(symmetric.as_bytes(), &[public("k1")], NOW),
            Err(SnapshotRejected::SymmetricSignature)
        );
        let wrong_key = sign_snapshot(SNAPSHOT, &other_key("k1")).expect("signs");
        assert_eq!(
            verify_snapshot(wrong_key.as_bytes(), &[public("k1")], NOW),
            Err(SnapshotRejected::BadSignature)
        );
        // An HMAC-sized signature in a v2 envelope: refused like any other bad signature.
        let hmac_sized = format!(
            r#"{{"format":"{ENVELOPE_FORMAT}","key_id":"k1","signature":"{}","snapshot":{SNAPSHOT}}}"#,
            "ab".repeat(32)
        );
        assert_eq!(
            verify_snapshot(hmac_sized.as_bytes(), &[public("k1")], NOW),
            Err(SnapshotRejected::BadSignature)
        );
    }

    #[test]
    fn snapshots_without_or_past_their_expiry_are_refused() {
        let envelope = sign_snapshot(SNAPSHOT, &test_key("k1")).expect("signs");
        assert_eq!(
            verify_snapshot(envelope.as_bytes(), &[public("k1")], 100),
            Err(SnapshotRejected::Expired {
                expires_at: 100,
                now: 100
            })
        );
        assert!(verify_snapshot(envelope.as_bytes(), &[public("k1")], 99).is_ok());
        let forever =
            sign_snapshot(r#"{"version": 2, "issued_at": 10}"#, &test_key("k1")).expect("signs");
        match verify_snapshot(forever.as_bytes(), &[public("k1")], NOW) {
            Err(SnapshotRejected::InvalidSnapshot(error)) => assert_eq!(error.path, "expires_at"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn signed_but_invalid_snapshot_is_rejected_with_its_field() {
        let envelope = sign_snapshot(
            r#"{"version": 0, "issued_at": 1, "expires_at": 100}"#,
            &test_key("k1"),
        )
        .expect("signs");
        match verify_snapshot(envelope.as_bytes(), &[public("k1")], NOW) {
            Err(SnapshotRejected::InvalidSnapshot(error)) => assert_eq!(error.path, "version"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
