//! Provider keys' secrets on the control plane: the key-encryption key (KEK) they are stored
//! under, and their sealing into snapshots for the fleet.
//!
//! At rest a provider key is AES-256-GCM ciphertext under the KEK, with the provider and owner as
//! additional data (a ciphertext moved to another row does not decrypt). The KEK is never in the
//! store: it is a 0600 file (`keyward secret provider-kek`) given to the commands that need it.
//! The KMS seam is [`Kek`]: `encrypt`/`decrypt` are the only operations on it, so a KMS-backed
//! implementation (envelope encryption with a KMS-held key) replaces the file without touching
//! the store or the snapshot format.
//!
//! In a snapshot, provider keys are sealed to the fleet's X25519 public key (see
//! `keyward_engine::provider_keys`): the snapshot, the control-plane link and the data planes'
//! configuration never carry plaintext.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use getrandom::rand_core::UnwrapErr;
use getrandom::SysRng;
use keyward_engine::provider::{KeyOwnerKind, Provider};
use keyward_engine::provider_keys::{seal_provider_keys, FleetPrivateKey};
use keyward_engine::snapshot::Snapshot;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::secrets::read_secret_file;
use crate::store::{ProviderKeyRow, Store};

const KEK_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
/// Longest provider key accepted (the longest seen are about 200 characters).
pub const MAX_PROVIDER_KEY_BYTES: usize = 1024;

fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, Error> {
    let mut bytes = Zeroizing::new([0u8; N]);
    getrandom::fill(bytes.as_mut_slice())
        .map_err(|error| Error::internal(format!("no randomness from the OS: {error}")))?;
    Ok(bytes)
}

/// The key-encryption key: 32 bytes, from a file holding their base64.
pub struct Kek(Zeroizing<[u8; KEK_BYTES]>);

impl Kek {
    pub fn generate() -> Result<Zeroizing<String>, Error> {
        Ok(Zeroizing::new(
            STANDARD.encode(*random_bytes::<KEK_BYTES>()?),
        ))
    }

    pub fn load(path: &Path) -> Result<Kek, Error> {
        let text = Zeroizing::new(read_secret_file(path, "provider KEK")?);
        let bytes = Zeroizing::new(STANDARD.decode(text.as_bytes()).unwrap_or_default());
        let array: [u8; KEK_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            Error::invalid(
                "invalid_provider_kek",
                format!(
                    "{} is not base64 of 32 bytes (make one with `keyward secret provider-kek --out FILE`)",
                    path.display()
                ),
            )
        })?;
        Ok(Kek(Zeroizing::new(array)))
    }

    fn aad(provider: Provider, owner: KeyOwnerKind, owner_id: &str) -> Vec<u8> {
        format!(
            "keyward provider key at rest v1\0{}\0{}\0{owner_id}",
            provider.as_str(),
            owner.as_str()
        )
        .into_bytes()
    }

    fn cipher(&self) -> Result<Aes256Gcm, Error> {
        Aes256Gcm::new_from_slice(self.0.as_slice())
            .map_err(|_| Error::internal("the KEK has the wrong length"))
    }

    pub fn encrypt(
        &self,
        provider: Provider,
        owner: KeyOwnerKind,
        owner_id: &str,
        plaintext: &str,
    ) -> Result<String, Error> {
        let nonce = random_bytes::<NONCE_BYTES>()?;
        let aad = Kek::aad(provider, owner, owner_id);
        let sealed = self
            .cipher()?
            .encrypt(
                &Nonce::from(*nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| Error::internal("cannot encrypt the provider key"))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(STANDARD.encode(bytes))
    }

    pub fn decrypt(&self, row: &ProviderKeyRow) -> Result<Zeroizing<String>, Error> {
        let undecryptable = || {
            Error::invalid(
                "provider_key_undecryptable",
                format!(
                    "the stored {} key of {} {} does not decrypt with this KEK (a different \
                     --provider-kek-file than the one it was stored with?)",
                    row.provider,
                    row.owner.as_str(),
                    row.owner_id
                ),
            )
        };
        let bytes = STANDARD
            .decode(&row.ciphertext)
            .map_err(|_| undecryptable())?;
        let Some((nonce, ciphertext)) = bytes.split_first_chunk::<NONCE_BYTES>() else {
            return Err(undecryptable());
        };
        let aad = Kek::aad(row.provider, row.owner, &row.owner_id);
        let plaintext = Zeroizing::new(
            self.cipher()?
                .decrypt(
                    &Nonce::from(*nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| undecryptable())?,
        );
        String::from_utf8(plaintext.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| undecryptable())
    }
}

/// Checks a provider key as given: one line of printable characters without spaces.
pub fn check_provider_key(text: &str) -> Result<(), Error> {
    let ok = !text.is_empty()
        && text.len() <= MAX_PROVIDER_KEY_BYTES
        && text.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_provider_key",
            format!(
                "a provider key must be 1 to {MAX_PROVIDER_KEY_BYTES} printable characters without spaces"
            ),
        ))
    }
}

