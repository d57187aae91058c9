//! Key formats: which strings can be keyward keys at all. Parsing is done on raw header bytes so
//! malformed input is rejected before any lookup, any hashing and any UTF-8 conversion.

use serde::Deserialize;

/// Characters allowed in one part of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Charset {
    /// `A-Za-z0-9`.
    Alphanumeric,
    /// Same set as `alphanumeric`, named after how secrets are usually generated.
    Base62,
    /// `A-Za-z0-9-_`.
    Base64url,
    /// `0-9a-f`.
    Hex,
}

impl Charset {
    fn allows(self, byte: u8) -> bool {
        match self {
            Charset::Alphanumeric | Charset::Base62 => byte.is_ascii_alphanumeric(),
            Charset::Base64url => byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_',
            Charset::Hex => byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte),
        }
    }
}

/// The shape of one part of a key (key id, secret, body).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartShape {
    pub charset: Charset,
    pub min_length: usize,
    pub max_length: usize,
}

impl PartShape {
    fn accepts(&self, part: &[u8]) -> bool {
        (self.min_length..=self.max_length).contains(&part.len())
            && part.iter().all(|&byte| self.charset.allows(byte))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    #[default]
    None,
    /// The last 6 characters are the CRC32 (IEEE) of everything before them, in base62 (GitHub
    /// token style): a typo or a made-up key is refused without touching the policy.
    Crc32Base62,
}

pub const CHECKSUM_LENGTH: usize = 6;
const BASE62_DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Encodes a CRC32 value as 6 base62 digits, most significant first.
pub fn crc32_base62(data: &[u8]) -> [u8; CHECKSUM_LENGTH] {
    let mut value = crc32fast::hash(data);
    let mut digits = [b'0'; CHECKSUM_LENGTH];
    for slot in digits.iter_mut().rev() {
        // value % 62 < 62, so the lookup cannot miss; `get` keeps clippy's indexing lint quiet.
        *slot = BASE62_DIGITS
            .get((value % 62) as usize)
            .copied()
            .unwrap_or(b'0');
        value /= 62;
    }
    digits
}

impl Checksum {
    /// Checks the checksum of `key`, whose last part is `checked_part` (the part that must be
    /// long enough to carry the checksum digits).
    fn holds(self, key: &[u8], checked_part: &[u8]) -> bool {
        match self {
            Checksum::None => true,
            Checksum::Crc32Base62 => {
                if checked_part.len() <= CHECKSUM_LENGTH {
                    return false;
                }
                let (covered, digits) = key.split_at(key.len() - CHECKSUM_LENGTH);
                crc32_base62(covered) == digits
            }
        }
    }
}

/// One accepted key format, as written in the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyFormat {
    /// `<prefix><key_id><separator><secret>`: the key id is looked up directly.
    KeyIdSecret {
        name: String,
        prefix: String,
        #[serde(default = "default_separator")]
        separator: String,
        key_id: PartShape,
        secret: PartShape,
        #[serde(default)]
        checksum: Checksum,
    },
    /// `<prefix>[<environment>_]<body>`: looked up by SHA-256 of the whole key.
    PrefixedOpaque {
        name: String,
        prefix: String,
        #[serde(default)]
        environments: Vec<String>,
        body: PartShape,
        #[serde(default)]
        checksum: Checksum,
    },
}

fn default_separator() -> String {
    ".".to_owned()
}

impl KeyFormat {
    pub fn name(&self) -> &str {
        match self {
            KeyFormat::KeyIdSecret { name, .. } | KeyFormat::PrefixedOpaque { name, .. } => name,
        }
    }

    pub fn prefix(&self) -> &str {
        match self {
            KeyFormat::KeyIdSecret { prefix, .. } | KeyFormat::PrefixedOpaque { prefix, .. } => {
                prefix
            }
        }
    }

