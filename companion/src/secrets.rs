//! The control plane's own secrets: the snapshot signing key (Ed25519, whose public half is all
//! a data plane ever holds) and the admin tokens. Both live in files the operator protects
//! (mode 0600); keyward generates them with the OS CSPRNG.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use keyward_engine::hash::{digests_equal, sha256, Sha256Digest};
use keyward_engine::signature::{PublicKey, SigningKey};
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

/// The token in a token file: its first line that is not blank or a `#` comment, as `NAME:TOKEN`
/// or a bare `TOKEN` (an admin token file, or a file holding a data-plane token).
pub fn read_token_file(path: &Path, what: &str) -> Result<String, Error> {
    let text = read_secret_file(path, what)?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or_else(|| {
            Error::invalid(
                "invalid_token_file",
                format!("{}: no token in it", path.display()),
            )
        })?;
    Ok(line
        .split_once(':')
        .map_or(line, |(_, token)| token.trim())
        .to_owned())
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

/// Writes `contents` to `path` readable by its owner only (0600), replacing what was there: for
/// rendered configurations that carry a credential. The file is made 0600 before anything is
/// written into it, also when it existed with wider permissions.
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), Error> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let failed = |error: std::io::Error| {
        Error::internal(format!("cannot write {}: {error}", path.display()))
    };
    let mut file = options.open(path).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(failed)?;
    }
    file.write_all(contents.as_bytes()).map_err(failed)
}

/// Replaces `path` with `contents` in one step, readable by its owner only (0600): written to a
/// temporary file beside it (named after this process, so two writers never share one), synced,
/// then renamed over it. A reader (Envoy loading the last-known-good file, say) sees the old
/// file or the new one, never half of one.
pub fn write_private_file_atomically(path: &Path, contents: &str) -> Result<(), Error> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keyward".to_owned());
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = write_private_file(&temporary, contents).and_then(|()| {
        let failed = |error: std::io::Error| {
            Error::internal(format!("cannot write {}: {error}", path.display()))
        };
        fs::File::open(&temporary)
            .and_then(|file| file.sync_all())
            .map_err(failed)?;
        fs::rename(&temporary, path).map_err(failed)
    });
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

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

const PEM_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----";

/// Loads the snapshot signing key: an Ed25519 private key, PKCS#8 PEM (`keyward secret
/// signing-key`, or `openssl genpkey -algorithm ed25519`). A shared HMAC secret of an older
/// keyward is refused with its own message: it was in every data plane's configuration.
pub fn load_signing_key(id: &str, path: &Path) -> Result<SigningKey, Error> {
    let text = read_secret_file(path, "signing key")?;
    let invalid = |message: String| Error::invalid("invalid_signing_key", message);
    if !text.starts_with(PEM_PRIVATE_KEY) {
        return Err(invalid(format!(
            "{} is not an Ed25519 private key (PKCS#8 PEM). If it is the base64 HMAC secret of an \
             older keyward, that secret sat in every Envoy configuration: make a key pair with \
             `keyward secret signing-key --out FILE` and give the filters its public key",
            path.display()
        )));
    }
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&text).map_err(|error| {
        invalid(format!(
            "{}: not an Ed25519 private key: {error}",
            path.display()
        ))
    })?;
    SigningKey::from_seed(id, &key.to_bytes()).map_err(invalid)
}

/// Loads a public key the filters trust: the base64 key `keyward secret signing-key` writes to
/// its `.pub` file, or a PEM public key (`openssl pkey -pubout`).
pub fn load_public_key(id: &str, path: &Path) -> Result<PublicKey, Error> {
    let text = fs::read_to_string(path).map_err(|error| {
        Error::invalid(
            "unreadable_public_key",
            format!(
                "cannot read the public key file {}: {error}",
                path.display()
            ),
        )
    })?;
    let text = text.trim();
    let invalid = |message: String| {
        Error::invalid(
            "invalid_public_key",
            format!("{}: {message}", path.display()),
        )
    };
    if text.starts_with(PEM_PRIVATE_KEY) {
        return Err(invalid(
            "this is a private key: give the filters its public key (the .pub file)".to_owned(),
        ));
    }
    if text.starts_with(PEM_PUBLIC_KEY) {
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(text)
            .map_err(|error| invalid(format!("not an Ed25519 public key: {error}")))?;
        return PublicKey::from_base64(
            id,
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.as_bytes()),
        )
        .map_err(invalid);
    }
    PublicKey::from_base64(id, text).map_err(invalid)
}

