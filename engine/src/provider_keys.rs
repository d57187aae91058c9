//! Provider keys in the snapshot: sealed by the control plane, opened by the filter once per
//! snapshot version, looked up per request.
//!
//! The control plane draws a fresh 32-byte data key per snapshot, wraps it to the fleet's X25519
//! public key with HPKE (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM; the
//! snapshot version is the AAD) and seals each provider key under the data key with AES-256-GCM
//! (the AAD binds provider, owner and snapshot version, so a sealed key cannot be moved to
//! another project, provider or snapshot). Only a holder of the fleet's private key (delivered
//! to the data plane out of band, never in the snapshot or the plugin configuration) can open
//! them. Opened keys are kept in [`Zeroizing`] strings: the bytes are zeroed when the policy
//! holding them is dropped (replaced by a newer snapshot).

use core::fmt;
use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::field_error::FieldError;
use crate::provider::{HeaderStyle, KeyOwnerKind, Provider};

/// HPKE `info`: names what the wrapped secret is for.
const WRAP_INFO: &[u8] = b"keyward provider-keys data key v1";
const NONCE_BYTES: usize = 12;
const DATA_KEY_BYTES: usize = 32;
/// The environment variable the filter reads the fleet's private key from (base64 of 32 bytes).
pub const FLEET_PRIVATE_KEY_ENV: &str = "KEYWARD_FLEET_PRIVATE_KEY";

/// The sealed provider keys of one snapshot, as the snapshot JSON carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeysRecord {
    /// Base64 HPKE encapsulated key (the sender's ephemeral X25519 public key).
    pub encapsulated_key: String,
    /// Base64 HPKE ciphertext of the data key.
    pub wrapped_data_key: String,
    #[serde(default)]
    pub entries: Vec<SealedProviderKeyRecord>,
}

/// One provider key, sealed under the snapshot's data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedProviderKeyRecord {
    pub provider: Provider,
    pub owner: KeyOwnerKind,
    /// The project id or org id.
    pub owner_id: String,
    /// Base64 of the 12-byte nonce followed by the AES-256-GCM ciphertext and tag.
    pub sealed: String,
}

/// The additional data a provider key is sealed with.
fn entry_aad(version: u64, provider: Provider, owner: KeyOwnerKind, owner_id: &str) -> Vec<u8> {
    format!(
        "keyward provider key v1\0{version}\0{}\0{}\0{owner_id}",
        provider.as_str(),
        owner.as_str()
    )
    .into_bytes()
}

/// The fleet's X25519 private key: opens the data key of every snapshot.
pub struct FleetPrivateKey(<X25519HkdfSha256 as hpke::Kem>::PrivateKey);

impl fmt::Debug for FleetPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetPrivateKey(<redacted>)")
    }
}

impl FleetPrivateKey {
    /// From its base64 form (32 bytes), as `keyward secret fleet-key` writes it. The error never
    /// repeats the input.
    pub fn from_base64(text: &str) -> Result<FleetPrivateKey, &'static str> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| "the fleet private key is not base64")?,
        );
        if bytes.len() != 32 {
            return Err("the fleet private key is not 32 bytes");
        }
        <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&bytes)
            .map(FleetPrivateKey)
            .map_err(|_| "the fleet private key is not an X25519 key")
    }

    /// A key pair from 32 random bytes: (private, public), both base64.
    pub fn derive_pair(ikm: &[u8; 32]) -> (Zeroizing<String>, String) {
        let (private, public) = X25519HkdfSha256::derive_keypair(ikm);
        (
            Zeroizing::new(STANDARD.encode(private.to_bytes())),
            STANDARD.encode(public.to_bytes()),
        )
    }
}