    /// The formats used when the configuration names none: the two shapes of the seed products.
    pub fn defaults() -> Vec<KeyFormat> {
        vec![
            KeyFormat::KeyIdSecret {
                name: "ak".to_owned(),
                prefix: "ak_".to_owned(),
                separator: ".".to_owned(),
                key_id: PartShape {
                    charset: Charset::Alphanumeric,
                    min_length: 4,
                    max_length: 32,
                },
                secret: PartShape {
                    charset: Charset::Base62,
                    min_length: 16,
                    max_length: 128,
                },
                checksum: Checksum::None,
            },
            KeyFormat::PrefixedOpaque {
                name: "vpx".to_owned(),
                prefix: "vpx_".to_owned(),
                environments: vec!["live".to_owned(), "test".to_owned()],
                body: PartShape {
                    charset: Charset::Base62,
                    min_length: 24,
                    max_length: 64,
                },
                checksum: Checksum::None,
            },
        ]
    }

    /// Checks the format's own settings; returns the problem and the field it concerns.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let shapes: Vec<(&'static str, &PartShape)> = match self {
            KeyFormat::KeyIdSecret { key_id, secret, .. } => {
                vec![("key_id", key_id), ("secret", secret)]
            }
            KeyFormat::PrefixedOpaque { body, .. } => vec![("body", body)],
        };
        for (field, shape) in shapes {
            if shape.min_length == 0 || shape.min_length > shape.max_length {
                return Err((
                    field,
                    "min_length must be at least 1 and at most max_length".to_owned(),
                ));
            }
        }
        if self.prefix().is_empty() || !self.prefix().bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "prefix",
                "must be non-empty printable ASCII without spaces".to_owned(),
            ));
        }
        match self {
            KeyFormat::KeyIdSecret {
                separator,
                key_id,
                secret,
                checksum,
                ..
            } => {
                let separator_in_id = separator.bytes().any(|b| key_id.charset.allows(b));
                if separator.len() != 1 || separator_in_id {
                    return Err((
                        "separator",
                        "must be one character outside the key id's charset".to_owned(),
                    ));
                }
                if *checksum != Checksum::None && secret.min_length <= CHECKSUM_LENGTH {
                    return Err((
                        "secret",
                        "min_length must exceed the 6 checksum characters".to_owned(),
                    ));
                }
            }
            KeyFormat::PrefixedOpaque {
                environments,
                body,
                checksum,
                ..
            } => {
                if environments
                    .iter()
                    .any(|e| e.is_empty() || !e.bytes().all(|b| b.is_ascii_alphanumeric()))
                {
                    return Err((
                        "environments",
                        "each environment must be non-empty ASCII letters and digits".to_owned(),
                    ));
                }
                if *checksum != Checksum::None && body.min_length <= CHECKSUM_LENGTH {
                    return Err((
                        "body",
                        "min_length must exceed the 6 checksum characters".to_owned(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses `key` if it has this format's prefix. `None`: not this format's prefix;
    /// `Some(Err)`: this format's prefix but malformed.
    fn parse<'k>(&'k self, key: &'k [u8]) -> Option<Result<ParsedKey<'k>, MalformedKey>> {
        let rest = key.strip_prefix(self.prefix().as_bytes())?;
        Some(match self {
            KeyFormat::KeyIdSecret {
                separator,
                key_id,
                secret,
                checksum,
                ..
            } => parse_key_id_secret(key, rest, separator.as_bytes(), key_id, secret, *checksum),
            KeyFormat::PrefixedOpaque {
                environments,
                body,
                checksum,
                ..
            } => parse_prefixed_opaque(key, rest, environments, body, *checksum),
        })
    }
}

fn parse_key_id_secret<'k>(
    key: &'k [u8],
    rest: &'k [u8],
    separator: &[u8],
    key_id_shape: &PartShape,
    secret_shape: &PartShape,
    checksum: Checksum,
) -> Result<ParsedKey<'k>, MalformedKey> {
    let position = rest
        .windows(separator.len())
        .position(|window| window == separator)
        .ok_or(MalformedKey::MissingSeparator)?;
    let (key_id, after) = rest.split_at(position);
    let secret = after.get(separator.len()..).unwrap_or_default();
    if !key_id_shape.accepts(key_id) || !secret_shape.accepts(secret) {
        return Err(MalformedKey::BadShape);
    }
    if !checksum.holds(key, secret) {
        return Err(MalformedKey::BadChecksum);
    }
    // The shape check above admitted only ASCII, so this conversion cannot fail.
    let key_id = core::str::from_utf8(key_id).map_err(|_| MalformedKey::BadShape)?;
    Ok(ParsedKey::KeyIdSecret { key_id, secret })
}

fn parse_prefixed_opaque<'k>(
    key: &'k [u8],
    rest: &'k [u8],
    environments: &'k [String],
    body_shape: &PartShape,
    checksum: Checksum,
) -> Result<ParsedKey<'k>, MalformedKey> {
    let (environment, body) = if environments.is_empty() {
        (None, rest)
    } else {
        let found = environments.iter().find_map(|environment| {
            rest.strip_prefix(environment.as_bytes())
                .and_then(|after| after.strip_prefix(b"_"))
                .map(|body| (environment.as_str(), body))
        });
        let (environment, body) = found.ok_or(MalformedKey::UnknownEnvironment)?;
        (Some(environment), body)
    };
    if !body_shape.accepts(body) {
        return Err(MalformedKey::BadShape);
    }
    if !checksum.holds(key, body) {
        return Err(MalformedKey::BadChecksum);
    }
    Ok(ParsedKey::Opaque {
        whole_key: key,
        environment,
    })
}

/// A key that has the shape of one configured format. Nothing about it is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedKey<'k> {
    KeyIdSecret {
        key_id: &'k str,
        secret: &'k [u8],
    },
    Opaque {
        whole_key: &'k [u8],
        /// The environment named by the key's prefix, when the format has environments.
        environment: Option<&'k str>,
    },
}

