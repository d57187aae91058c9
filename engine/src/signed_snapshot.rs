//! Signed snapshots: how a policy travels from the control plane to the filter.
//!
//! The envelope carries the snapshot as an embedded JSON value and an HMAC-SHA256 over that
//! value's exact bytes, so nothing has to be re-serialized into a canonical form to verify it:
//!
//! `{"format": "keyward.signed-snapshot.v1", "key_id": "ops-1", "signature": "<hex>", "snapshot": {...}}`

use core::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::field_error::{from_json, FieldError};
use crate::snapshot::Policy;

pub const ENVELOPE_FORMAT: &str = "keyward.signed-snapshot.v1";

/// A shared secret that signs snapshots, named so it can be rotated.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even in a debug dump of the configuration.
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// `secret_base64` must decode to at least 32 bytes: HMAC-SHA256 with less is a weak key.
    pub fn from_base64(id: &str, secret_base64: &str) -> Result<SigningKey, String> {
        if id.is_empty() {
            return Err("the signing key id must not be empty".to_owned());
        }
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_base64.trim())
            .map_err(|_| "the signing key secret must be base64".to_owned())?;
        if secret.len() < 32 {
            return Err("the signing key secret must be at least 32 bytes".to_owned());
        }
        Ok(SigningKey {
            id: id.to_owned(),
            secret,
        })
    }

    fn mac(&self) -> Option<Hmac<Sha256>> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).ok()
    }

    /// The hex HMAC-SHA256 of `bytes`.
    pub fn sign_bytes(&self, bytes: &[u8]) -> String {
        match self.mac() {
            Some(mut mac) => {
                mac.update(bytes);
                hex::encode(mac.finalize().into_bytes())
            }
            None => String::new(),
        }
    }

    pub(crate) fn verifies(&self, bytes: &[u8], signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        let Some(mut mac) = self.mac() else {
            return false;
        };
        mac.update(bytes);
        // verify_slice compares in constant time.
        mac.verify_slice(&signature).is_ok()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<'a> {
    format: String,
    key_id: String,
    signature: String,
    #[serde(borrow)]
    snapshot: &'a RawValue,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: &'a str,
    key_id: &'a str,
    signature: &'a str,
    snapshot: &'a RawValue,
}

/// Why a pushed snapshot was not used. The last good policy stays in force in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRejected {
    NotAnEnvelope(String),
    UnknownFormat,
    UnknownSigningKey,
    BadSignature,
    InvalidSnapshot(FieldError),
}

impl SnapshotRejected {
    /// A short, stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotRejected::NotAnEnvelope(_) => "not_an_envelope",
            SnapshotRejected::UnknownFormat => "unknown_format",
            SnapshotRejected::UnknownSigningKey => "unknown_signing_key",
            SnapshotRejected::BadSignature => "bad_signature",
            SnapshotRejected::InvalidSnapshot(_) => "invalid_snapshot",
        }
    }
}

impl fmt::Display for SnapshotRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotRejected::NotAnEnvelope(detail) => write!(f, "not a signed snapshot: {detail}"),
            SnapshotRejected::UnknownFormat => write!(f, "unknown envelope format"),
            SnapshotRejected::UnknownSigningKey => write!(f, "signed with an unknown key id"),
            SnapshotRejected::BadSignature => write!(f, "signature does not verify"),
            SnapshotRejected::InvalidSnapshot(error) => write!(f, "invalid snapshot: {error}"),
        }
    }
}

/// Wraps a snapshot document (its exact bytes) in a signed envelope.
pub fn sign_snapshot(snapshot_json: &str, key: &SigningKey) -> Result<String, SnapshotRejected> {
    let raw: &RawValue = serde_json::from_str(snapshot_json)
        .map_err(|e| SnapshotRejected::NotAnEnvelope(e.to_string()))?;
    let signature = key.sign_bytes(raw.get().as_bytes());
    serde_json::to_string(&EnvelopeOut {
        format: ENVELOPE_FORMAT,
        key_id: &key.id,
        signature: &signature,
        snapshot: raw,
    })
    .map_err(|e| SnapshotRejected::NotAnEnvelope(e.to_string()))
}

