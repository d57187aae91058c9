//! SHA-256 digests and their constant-time comparison.

use sha2::{Digest, Sha256};

/// A SHA-256 digest as stored in the policy snapshot (hex there, raw bytes here).
pub type Sha256Digest = [u8; 32];

pub fn sha256(data: &[u8]) -> Sha256Digest {
    Sha256::digest(data).into()
}

/// Compares two digests in time independent of where they differ, so the position of the first
/// wrong byte of a guessed secret cannot be learnt from response timing.
pub fn digests_equal(left: &Sha256Digest, right: &Sha256Digest) -> bool {
    let mut difference = 0u8;
    for (a, b) in left.iter().zip(right.iter()) {
        difference |= a ^ b;
    }
    // black_box keeps the optimiser from turning the fold back into an early-exit comparison.
    core::hint::black_box(difference) == 0
}

/// Parses a 64-character lower- or upper-case hex digest.
pub fn parse_hex_digest(text: &str) -> Option<Sha256Digest> {
    let mut digest = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digests_equal_detects_any_differing_byte() {
        let base = sha256(b"secret");
        assert!(digests_equal(&base, &base));
        for position in 0..32 {
            let mut other = base;
            other[position] ^= 0x01;
            assert!(!digests_equal(&base, &other), "byte {position}");
        }
    }

    #[test]
    fn parse_hex_digest_rejects_wrong_length_and_non_hex() {
        let text = hex::encode(sha256(b"x"));
        assert_eq!(parse_hex_digest(&text), Some(sha256(b"x")));
        assert_eq!(parse_hex_digest(&text.to_uppercase()), Some(sha256(b"x")));
        assert_eq!(parse_hex_digest(&text[1..]), None);
        assert_eq!(parse_hex_digest(&format!("{}zz", &text[2..])), None);
    }
}