/// The last four characters, all `list` ever shows of a key.
pub fn last4(text: &str) -> String {
    let start = text.len().saturating_sub(4);
    text.get(start..).unwrap_or_default().to_owned()
}

/// A provider's name, as the CLI and the admin API take it. The error lists the known names and
/// never repeats what was given (a key pasted in the wrong place stays out of messages).
pub fn parse_provider(text: &str) -> Result<Provider, Error> {
    Provider::parse(text).ok_or_else(|| {
        let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        Error::invalid(
            "unknown_provider",
            format!("the provider must be one of {}", known.join(", ")),
        )
    })
}

/// A provider key's scope as paths name it: `project` or `org`.
pub fn parse_scope(text: &str) -> Result<KeyOwnerKind, Error> {
    KeyOwnerKind::parse(text).ok_or_else(|| {
        Error::invalid(
            "invalid_scope",
            "the scope of a provider key is project or org",
        )
    })
}

/// The owner of a provider key: exactly one of a project and an org.
pub fn key_owner(
    project: Option<&str>,
    org: Option<&str>,
) -> Result<(KeyOwnerKind, String), Error> {
    match (project, org) {
        (Some(project), None) => Ok((KeyOwnerKind::Project, project.to_owned())),
        (None, Some(org)) => Ok((KeyOwnerKind::Org, org.to_owned())),
        _ => Err(Error::invalid(
            "invalid_owner",
            "give exactly one of project and org",
        )),
    }
}

/// A provider key as the store takes it: checked, encrypted under the KEK, its last 4 kept.
pub fn encrypted_row(
    kek: &Kek,
    (provider, owner, owner_id): (Provider, KeyOwnerKind, String),
    plaintext: &str,
    name: Option<String>,
) -> Result<ProviderKeyRow, Error> {
    check_provider_key(plaintext)?;
    Ok(ProviderKeyRow {
        ciphertext: kek.encrypt(provider, owner, &owner_id, plaintext)?,
        last4: last4(plaintext),
        provider,
        owner,
        owner_id,
        name,
        created_at: 0,
        rotated_at: None,
        last_used_at: None,
    })
}

/// A new fleet key pair: (private base64, public base64).
pub fn generate_fleet_key() -> Result<(Zeroizing<String>, String), Error> {
    let ikm = random_bytes::<32>()?;
    Ok(FleetPrivateKey::derive_pair(&ikm))
}

/// What `serve` and `snapshot build` need to put provider keys in a snapshot.
pub struct ProviderSealing {
    pub kek: Kek,
    /// The fleet's X25519 public key, base64.
    pub fleet_public_key: String,
}

impl ProviderSealing {
    pub fn load(kek_file: &Path, fleet_public_key_file: &Path) -> Result<ProviderSealing, Error> {
        let fleet_public_key = std::fs::read_to_string(fleet_public_key_file)
            .map_err(|error| {
                Error::invalid(
                    "unreadable_fleet_public_key",
                    format!("cannot read {}: {error}", fleet_public_key_file.display()),
                )
            })?
            .trim()
            .to_owned();
        Ok(ProviderSealing {
            kek: Kek::load(kek_file)?,
            fleet_public_key,
        })
    }
}

/// Puts the store's provider keys, sealed for the fleet, into `snapshot`. A store with provider
/// keys and no sealing configured is an error: a snapshot silently without them would make every
/// provider route refuse with `provider_key_missing` instead of saying what is wrong.
pub fn seal_into(
    store: &mut Store,
    snapshot: &mut Snapshot,
    sealing: Option<&ProviderSealing>,
) -> Result<(), Error> {
    let rows = store.provider_keys()?;
    if rows.is_empty() {
        return Ok(());
    }
    let Some(sealing) = sealing else {
        return Err(Error::invalid(
            "provider_sealing_not_configured",
            "the store holds provider keys: give --provider-kek-file and --fleet-public-key-file \
             so snapshots can carry them sealed",
        ));
    };
    let plaintexts = rows
        .iter()
        .map(|row| sealing.kek.decrypt(row))
        .collect::<Result<Vec<_>, _>>()?;
    let entries: Vec<(Provider, KeyOwnerKind, &str, &str)> = rows
        .iter()
        .zip(&plaintexts)
        .map(|(row, key)| (row.provider, row.owner, row.owner_id.as_str(), key.as_str()))
        .collect();
    let data_key = random_bytes::<32>()?;
    let record = seal_provider_keys(
        &sealing.fleet_public_key,
        snapshot.version,
        &data_key,
        &entries,
        &mut UnwrapErr(SysRng),
    )
    .map_err(|message| Error::invalid("invalid_fleet_public_key", message))?;
    snapshot.provider_keys = Some(record);
    Ok(())
}