/// Why a presented key is not a key of any configured format. Only the fixed descriptions are
/// ever shown to clients: never the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKey {
    UnknownFormat,
    MissingSeparator,
    BadShape,
    BadChecksum,
    UnknownEnvironment,
}

impl MalformedKey {
    pub const ALL: [MalformedKey; 5] = [
        MalformedKey::UnknownFormat,
        MalformedKey::MissingSeparator,
        MalformedKey::BadShape,
        MalformedKey::BadChecksum,
        MalformedKey::UnknownEnvironment,
    ];

    pub fn description(self) -> &'static str {
        match self {
            MalformedKey::UnknownFormat => "the key does not have the format of a key issued here",
            MalformedKey::MissingSeparator => "the key is missing its separator",
            MalformedKey::BadShape => "the key has the wrong length or characters",
            MalformedKey::BadChecksum => "the key's checksum is wrong",
            MalformedKey::UnknownEnvironment => "the key names an unknown environment",
        }
    }
}

/// Parses `key` against the formats in order; the first format whose prefix matches decides.
pub fn parse_key<'k>(
    formats: &'k [KeyFormat],
    key: &'k [u8],
) -> Result<ParsedKey<'k>, MalformedKey> {
    formats
        .iter()
        .find_map(|format| format.parse(key))
        .unwrap_or(Err(MalformedKey::UnknownFormat))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn defaults() -> Vec<KeyFormat> {
        KeyFormat::defaults()
    }

    #[test]
    fn parses_key_id_secret() {
        let formats = defaults();
        let parsed = parse_key(&formats, b"ak_k7Hq2mPa.s3cr3tS3cr3tS3cr3tXY");
        assert_eq!(
            parsed,
            Ok(ParsedKey::KeyIdSecret {
                key_id: "k7Hq2mPa",
                secret: b"s3cr3tS3cr3tS3cr3tXY"
            })
        );
    }

    #[test]
    fn parses_opaque_with_environment() {
        let formats = defaults();
        let key = b"vpx_test_abcdefghijklmnopqrstuvwx";
        assert_eq!(
            parse_key(&formats, key),
            Ok(ParsedKey::Opaque {
                whole_key: key,
                environment: Some("test")
            })
        );
    }

    #[test]
    fn rejects_malformed_keys() {
        let formats = defaults();
        let cases: &[(&[u8], MalformedKey)] = &[
            (
                b"sk-proj-abcdefghijklmnopqrstuvwxyz",
                MalformedKey::UnknownFormat,
            ),
            (b"eyJhbGciOiJIUzI1NiJ9.e30.sig", MalformedKey::UnknownFormat),
            (
                b"AK_k7Hq2mPa.s3cr3tS3cr3tS3cr3tXY",
                MalformedKey::UnknownFormat,
            ),
            (
                b"ak_k7Hq2mPas3cr3tS3cr3tS3cr3tXY",
                MalformedKey::MissingSeparator,
            ),
            (b"ak_k7H.s3cr3tS3cr3tS3cr3tXY", MalformedKey::BadShape),
            (b"ak_k7Hq2mPa.short", MalformedKey::BadShape),
            (b"ak_k7Hq-2mPa.s3cr3tS3cr3tS3cr3tXY", MalformedKey::BadShape),
            (b"ak_k7Hq2mPa.s3cr3tS3cr3t S3cr3tXY", MalformedKey::BadShape),
            (
                b"ak_k7Hq2mPa.s3cr3tS3cr3t\xc3\xa9S3cr3tXY",
                MalformedKey::BadShape,
            ),
            (b"ak_k7Hq2mPa.", MalformedKey::BadShape),
            (
                b"vpx_prod_abcdefghijklmnopqrstuvwx",
                MalformedKey::UnknownEnvironment,
            ),
            (b"vpx_live_abc", MalformedKey::BadShape),
            (b"vpx_live_abcdefghijklmnopqrstuvw!", MalformedKey::BadShape),
            (b"", MalformedKey::UnknownFormat),
        ];
        for (key, expected) in cases {
            assert_eq!(
                parse_key(&formats, key),
                Err(*expected),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        let too_long = [b"ak_abcd.".as_slice(), &[b'a'; 129]].concat();
        assert_eq!(parse_key(&formats, &too_long), Err(MalformedKey::BadShape));
    }

    fn with_checksum(body: &str) -> String {
        let digits = crc32_base62(body.as_bytes());
        format!("{body}{}", String::from_utf8_lossy(&digits))
    }

    #[test]
    fn checksum_accepts_valid_and_rejects_altered_keys() {
        let formats = vec![KeyFormat::PrefixedOpaque {
            name: "gh".to_owned(),
            prefix: "ghk_".to_owned(),
            environments: vec![],
            body: PartShape {
                charset: Charset::Base62,
                min_length: 20,
                max_length: 40,
            },
            checksum: Checksum::Crc32Base62,
        }];
        let key = with_checksum("ghk_abcdefghijklmnopqr");
        assert!(parse_key(&formats, key.as_bytes()).is_ok());
        let mut altered = key.clone().into_bytes();
        altered[5] = b'X';
        assert_eq!(
            parse_key(&formats, &altered),
            Err(MalformedKey::BadChecksum)
        );
    }

    #[test]
    fn crc32_base62_is_zero_padded_and_stable() {
        // crc32("") == 0
        assert_eq!(&crc32_base62(b""), b"000000");
        // crc32("123456789") == 0xCBF43926 == 3421780262 == base62 "3jZRME"
        assert_eq!(&crc32_base62(b"123456789"), b"3jZRME");
    }

    #[test]
    fn validate_rejects_bad_settings() {
        let mut formats = defaults();
        if let Some(KeyFormat::KeyIdSecret { separator, .. }) = formats.first_mut() {
            *separator = "a".to_owned();
        }
        assert_eq!(formats[0].validate().map_err(|e| e.0), Err("separator"));
        assert!(formats[1].validate().is_ok());
    }
}