/// Seals provider keys for one snapshot version (the control plane's side). `keys` are
/// (provider, owner kind, owner id, plaintext key); `data_key` must be fresh random bytes per
/// snapshot, and `rng` a CSPRNG (HPKE draws its ephemeral key from it).
pub fn seal_provider_keys(
    fleet_public_base64: &str,
    version: u64,
    data_key: &[u8; DATA_KEY_BYTES],
    keys: &[(Provider, KeyOwnerKind, &str, &str)],
    rng: &mut impl hpke::rand_core::CryptoRng,
) -> Result<ProviderKeysRecord, String> {
    let public_bytes = STANDARD
        .decode(fleet_public_base64.trim())
        .map_err(|_| "the fleet public key is not base64".to_owned())?;
    let public = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&public_bytes)
        .map_err(|_| "the fleet public key is not an X25519 public key".to_owned())?;
    let (encapsulated, wrapped) =
        hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &public,
            WRAP_INFO,
            data_key,
            &version.to_be_bytes(),
            rng,
        )
        .map_err(|error| format!("cannot wrap the data key: {error}"))?;
    let cipher =
        Aes256Gcm::new_from_slice(data_key).map_err(|_| "bad data key length".to_owned())?;
    let mut entries = Vec::with_capacity(keys.len());
    for (index, (provider, owner, owner_id, plaintext)) in keys.iter().enumerate() {
        // The data key is fresh per snapshot, so a counter is a unique nonce under it.
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[4..].copy_from_slice(&(index as u64).to_be_bytes());
        let aad = entry_aad(version, *provider, *owner, owner_id);
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| "cannot seal a provider key".to_owned())?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        entries.push(SealedProviderKeyRecord {
            provider: *provider,
            owner: *owner,
            owner_id: (*owner_id).to_owned(),
            sealed: STANDARD.encode(bytes),
        });
    }
    Ok(ProviderKeysRecord {
        encapsulated_key: STANDARD.encode(encapsulated.to_bytes()),
        wrapped_data_key: STANDARD.encode(wrapped),
        entries,
    })
}

/// A sealed entry, decoded and checked at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SealedEntry {
    provider: Provider,
    owner: KeyOwnerKind,
    owner_id: String,
    nonce: [u8; NONCE_BYTES],
    ciphertext: Vec<u8>,
}

/// The sealed form of a snapshot's provider keys, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedProviderKeys {
    version: u64,
    encapsulated_key: Vec<u8>,
    wrapped_data_key: Vec<u8>,
    entries: Vec<SealedEntry>,
}

impl SealedProviderKeys {
    /// Checks the record's encoding (not its cryptography: that needs the private key).
    pub fn compile(record: ProviderKeysRecord, version: u64) -> Result<Self, FieldError> {
        let decode = |field: &str, text: &str| {
            STANDARD
                .decode(text)
                .map_err(|_| FieldError::new(field, "not base64"))
        };
        let encapsulated_key = decode("encapsulated_key", &record.encapsulated_key)?;
        let wrapped_data_key = decode("wrapped_data_key", &record.wrapped_data_key)?;
        let mut entries = Vec::with_capacity(record.entries.len());
        for (position, entry) in record.entries.into_iter().enumerate() {
            let path = format!("entries[{position}]");
            let bytes = decode(&format!("{path}.sealed"), &entry.sealed)?;
            let Some((nonce, ciphertext)) = bytes.split_first_chunk::<NONCE_BYTES>() else {
                return Err(FieldError::new(format!("{path}.sealed"), "too short"));
            };
            let duplicate = entries.iter().any(|seen: &SealedEntry| {
                seen.provider == entry.provider
                    && seen.owner == entry.owner
                    && seen.owner_id == entry.owner_id
            });
            if duplicate {
                return Err(FieldError::new(
                    path,
                    format!(
                        "a second {} key for {} {:?}",
                        entry.provider,
                        entry.owner.as_str(),
                        entry.owner_id
                    ),
                ));
            }
            entries.push(SealedEntry {
                provider: entry.provider,
                owner: entry.owner,
                owner_id: entry.owner_id,
                nonce: *nonce,
                ciphertext: ciphertext.to_vec(),
            });
        }
        Ok(SealedProviderKeys {
            version,
            encapsulated_key,
            wrapped_data_key,
            entries,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Unwraps the data key and opens every entry. Errors name the cause, never a secret.
    pub fn open(&self, fleet: &FleetPrivateKey) -> Result<ProviderKeyring, &'static str> {
        let encapsulated =
            <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&self.encapsulated_key)
                .map_err(|_| "the snapshot's encapsulated key is malformed")?;
        let data_key = Zeroizing::new(
            hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
                &OpModeR::Base,
                &fleet.0,
                &encapsulated,
                WRAP_INFO,
                &self.wrapped_data_key,
                &self.version.to_be_bytes(),
            )
            .map_err(|_| "the data key does not open with this fleet private key")?,
        );
        let cipher = Aes256Gcm::new_from_slice(&data_key)
            .map_err(|_| "the snapshot's data key has the wrong length")?;
        let mut keys: HashMap<(Provider, KeyOwnerKind), HashMap<String, OpenedKey>> =
            HashMap::new();
        for entry in &self.entries {
            let aad = entry_aad(self.version, entry.provider, entry.owner, &entry.owner_id);
            let plaintext = Zeroizing::new(
                cipher
                    .decrypt(
                        &Nonce::from(entry.nonce),
                        Payload {
                            msg: &entry.ciphertext,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| "a provider key does not open under the snapshot's data key")?,
            );
            let text =
                core::str::from_utf8(&plaintext).map_err(|_| "a provider key is not UTF-8")?;
            if text.is_empty() || text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err("a provider key is empty or holds spaces or control characters");
            }
            keys.entry((entry.provider, entry.owner))
                .or_default()
                .insert(
                    entry.owner_id.clone(),
                    OpenedKey {
                        raw: Zeroizing::new(text.to_owned()),
                        bearer: Zeroizing::new(format!("Bearer {text}")),
                    },
                );
        }
        Ok(ProviderKeyring {
            keys,
            count: self.entries.len(),
        })
    }
}