/// A new Ed25519 key pair from the OS random generator: the private key as PKCS#8 PEM, and
/// the public key (base64) under `id`.
pub fn generate_signing_key(id: &str) -> Result<(String, PublicKey), Error> {
    let mut seed = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|error| Error::internal(format!("the OS random generator failed: {error}")))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (the seed only, as `openssl genpkey` writes it): every tool reads it, while the
    // v2 form with the public key appended is refused by some (Python's `cryptography`).
    let pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: seed,
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|error| Error::internal(format!("cannot encode the private key: {error}")))?;
    seed.fill(0);
    let public = SigningKey::from_seed(id, &key.to_bytes())
        .map_err(|message| Error::invalid("invalid_signing_key_id", message))?
        .public_key();
    Ok((pem.trim_end().to_owned(), public))
}

/// The budget webhook secret: at least this many random bytes (HMAC-SHA256 with less is weak).
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 32;

/// A new webhook secret: 32 bytes from the OS random generator, base64.
pub fn generate_webhook_secret() -> Result<String, Error> {
    use base64::Engine as _;
    let mut secret = [0u8; MIN_WEBHOOK_SECRET_BYTES];
    OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|error| Error::internal(format!("the OS random generator failed: {error}")))?;
    let text = base64::engine::general_purpose::STANDARD.encode(secret);
    secret.fill(0);
    Ok(text)
}

/// Loads the webhook secret (`keyward secret webhook-secret`): base64 of at least 32 bytes.
pub fn load_webhook_secret(path: &Path) -> Result<Vec<u8>, Error> {
    use base64::Engine as _;
    let text = read_secret_file(path, "webhook secret")?;
    let secret = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| {
            Error::invalid(
                "invalid_webhook_secret",
                format!(
                    "{} is not base64 (make one with `keyward secret webhook-secret --out FILE`)",
                    path.display()
                ),
            )
        })?;
    if secret.len() < MIN_WEBHOOK_SECRET_BYTES {
        return Err(Error::invalid(
            "invalid_webhook_secret",
            format!(
                "{}: the webhook secret must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes",
                path.display()
            ),
        ));
    }
    Ok(secret)
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

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_even_when_they_existed_wider() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&path, "new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn weak_or_empty_token_files_are_refused() {
        assert!(AdminTokens::parse("short").is_err());
        assert!(AdminTokens::parse("# nothing\n").is_err());
        assert!(AdminTokens::parse(&format!("bad name:{}", generate_admin_token())).is_err());
    }

    #[test]
    fn generated_key_pairs_load_and_old_hmac_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, public) = generate_signing_key("ops-1").unwrap();
        let private_path = dir.path().join("signing.key");
        write_secret_file(&private_path, &pem).unwrap();
        let key = load_signing_key("ops-1", &private_path).unwrap();
        assert_eq!(key.public_key(), public);
        let public_path = dir.path().join("signing.key.pub");
        fs::write(&public_path, public.to_base64()).unwrap();
        assert_eq!(load_public_key("ops-1", &public_path).unwrap(), public);
        let (other, _) = generate_signing_key("ops-1").unwrap();
        assert_ne!(other, pem);

        // A PEM public key (openssl's format) loads too; a private key is no public key.
        let spki = {
            use ed25519_dalek::pkcs8::EncodePublicKey;
            ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                .unwrap()
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        };
        let spki_path = dir.path().join("spki.pem");
        fs::write(&spki_path, spki).unwrap();
        assert_eq!(load_public_key("ops-1", &spki_path).unwrap(), public);
        let error = load_public_key("ops-1", &private_path).unwrap_err();
        assert!(error.message.contains("private key"), "{}", error.message);

        let legacy = dir.path().join("legacy.key");
        write_secret_file(&legacy, "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==").unwrap();
        let error = load_signing_key("ops-1", &legacy).unwrap_err();
        assert!(error.message.contains("HMAC"), "{}", error.message);
    }
}