/// Checks the envelope's signature against the configured keys, then parses and validates the
/// snapshot. Nothing in the snapshot is read before the signature verifies.
pub fn verify_snapshot(envelope: &[u8], keys: &[SigningKey]) -> Result<Policy, SnapshotRejected> {
    let envelope: EnvelopeIn<'_> = serde_json::from_slice(envelope)
        .map_err(|e| SnapshotRejected::NotAnEnvelope(e.to_string()))?;
    if envelope.format != ENVELOPE_FORMAT {
        return Err(SnapshotRejected::UnknownFormat);
    }
    let key = keys
        .iter()
        .find(|key| key.id == envelope.key_id)
        .ok_or(SnapshotRejected::UnknownSigningKey)?;
    let body = envelope.snapshot.get().as_bytes();
    if !key.verifies(body, &envelope.signature) {
        return Err(SnapshotRejected::BadSignature);
    }
    Policy::compile(from_json(body).map_err(SnapshotRejected::InvalidSnapshot)?)
        .map_err(SnapshotRejected::InvalidSnapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="; // 35 bytes

    fn key(id: &str) -> SigningKey {
        SigningKey::from_base64(id, SECRET).expect("valid key")
    }

    const SNAPSHOT: &str = r#"{"version": 2, "issued_at": 10, "projects": [], "keys": []}"#;

    #[test]
    fn signed_snapshot_verifies_and_parses() {
        let envelope = sign_snapshot(SNAPSHOT, &key("k1")).expect("signs");
        let policy =
            verify_snapshot(envelope.as_bytes(), &[key("k0"), key("k1")]).expect("verifies");
        assert_eq!(policy.version, 2);
    }

    #[test]
    fn tampering_is_detected() {
        let envelope = sign_snapshot(SNAPSHOT, &key("k1")).expect("signs");
        let tampered = envelope.replace(r#""version": 2"#, r#""version": 3"#);
        assert_ne!(tampered, envelope);
        assert_eq!(
            verify_snapshot(tampered.as_bytes(), &[key("k1")]),
            Err(SnapshotRejected::BadSignature)
        );
    }

    #[test]
    fn unknown_key_unsigned_and_garbage_are_rejected() {
        let envelope = sign_snapshot(SNAPSHOT, &key("k1")).expect("signs");
        assert_eq!(
            verify_snapshot(envelope.as_bytes(), &[key("k2")]),
            Err(SnapshotRejected::UnknownSigningKey)
        );
        assert!(matches!(
            verify_snapshot(SNAPSHOT.as_bytes(), &[key("k1")]),
            Err(SnapshotRejected::NotAnEnvelope(_))
        ));
        let wrong_format = envelope.replace(ENVELOPE_FORMAT, "other.v9");
        assert_eq!(
            verify_snapshot(wrong_format.as_bytes(), &[key("k1")]),
            Err(SnapshotRejected::UnknownFormat)
        );
        let other_secret = SigningKey::from_base64("k1", &"A".repeat(44)).expect("valid");
        assert_eq!(
            verify_snapshot(envelope.as_bytes(), &[other_secret]),
            Err(SnapshotRejected::BadSignature)
        );
    }

    #[test]
    fn signed_but_invalid_snapshot_is_rejected_with_its_field() {
        let envelope =
            sign_snapshot(r#"{"version": 0, "issued_at": 1}"#, &key("k1")).expect("signs");
        match verify_snapshot(envelope.as_bytes(), &[key("k1")]) {
            Err(SnapshotRejected::InvalidSnapshot(error)) => assert_eq!(error.path, "version"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn weak_or_malformed_secrets_are_refused() {
        assert!(SigningKey::from_base64("k", "c2hvcnQ=").is_err());
        assert!(SigningKey::from_base64("k", "not base64!").is_err());
        assert!(!format!("{:?}", key("k1")).contains(SECRET));
    }
}