/// One opened provider key, with its `Bearer ` form made once (no per-request allocation).
#[derive(Clone, PartialEq, Eq)]
struct OpenedKey {
    raw: Zeroizing<String>,
    bearer: Zeroizing<String>,
}

/// The opened provider keys of one snapshot. Never printed: its `Debug` shows only the count.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ProviderKeyring {
    /// By provider and owner kind, then owner id: a lookup borrows the id, allocates nothing.
    keys: HashMap<(Provider, KeyOwnerKind), HashMap<String, OpenedKey>>,
    count: usize,
}

impl fmt::Debug for ProviderKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderKeyring({} keys, <redacted>)", self.count)
    }
}

impl ProviderKeyring {
    /// The header value for `provider` in `style`: the project's key, else its org's.
    pub fn header_value(
        &self,
        provider: Provider,
        style: HeaderStyle,
        project: Option<&str>,
        org: &str,
    ) -> Option<(&str, KeyOwnerKind)> {
        let find = |owner: KeyOwnerKind, id: &str| {
            self.keys
                .get(&(provider, owner))
                .and_then(|by_id| by_id.get(id))
                .map(|key| {
                    let value = match style {
                        HeaderStyle::Bearer => key.bearer.as_str(),
                        _ => key.raw.as_str(),
                    };
                    (value, owner)
                })
        };
        project
            .and_then(|project| find(KeyOwnerKind::Project, project))
            .or_else(|| {
                (!org.is_empty())
                    .then(|| find(KeyOwnerKind::Org, org))
                    .flatten()
            })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Where a policy's provider keys stand.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProviderKeys {
    /// The snapshot carries none.
    #[default]
    None,
    /// Carried, not opened yet (the host opens them once, with the fleet's private key).
    Sealed(SealedProviderKeys),
    Open(ProviderKeyring),
    /// Carried but not openable here: requests on provider routes fail closed.
    Unavailable(&'static str),
}

impl ProviderKeys {
    /// Opens sealed keys with `fleet` (absent: this data plane was given no private key).
    /// Returns the log line to write, if any: what was opened, or why nothing was.
    pub fn open(&mut self, fleet: Option<&FleetPrivateKey>) -> Option<String> {
        let ProviderKeys::Sealed(sealed) = self else {
            return None;
        };
        let (next, line) = match fleet.map(|fleet| sealed.open(fleet)) {
            None => (
                ProviderKeys::Unavailable("no fleet private key on this data plane"),
                format!(
                    "keyward: the policy carries {} provider keys but {FLEET_PRIVATE_KEY_ENV} is not set; requests on provider routes are refused",
                    sealed.len()
                ),
            ),
            Some(Err(reason)) => (
                ProviderKeys::Unavailable(reason),
                format!(
                    "keyward: cannot open the policy's provider keys ({reason}); requests on provider routes are refused"
                ),
            ),
            Some(Ok(keyring)) => {
                let line = format!("keyward: opened {} provider keys", keyring.len());
                (ProviderKeys::Open(keyring), line)
            }
        };
        *self = next;
        Some(line)
    }
}

#[cfg(test)]
#[cfg(not(target_arch = "wasm32"))]
mod tests {
    use super::*;
    use getrandom::rand_core::UnwrapErr;
    use getrandom::SysRng;

    fn fleet() -> (FleetPrivateKey, String) {
        let (private, public) = FleetPrivateKey::derive_pair(&[7u8; 32]);
        (
            FleetPrivateKey::from_base64(&private).expect("valid"),
            public,
        )
    }

    fn sealed(public: &str, version: u64) -> ProviderKeysRecord {
        seal_provider_keys(
            public,
            version,
            &[9u8; 32],
            &[
                (Provider::Openai, KeyOwnerKind::Project, "p1", "sk-proj-one"),
                (Provider::Openai, KeyOwnerKind::Org, "acme", "sk-org-acme"),
                (Provider::Anthropic, KeyOwnerKind::Org, "acme", "sk-ant-x"),
            ],
            &mut UnwrapErr(SysRng),
        )
        .expect("seals")
    }

    #[test]
    fn sealed_keys_open_and_fall_back_to_the_org() {
        let (private, public) = fleet();
        let record = sealed(&public, 5);
        let text = serde_json::to_string(&record).expect("json");
        assert!(!text.contains("sk-proj-one") && !text.contains("sk-org-acme"));
        let keys = SealedProviderKeys::compile(record, 5).expect("compiles");
        let keyring = keys.open(&private).expect("opens");
        assert_eq!(
            keyring.header_value(Provider::Openai, HeaderStyle::Bearer, Some("p1"), "acme"),
            Some(("Bearer sk-proj-one", KeyOwnerKind::Project))
        );
        assert_eq!(
            keyring.header_value(Provider::Openai, HeaderStyle::Bearer, Some("p2"), "acme"),
            Some(("Bearer sk-org-acme", KeyOwnerKind::Org))
        );
        assert_eq!(
            keyring.header_value(
                Provider::Anthropic,
                HeaderStyle::XApiKey,
                Some("p1"),
                "acme"
            ),
            Some(("sk-ant-x", KeyOwnerKind::Org))
        );
        assert_eq!(
            keyring.header_value(
                Provider::Google,
                HeaderStyle::XGoogApiKey,
                Some("p1"),
                "acme"
            ),
            None
        );
        assert_eq!(
            keyring.header_value(Provider::Openai, HeaderStyle::Bearer, Some("p2"), "other"),
            None
        );
        assert!(!format!("{keyring:?}").contains("sk-"));
    }

    #[test]
    fn a_wrong_key_or_version_or_moved_entry_does_not_open() {
        let (_, public) = fleet();
        let (other, _) = FleetPrivateKey::derive_pair(&[8u8; 32]);
        let other = FleetPrivateKey::from_base64(&other).expect("valid");
        let keys = SealedProviderKeys::compile(sealed(&public, 5), 5).expect("compiles");
        assert!(keys.open(&other).is_err());
        let (private, _) = fleet();
        // Replayed under another snapshot version: the wrap's AAD differs.
        let replayed = SealedProviderKeys::compile(sealed(&public, 5), 6).expect("compiles");
        assert!(replayed.open(&private).is_err());
        // An entry moved to another project: its AAD differs.
        let mut record = sealed(&public, 5);
        record.entries[0].owner_id = "p9".to_owned();
        let moved = SealedProviderKeys::compile(record, 5).expect("compiles");
        assert_eq!(
            moved.open(&private).err(),
            Some("a provider key does not open under the snapshot's data key")
        );
    }

    #[test]
    fn state_without_a_private_key_is_unavailable_and_logged_without_secrets() {
        let (_, public) = fleet();
        let mut state =
            ProviderKeys::Sealed(SealedProviderKeys::compile(sealed(&public, 5), 5).expect("ok"));
        let line = state.open(None).expect("a log line");
        assert!(line.contains(FLEET_PRIVATE_KEY_ENV));
        assert!(matches!(state, ProviderKeys::Unavailable(_)));
        assert!(state.open(None).is_none(), "opened once per snapshot");
    }

    #[test]
    fn malformed_records_and_private_keys_are_refused() {
        let (_, public) = fleet();
        let mut record = sealed(&public, 5);
        record.entries.push(record.entries[0].clone());
        assert!(SealedProviderKeys::compile(record, 5)
            .expect_err("duplicate")
            .to_string()
            .contains("a second openai key"));
        let mut record = sealed(&public, 5);
        record.entries[0].sealed = "AAAA".to_owned();
        assert!(SealedProviderKeys::compile(record, 5).is_err());
        assert!(FleetPrivateKey::from_base64("not base64!").is_err());
        assert!(FleetPrivateKey::from_base64("AAAA").is_err());
    }
}
