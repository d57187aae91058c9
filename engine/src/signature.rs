//! Ed25519 signatures over keyward's signed documents (snapshot envelopes and chunked
//! manifests).
//!
//! The control plane alone holds a [`SigningKey`]; data planes hold [`PublicKey`]s, several at
//! once while keys rotate. A public key can verify but never sign, so whoever reads a data
//! plane's configuration (Envoy's admin `/config_dump`, a `WasmPlugin`) learns nothing that
//! would let them sign a policy.
//!
//! What is signed: `<document format>` `\n` SHA-256(exact payload bytes). The format string
//! separates the domains (a manifest signature never verifies as a snapshot's, and a future
//! format's never as this one's); hashing first lets a verifier stream a large payload through
//! SHA-256 instead of copying it next to its prefix.

use core::fmt;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};

use crate::hash::sha256;

/// Bytes of an Ed25519 public key and of a private key's seed.
pub const KEY_BYTES: usize = 32;

/// Key ids travel in envelopes and logs: a short, printable name.
fn check_key_id(id: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
    if id.is_empty() || id.len() > 64 || !id.bytes().all(allowed) {
        return Err(format!(
            "the signing key id {id:?} must be 1 to 64 characters of A-Z a-z 0-9 _ - . :"
        ));
    }
    Ok(())
}

/// The message an Ed25519 signature covers for a document of `format` whose payload is `bytes`.
fn signed_message(format: &str, bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(format.len() + 1 + 32);
    message.extend_from_slice(format.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(&sha256(bytes));
    message
}

/// The control plane's private key, named so the data planes can tell keys apart while they
/// rotate. Only `keyward serve` (and `keyward snapshot build`) ever hold one.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key, not even in a debug dump.
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A key from its 32-byte seed (RFC 8032's private key).
    pub fn from_seed(id: &str, seed: &[u8; KEY_BYTES]) -> Result<SigningKey, String> {
        check_key_id(id)?;
        Ok(SigningKey {
            id: id.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// The public half, under the same id: what data planes are configured with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            id: self.id.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The hex signature of a `format` document whose payload is `bytes`.
    pub fn sign(&self, format: &str, bytes: &[u8]) -> String {
        hex::encode(self.key.sign(&signed_message(format, bytes)).to_bytes())
    }
}

/// A public key that verifies the control plane's signatures, by id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub id: String,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("id", &self.id)
            .field("key", &self.to_base64())
            .finish()
    }
}

impl PublicKey {
    /// `public_key_base64` is the 32-byte Ed25519 public key (what `keyward secret signing-key`
    /// prints). Keys of small order (which would accept forged signatures) are refused.
    pub fn from_base64(id: &str, public_key_base64: &str) -> Result<PublicKey, String> {
        check_key_id(id)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(public_key_base64.trim())
            .map_err(|_| "the public key must be base64".to_owned())?;
        let bytes: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            format!("the public key must be {KEY_BYTES} bytes (an Ed25519 public key)")
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "the public key is not a valid Ed25519 point".to_owned())?;
        if key.is_weak() {
            return Err("the public key is a weak (small-order) Ed25519 key".to_owned());
        }
        Ok(PublicKey {
            id: id.to_owned(),
            key,
        })
    }

    /// The key as the configurations carry it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.as_bytes())
    }

    /// Whether `signature_hex` signs the `format` document whose payload is `bytes`. Strict
    /// verification: non-canonical signatures are refused, so one signed document has exactly
    /// one valid signature.
    pub fn verifies(&self, format: &str, bytes: &[u8], signature_hex: &str) -> bool {
        let mut raw = [0u8; 64];
        if signature_hex.len() != 128 || hex::decode_to_slice(signature_hex, &mut raw).is_err() {
            return false;
        }
        let signature = Signature::from_bytes(&raw);
        self.key
            .verify_strict(&signed_message(format, bytes), &signature)
            .is_ok()
    }
}

/// The key of `id` among `keys`.
pub fn find_key<'k>(keys: &'k [PublicKey], id: &str) -> Option<&'k PublicKey> {
    keys.iter().find(|key| key.id == id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// A fixed test key pair (seed 1, 2, ... 32).
    pub(crate) fn test_key(id: &str) -> SigningKey {
        let mut seed = [0u8; KEY_BYTES];
        for (position, byte) in seed.iter_mut().enumerate() {
            *byte = position as u8 + 1;
        }
        SigningKey::from_seed(id, &seed).expect("valid key")
    }

    /// Another key pair, for "signed with the wrong key".
    pub(crate) fn other_key(id: &str) -> SigningKey {
        SigningKey::from_seed(id, &[7u8; KEY_BYTES]).expect("valid key")
    }

    #[test]
    fn a_signature_verifies_with_the_public_key_only() {
        let key = test_key("ops-1");
        let public = key.public_key();
        let signature = key.sign("fmt.v2", b"payload");
        assert_eq!(signature.len(), 128);
        assert!(public.verifies("fmt.v2", b"payload", &signature));
        assert!(!public.verifies("fmt.v2", b"payloaD", &signature));
        assert!(
            !public.verifies("other.v2", b"payload", &signature),
            "domain"
        );
        assert!(!other_key("ops-1")
            .public_key()
            .verifies("fmt.v2", b"payload", &signature));
        assert!(!public.verifies("fmt.v2", b"payload", &signature[..126]));
        assert!(!public.verifies("fmt.v2", b"payload", &"zz".repeat(64)));
        let round = PublicKey::from_base64("ops-1", &public.to_base64()).expect("parses");
        assert_eq!(round, public);
    }

    #[test]
    fn matches_rfc8032_test_vector_1() {
        // RFC 8032, 7.1, TEST 1: the public key of the all-zero-message vector.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .expect("hex")
                .try_into()
                .expect("32 bytes");
        let key = SigningKey::from_seed("k", &seed).expect("key");
        assert_eq!(
            hex::encode(key.public_key().key.as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    #[test]
    fn bad_public_keys_and_ids_are_refused() {
        assert!(PublicKey::from_base64("k", "not base64!").is_err());
        assert!(PublicKey::from_base64("k", "QUJD").is_err(), "3 bytes");
        // The identity point: small order, would accept forgeries.
        let identity = base64::engine::general_purpose::STANDARD.encode({
            let mut bytes = [0u8; 32];
            bytes[0] = 1;
            bytes
        });
        assert!(PublicKey::from_base64("k", &identity).is_err());
        let good = test_key("k").public_key().to_base64();
        assert!(PublicKey::from_base64("", &good).is_err());
        assert!(PublicKey::from_base64("a b", &good).is_err());
        assert!(!format!("{:?}", test_key("k")).contains("key:"));
    }
}
