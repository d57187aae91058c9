//! Key material: ids and secrets from the operating system's CSPRNG, in the two built-in
//! formats the filter accepts by default.
//!
//! - `ak`: `ak_<key_id>.<secret>`; key id 12 alphanumeric, secret 32 base62. The snapshot
//!   carries `secret_sha256` = SHA-256 of the secret part; the filter looks the key up by id.
//! - `vpx`: `vpx_<environment>_<body>`, body 32 base62. The snapshot carries `key_sha256` =
//!   SHA-256 of the whole key; the key id (`vpx` + 12 alphanumeric) is only a display handle.
//!
//! The last 6 characters of the secret (body) are the CRC32 of everything before them in base62,
//! GitHub-token style, so a filter whose key format sets `checksum: crc32_base62` can refuse a
//! mistyped or made-up key offline. Filters with the default formats (no checksum) accept the
//! same keys, since the checksum digits are base62 characters like the rest.

use keyward_engine::hash::sha256;
use keyward_engine::key_format::{crc32_base62, parse_key, KeyFormat, ParsedKey, CHECKSUM_LENGTH};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::OsRng;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub const KEY_ID_LENGTH: usize = 12;
pub const SECRET_LENGTH: usize = 32;

/// Which of the built-in formats a key has.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `ak_<key_id>.<secret>`
    #[default]
    Ak,
    /// `vpx_<environment>_<body>`
    Vpx,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ak => "ak",
            Format::Vpx => "vpx",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "ak" => Some(Format::Ak),
            "vpx" => Some(Format::Vpx),
            _ => None,
        }
    }
}

/// The environment a key belongs to (the filter's routes may accept only one of them).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<Environment> {
        match text {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

/// A plaintext key. Shown once to whoever created it, never stored, never logged; `Debug`
/// does not print it.
pub struct Plaintext(String);

impl Plaintext {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plaintext(<redacted>)")
    }
}

/// A new key: what is shown once, and what is stored.
#[derive(Debug)]
pub struct Material {
    pub id: String,
    pub plaintext: Plaintext,
    /// Hex SHA-256 of the secret part (`ak`).
    pub secret_sha256: Option<String>,
    /// Hex SHA-256 of the whole key (`vpx`).
    pub key_sha256: Option<String>,
}

/// `length` characters of `A-Za-z0-9`, uniformly, straight from the OS CSPRNG.
pub fn random_base62(length: usize) -> String {
    Alphanumeric.sample_string(&mut OsRng.unwrap_err(), length)
}

/// `random` base62 characters followed by the CRC32 of `prefix` + those characters.
fn checksummed_body(prefix: &str) -> String {
    let mut body = random_base62(SECRET_LENGTH - CHECKSUM_LENGTH);
    let digits = crc32_base62(format!("{prefix}{body}").as_bytes());
    body.extend(digits.iter().map(|&digit| char::from(digit)));
    body
}

/// Generates a key of `format` for `environment`.
pub fn generate(format: Format, environment: Environment) -> Result<Material, Error> {
    let material = match format {
        Format::Ak => {
            let id = random_base62(KEY_ID_LENGTH);
            let prefix = format!("ak_{id}.");
            let secret = checksummed_body(&prefix);
            Material {
                secret_sha256: Some(hex::encode(sha256(secret.as_bytes()))),
                key_sha256: None,
                plaintext: Plaintext(format!("{prefix}{secret}")),
                id,
            }
        }
        Format::Vpx => {
            let prefix = format!("vpx_{}_", environment.as_str());
            let plaintext = format!("{prefix}{}", checksummed_body(&prefix));
            Material {
                id: format!("vpx{}", random_base62(KEY_ID_LENGTH)),
                secret_sha256: None,
                key_sha256: Some(hex::encode(sha256(plaintext.as_bytes()))),
                plaintext: Plaintext(plaintext),
            }
        }
    };
    // The filter must accept what we hand out: check with its own parser.
    match parse_key(
        &KeyFormat::defaults(),
        material.plaintext.expose().as_bytes(),
    ) {
        Ok(ParsedKey::KeyIdSecret { key_id, .. }) if key_id == material.id => Ok(material),
        Ok(ParsedKey::Opaque { .. }) if format == Format::Vpx => Ok(material),
        _ => Err(Error::internal(
            "generated a key the filter would not accept",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_engine::key_format::{Charset, Checksum, PartShape};

    fn checksum_formats() -> Vec<KeyFormat> {
        vec![
            KeyFormat::KeyIdSecret {
                name: "ak".into(),
                prefix: "ak_".into(),
                separator: ".".into(),
                key_id: PartShape {
                    charset: Charset::Alphanumeric,
                    min_length: 12,
                    max_length: 12,
                },
                secret: PartShape {
                    charset: Charset::Base62,
                    min_length: 32,
                    max_length: 32,
                },
                checksum: Checksum::Crc32Base62,
            },
            KeyFormat::PrefixedOpaque {
                name: "vpx".into(),
                prefix: "vpx_".into(),
                environments: vec!["live".into(), "test".into()],
                body: PartShape {
                    charset: Charset::Base62,
                    min_length: 32,
                    max_length: 32,
                },
                checksum: Checksum::Crc32Base62,
            },
        ]
    }

    #[test]
    fn ak_keys_have_the_documented_shape_and_hash() {
        let material = generate(Format::Ak, Environment::Live).unwrap();
        let key = material.plaintext.expose();
        let (id, secret) = key.strip_prefix("ak_").unwrap().split_once('.').unwrap();
        assert_eq!(id, material.id);
        assert_eq!(id.len(), 12);
        assert_eq!(secret.len(), 32);
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(
            material.secret_sha256.as_deref(),
            Some(hex::encode(sha256(secret.as_bytes())).as_str())
        );
        assert!(material.key_sha256.is_none());
        assert!(parse_key(&checksum_formats(), key.as_bytes()).is_ok());
    }

    #[test]
    fn vpx_keys_carry_their_environment_and_whole_key_hash() {
        let material = generate(Format::Vpx, Environment::Test).unwrap();
        let key = material.plaintext.expose();
        let body = key.strip_prefix("vpx_test_").unwrap();
        assert_eq!(body.len(), 32);
        assert!(material.id.starts_with("vpx") && material.id.len() == 15);
        assert_eq!(
            material.key_sha256.as_deref(),
            Some(hex::encode(sha256(key.as_bytes())).as_str())
        );
        assert!(parse_key(&checksum_formats(), key.as_bytes()).is_ok());
    }

    #[test]
    fn a_changed_character_breaks_the_checksum() {
        let material = generate(Format::Ak, Environment::Live).unwrap();
        let mut key = material.plaintext.expose().to_owned().into_bytes();
        let position = key.len() - 10;
        key[position] = if key[position] == b'a' { b'b' } else { b'a' };
        assert!(parse_key(&checksum_formats(), &key).is_err());
    }

    #[test]
    fn keys_are_not_repeated_and_debug_hides_them() {
        let first = generate(Format::Ak, Environment::Live).unwrap();
        let second = generate(Format::Ak, Environment::Live).unwrap();
        assert_ne!(first.plaintext.expose(), second.plaintext.expose());
        assert!(!format!("{first:?}").contains(first.plaintext.expose()));
    }
}
