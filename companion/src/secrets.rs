//! The control plane's own secrets: the snapshot signing key and the admin tokens. Both live in
//! files the operator protects (mode 0600); keyward generates them with the OS CSPRNG.

use std::fs;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use keyward_engine::hash::{digests_equal, sha256, Sha256Digest};
use keyward_engine::signed_snapshot::SigningKey;
use rand::rngs::OsRng;
use rand::TryRngCore;

use crate::error::Error;
use crate::keygen::random_base62;

/// Admin tokens shorter than this are refused: they guard every key in the store.
pub const MIN_ADMIN_TOKEN_LENGTH: usize = 32;
const ADMIN_TOKEN_PREFIX: &str = "kwadm_";
/// The name a token gets when its line in the token file does not give one.
pub const DEFAULT_TOKEN_NAME: &str = "admin";

/// Reads a secret file, trimmed. Warns (on stderr) when others may read it.
pub fn read_secret_file(path: &Path, what: &str) -> Result<String, Error> {
    let text = fs::read_to_string(path).map_err(|error| {
        Error::invalid(
            "unreadable_secret_file",
            format!("cannot read the {what} file {}: {error}", path.display()),
        )
    })?;
    warn_if_readable_by_others(path, what);
    Ok(text.trim().to_owned())
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: the {what} file {} is readable by other users; chmod 600 it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _what: &str) {}

/// Writes a new secret file readable by its owner only; never overwrites.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), Error> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|error| {
        Error::invalid(
            "cannot_write_secret_file",
            format!(
                "cannot create {} (it must not exist yet): {error}",
                path.display()
            ),
        )
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|error| Error::internal(format!("cannot write {}: {error}", path.display())))
}

/// Loads the snapshot signing key: the file holds the base64 secret (at least 32 bytes).
pub fn load_signing_key(id: &str, path: &Path) -> Result<SigningKey, Error> {
    let secret = read_secret_file(path, "signing key")?;
    SigningKey::from_base64(id, &secret)
        .map_err(|message| Error::invalid("invalid_signing_key", message))
}

/// The base64 text of a signing key file, for configurations that must carry it (the filter's
/// `signing_keys`). Checked the same way as `load_signing_key`.
pub fn signing_key_base64(id: &str, path: &Path) -> Result<String, Error> {
    let secret = read_secret_file(path, "signing key")?;
    SigningKey::from_base64(id, &secret)
        .map_err(|message| Error::invalid("invalid_signing_key", message))?;
    Ok(secret)
}

/// 32 random bytes from the OS, base64: a new HMAC-SHA256 signing secret.
pub fn generate_signing_secret() -> Result<String, Error> {
    let mut secret = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|error| Error::internal(format!("the OS random generator failed: {error}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(secret))
}

/// A new admin token: a recognizable prefix and 43 base62 characters (~256 bits).
pub fn generate_admin_token() -> String {
    format!("{ADMIN_TOKEN_PREFIX}{}", random_base62(43))
}

/// The admin tokens `keyward serve` accepts, kept as SHA-256 digests only.
pub struct AdminTokens {
    tokens: Vec<(String, Sha256Digest)>,
}

impl AdminTokens {
    /// Parses a token file: one token a line, as `NAME:TOKEN` or a bare `TOKEN` (named
    /// `admin`); blank lines and lines starting with `#` are skipped. The name is what the
    /// audit trail records as the actor.
    pub fn parse(text: &str) -> Result<AdminTokens, Error> {
        let mut tokens = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = line
                .split_once(':')
                .map_or((DEFAULT_TOKEN_NAME, line), |(name, token)| {
                    (name.trim(), token.trim())
                });
            let bad = |message: &str| {
                Error::invalid(
                    "invalid_admin_token_file",
                    format!("admin token file, line {}: {message}", number + 1),
                )
            };
            if !crate::cli::valid_actor(name) {
                return Err(bad(
                    "the name must be 1 to 64 characters of A-Z a-z 0-9 _ - . @",
                ));
            }
            if token.len() < MIN_ADMIN_TOKEN_LENGTH || token.chars().any(char::is_whitespace) {
                return Err(bad(
                    "a token must be at least 32 characters, without spaces",
                ));
            }
            tokens.push((name.to_owned(), sha256(token.as_bytes())));
        }
        if tokens.is_empty() {
            return Err(Error::invalid(
                "invalid_admin_token_file",
                "the admin token file holds no token",
            ));
        }
        Ok(AdminTokens { tokens })
    }

    /// The name of the token `presented` matches. Every token is compared, each in constant
    /// time, so timing tells neither which token matched nor how much of one did.
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        let digest = sha256(presented.as_bytes());
        let mut matched = None;
        for (name, expected) in &self.tokens {
            if digests_equal(&digest, expected) && matched.is_none() {
                matched = Some(name.as_str());
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_their_tokens() {
        let ops = generate_admin_token();
        let bare = generate_admin_token();
        let tokens = AdminTokens::parse(&format!("# comment\n\nops-team:{ops}\n{bare}\n")).unwrap();
        assert_eq!(tokens.authenticate(&ops), Some("ops-team"));
        assert_eq!(tokens.authenticate(&bare), Some("admin"));
        assert_eq!(tokens.authenticate("nope"), None);
        assert_eq!(tokens.authenticate(&ops[..ops.len() - 1]), None);
    }

    #[test]
    fn weak_or_empty_token_files_are_refused() {
        assert!(AdminTokens::parse("short").is_err());
        assert!(AdminTokens::parse("# nothing\n").is_err());
        assert!(AdminTokens::parse(&format!("bad name:{}", generate_admin_token())).is_err());
    }

    #[test]
    fn generated_signing_secrets_are_valid_keys() {
        let secret = generate_signing_secret().unwrap();
        assert!(SigningKey::from_base64("k1", &secret).is_ok());
        assert_ne!(secret, generate_signing_secret().unwrap());
    }
}
