//! Chunked snapshots: how a policy of up to millions of keys travels from the control plane to
//! the filter (DESIGN §5, docs/scale.md).
//!
//! A signed manifest carries everything but the keys (version, times, projects, prices) plus the
//! SHA-256 and size of every chunk; each chunk is newline-delimited JSON, one key record a line.
//! Only the manifest is signed (Ed25519, see [`crate::signature`]): a chunk is trusted because
//! its hash is in the signed manifest. Like a signed snapshot, a manifest must carry
//! `expires_at` and is refused past it.
//!
//! `{"format": "keyward.signed-manifest.v2", "key_id": "ops-1", "signature": "<hex>", "manifest": {...}}`
//!
//! Chunks are content-addressed (their name is their SHA-256), and the control plane assigns a
//! key to a chunk by a hash of its id, so a new version re-sends only the chunks whose keys
//! changed: a poller fetches just the chunks it does not hold yet (the "delta").

use core::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::budget::PlanRecord;
use crate::field_error::{from_json, FieldError};
use crate::hash::{parse_hex_digest, Sha256Digest};
use crate::provider_keys::ProviderKeysRecord;
use crate::signature::{PublicKey, SigningKey};
use crate::signed_snapshot::{
    check_expiry, sign_document, verified_payload, DocumentKind, PayloadField, SnapshotRejected,
};
use crate::snapshot::{KeyRecord, Policy, PolicyBuilder, PriceCatalog, PriceRecord, ProjectRecord};
use crate::sync::SnapshotStamp;

pub const MANIFEST_FORMAT: &str = "keyward.signed-manifest.v2";
/// The format of manifests signed with a shared (HMAC) key: refused.
pub const SYMMETRIC_MANIFEST_FORMAT: &str = "keyward.signed-manifest.v1";

const MANIFEST_DOCUMENT: DocumentKind = DocumentKind {
    format: MANIFEST_FORMAT,
    symmetric_format: SYMMETRIC_MANIFEST_FORMAT,
    field: PayloadField::Manifest,
};
/// Keys per chunk the control plane aims at (about 1 MB of JSON with typical records).
pub const TARGET_KEYS_PER_CHUNK: usize = 8192;
/// A chunk larger than this is refused (Envoy's async HTTP client buffers the whole answer).
pub const MAX_CHUNK_BYTES: u64 = 8 * 1024 * 1024;
/// At most this many chunks per snapshot (about 30M keys at the target size).
pub const MAX_CHUNKS: usize = 4096;
/// Prefix of the shared-data entry holding a chunk: `keyward/chunk/<sha256 hex>`.
pub const CHUNK_ENTRY_PREFIX: &str = "keyward/chunk/";

/// One chunk as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// Hex SHA-256 of the chunk's exact bytes; also its name.
    pub sha256: String,
    /// Key records in the chunk.
    pub keys: u64,
    /// Length of the chunk in bytes.
    pub bytes: u64,
}

impl ChunkRef {
    /// The shared-data entry that holds this chunk.
    pub fn entry(&self) -> String {
        format!("{CHUNK_ENTRY_PREFIX}{}", self.sha256)
    }

    /// Whether `bytes` are exactly this chunk.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.bytes && hex::encode(Sha256::digest(bytes)) == self.sha256
    }
}

/// The signed part of a chunked snapshot: the snapshot without its keys, plus the chunk list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u64,
    pub issued_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub projects: Vec<ProjectRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceRecord>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::budget_json::read_price_catalog"
    )]
    pub price_catalog: Option<PriceCatalog>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::budget_json::read_plans"
    )]
    pub plans: Vec<PlanRecord>,
    /// Provider keys, sealed (see `provider_keys`): they travel in the signed manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_keys: Option<ProviderKeysRecord>,
    /// Total number of keys over all chunks.
    pub keys: u64,
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    pub fn stamp(&self) -> SnapshotStamp {
        SnapshotStamp {
            version: self.version,
            issued_at: self.issued_at,
        }
    }

    /// Checks what can be checked without the keys: the header, projects and prices compile,
    /// and the chunk list is consistent.
    fn validate(&self) -> Result<(), FieldError> {
        self.builder().map(|_| ())?;
        if self.chunks.len() > MAX_CHUNKS {
            return Err(FieldError::new(
                "chunks",
                format!("at most {MAX_CHUNKS} chunks"),
            ));
        }
        let mut total = 0u64;
        let mut seen = std::collections::HashSet::with_capacity(self.chunks.len());
        for (position, chunk) in self.chunks.iter().enumerate() {
            let path = format!("chunks[{position}]");
            if parse_hex_digest(&chunk.sha256).is_none()
                || chunk.sha256.bytes().any(|b| b.is_ascii_uppercase())
            {
                return Err(FieldError::new(
                    format!("{path}.sha256"),
                    "must be 64 lower-case hex characters",
                ));
            }
            if !seen.insert(chunk.sha256.as_str()) {
                return Err(FieldError::new(format!("{path}.sha256"), "duplicate chunk"));
            }
            if chunk.bytes == 0 || chunk.bytes > MAX_CHUNK_BYTES || chunk.keys == 0 {
                return Err(FieldError::new(
                    format!("{path}.bytes"),
                    format!("a chunk holds 1 to {MAX_CHUNK_BYTES} bytes and at least one key"),
                ));
            }
            total = total.saturating_add(chunk.keys);
        }
        if total != self.keys {
            return Err(FieldError::new(
                "keys",
                "must be the sum of the chunks' keys",
            ));
        }
        Ok(())
    }

    /// A policy builder for this manifest's header, projects and prices.
    pub fn builder(&self) -> Result<PolicyBuilder, FieldError> {
        let mut builder = PolicyBuilder::new_with_plans(
            self.version,
            self.issued_at,
            self.expires_at,
            self.projects.clone(),
            self.prices.clone(),
            self.plans.clone(),
        )?;
        if let Some(record) = &self.provider_keys {
            builder.set_provider_keys(record.clone())?;
        }
        Ok(builder)
    }
}

/// Wraps a manifest document (its exact bytes) in a signed envelope.
pub fn sign_manifest(manifest_json: &str, key: &SigningKey) -> Result<String, SnapshotRejected> {
    sign_document(&MANIFEST_DOCUMENT, manifest_json, key)
}

/// Checks the manifest envelope's signature, then parses and validates the manifest, and
/// refuses it without `expires_at` or past it at `now`. Nothing in the manifest is read before
/// the signature verifies.
pub fn verify_manifest(
    envelope: &[u8],
    keys: &[PublicKey],
    now: u64,
) -> Result<Manifest, SnapshotRejected> {
    let body = verified_payload(envelope, &MANIFEST_DOCUMENT, keys)?;
    let manifest: Manifest = from_json(body).map_err(SnapshotRejected::InvalidSnapshot)?;
    check_expiry(manifest.expires_at, now)?;
    manifest
        .validate()
        .map_err(SnapshotRejected::InvalidSnapshot)?;
    Ok(manifest)
}

/// A chunk's bytes: one key record per line (JSON), each line ending in `\n`.
pub fn encode_chunk(records: &[KeyRecord]) -> Result<String, serde_json::Error> {
    let mut out = String::with_capacity(records.len() * 128);
    for record in records {
        out.push_str(&serde_json::to_string(record)?);
        out.push('\n');
    }
    Ok(out)
}

/// Which chunk a key id belongs to among `chunk_count` (a power of two): a hash of the id, so
/// a key stays in its chunk from one version to the next and a change re-sends one chunk.
pub fn chunk_of(key_id: &str, chunk_count: usize) -> usize {
    let hash = Sha256::digest(key_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(hash.get(..8).unwrap_or(&[0; 8]));
    let value = u64::from_le_bytes(first);
    value.checked_rem(chunk_count as u64).unwrap_or(0) as usize
}

/// How many chunks a snapshot of `keys` keys is split into: a power of two, so the assignment
/// of keys stays put until the key count doubles or halves.
pub fn chunk_count_for(keys: usize, keys_per_chunk: usize) -> usize {
    keys.div_ceil(keys_per_chunk.max(1))
        .max(1)
        .next_power_of_two()
        .min(MAX_CHUNKS)
}

/// A snapshot split for serving: the manifest (unsigned yet) and the chunks' bytes, in
/// manifest order. Empty chunks are left out.
pub struct SplitSnapshot {
    pub manifest: Manifest,
    pub chunks: Vec<String>,
}

/// Splits a snapshot's keys into chunks by key id (records keep their order within a chunk).
pub fn split_snapshot(
    snapshot: crate::snapshot::Snapshot,
    keys_per_chunk: usize,
) -> Result<SplitSnapshot, serde_json::Error> {
    let count = chunk_count_for(snapshot.keys.len(), keys_per_chunk);
    let mut buckets: Vec<Vec<KeyRecord>> = (0..count).map(|_| Vec::new()).collect();
    let total = snapshot.keys.len() as u64;
    for record in snapshot.keys {
        let bucket = chunk_of(&record.id, count);
        if let Some(slot) = buckets.get_mut(bucket) {
            slot.push(record);
        }
    }
    let mut refs = Vec::with_capacity(count);
    let mut chunks = Vec::with_capacity(count);
    for bucket in buckets.into_iter().filter(|bucket| !bucket.is_empty()) {
        let text = encode_chunk(&bucket)?;
        refs.push(ChunkRef {
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            keys: bucket.len() as u64,
            bytes: text.len() as u64,
        });
        chunks.push(text);
    }
    Ok(SplitSnapshot {
        manifest: Manifest {
            version: snapshot.version,
            issued_at: snapshot.issued_at,
            expires_at: snapshot.expires_at,
            projects: snapshot.projects,
            prices: snapshot.prices,
            price_catalog: snapshot.price_catalog,
            plans: snapshot.plans,
            provider_keys: snapshot.provider_keys,
            keys: total,
            chunks: refs,
        },
        chunks,
    })
}

/// Why a chunked build stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// The bytes given are not the chunk the manifest names (not written yet, or replaced by a
    /// newer publication): get them again, or start over from the newest stamp.
    ChunkMismatch,
    /// The verified content does not compile: the whole snapshot is unusable.
    Invalid(FieldError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ChunkMismatch => write!(f, "a chunk does not match its manifest hash"),
            BuildError::Invalid(error) => write!(f, "invalid snapshot: {error}"),
        }
    }
}

/// Where the build is inside the current chunk.
#[derive(Debug)]
enum Phase {
    /// Hashing the chunk's bytes up to `offset`.
    Hashing { hasher: Sha256, offset: usize },
    /// The hash verified; records parsed up to byte `offset`, `parsed` of them.
    Parsing { offset: usize, parsed: u64 },
}

/// Bytes hashed between two looks at the clock.
const HASH_SLICE: usize = 64 * 1024;
/// Records parsed between two looks at the clock.
const PARSE_SLICE: usize = 256;

/// Compiles a chunked snapshot a slice at a time: each chunk is hashed (and checked against
/// the signed manifest) before any of it is parsed; the policy exists only once every chunk
/// verified and compiled, so nothing ever decides with part of a snapshot.
#[derive(Debug)]
pub struct ChunkedBuild {
    chunks: Vec<(ChunkRef, Sha256Digest)>,
    builder: PolicyBuilder,
    next: usize,
    phase: Phase,
    stamp: SnapshotStamp,
}

impl ChunkedBuild {
    pub fn new(manifest: &Manifest) -> Result<ChunkedBuild, FieldError> {
        let mut builder = manifest.builder()?;
        builder.reserve(usize::try_from(manifest.keys).unwrap_or(0).min(1 << 26));
        let mut chunks = Vec::with_capacity(manifest.chunks.len());
        for (position, chunk) in manifest.chunks.iter().enumerate() {
            let digest = parse_hex_digest(&chunk.sha256).ok_or_else(|| {
                FieldError::new(
                    format!("chunks[{position}].sha256"),
                    "must be 64 hex characters",
                )
            })?;
            chunks.push((chunk.clone(), digest));
        }
        Ok(ChunkedBuild {
            chunks,
            builder,
            next: 0,
            phase: Phase::Hashing {
                hasher: Sha256::new(),
                offset: 0,
            },
            stamp: manifest.stamp(),
        })
    }

    pub fn stamp(&self) -> SnapshotStamp {
        self.stamp
    }

    /// The chunk the build needs next; `None` once every chunk is in.
    pub fn next_chunk(&self) -> Option<&ChunkRef> {
        self.chunks.get(self.next).map(|(chunk, _)| chunk)
    }

    /// How many chunks are done, of how many.
    pub fn progress(&self) -> (usize, usize) {
        (self.next, self.chunks.len())
    }

    /// Works on `bytes`, which must be the chunk [`Self::next_chunk`] names, until the chunk is
    /// done (`Ok(true)`: move on to the next one) or `out_of_time` says stop (`Ok(false)`: call
    /// again with the same bytes). A mismatch restarts this chunk.
    pub fn work(
        &mut self,
        bytes: &[u8],
        mut out_of_time: impl FnMut() -> bool,
    ) -> Result<bool, BuildError> {
        let Some((chunk, digest)) = self.chunks.get(self.next) else {
            return Ok(true);
        };
        if bytes.len() as u64 != chunk.bytes {
            self.restart_chunk();
            return Err(BuildError::ChunkMismatch);
        }
        loop {
            match &mut self.phase {
                Phase::Hashing { hasher, offset } => {
                    let end = offset.saturating_add(HASH_SLICE).min(bytes.len());
                    hasher.update(bytes.get(*offset..end).unwrap_or_default());
                    *offset = end;
                    if end == bytes.len() {
                        let hasher = core::mem::take(hasher);
                        if hasher.finalize().as_slice() != digest.as_slice() {
                            self.restart_chunk();
                            return Err(BuildError::ChunkMismatch);
                        }
                        self.phase = Phase::Parsing {
                            offset: 0,
                            parsed: 0,
                        };
                    }
                }
                Phase::Parsing { offset, parsed } => {
                    let rest = bytes.get(*offset..).unwrap_or_default();
                    let mut stream =
                        serde_json::Deserializer::from_slice(rest).into_iter::<KeyRecord>();
                    let mut done = false;
                    for _ in 0..PARSE_SLICE {
                        match stream.next() {
                            None => {
                                done = true;
                                break;
                            }
                            Some(Ok(record)) => {
                                *parsed += 1;
                                self.builder.add_key(record).map_err(BuildError::Invalid)?;
                            }
                            Some(Err(error)) => {
                                let position = self.builder.key_count();
                                return Err(BuildError::Invalid(FieldError::new(
                                    format!("keys[{position}]"),
                                    error.to_string(),
                                )));
                            }
                        }
                    }
                    *offset += stream.byte_offset();
                    if done {
                        if *parsed != chunk.keys {
                            return Err(BuildError::Invalid(FieldError::new(
                                format!("chunks[{}].keys", self.next),
                                format!(
                                    "the chunk holds {parsed} keys, the manifest says {}",
                                    chunk.keys
                                ),
                            )));
                        }
                        self.next += 1;
                        self.phase = Phase::Hashing {
                            hasher: Sha256::new(),
                            offset: 0,
                        };
                        return Ok(true);
                    }
                }
            }
            if out_of_time() {
                return Ok(false);
            }
        }
    }

    fn restart_chunk(&mut self) {
        // Hashing is the only phase a mismatch can happen in: nothing of this chunk was added.
        self.phase = Phase::Hashing {
            hasher: Sha256::new(),
            offset: 0,
        };
    }

    /// The compiled policy, once every chunk is in.
    pub fn finish(self) -> Option<Policy> {
        (self.next == self.chunks.len()).then(|| self.builder.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;
    use crate::snapshot::{KeyStatus, Snapshot};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::signature::tests::test_key;

    const NOW: u64 = 150;

    fn key() -> SigningKey {
        test_key("k1")
    }

    fn public() -> PublicKey {
        key().public_key()
    }

    fn record(i: usize) -> KeyRecord {
        KeyRecord {
            id: format!("k{i:06}"),
            secret_sha256: Some(hex::encode(sha256(format!("s{i}").as_bytes()))),
            key_sha256: None,
            project: Some("p".into()),
            org: None,
            status: KeyStatus::Active,
            environment: "live".into(),
            scopes: vec![],
            models: None,
            expires_at: None,
            spend_cap_microusd: None,
            spent_microusd: 0,
            label: None,
            spend_soft_cap_microusd: None,
            rate_limits: None,
            created_at: None,
            last_used_at: None,
            limits: None,
        }
    }

    fn snapshot(keys: usize) -> Snapshot {
        Snapshot {
            version: 4,
            issued_at: 100,
            expires_at: Some(200),
            projects: vec![ProjectRecord {
                id: "p".into(),
                org: "o".into(),
                status: crate::snapshot::ProjectStatus::Active,
                spend_cap_microusd: None,
                spent_microusd: 0,
                spend_soft_cap_microusd: None,
                limits: None,
            }],
            keys: (0..keys).map(record).collect(),
            prices: vec![],
            price_catalog: None,
            plans: vec![],
            provider_keys: None,
        }
    }

    fn build(split: &SplitSnapshot, mut budget: usize) -> Result<Policy, BuildError> {
        let mut build = ChunkedBuild::new(&split.manifest).map_err(BuildError::Invalid)?;
        let mut rounds = 0;
        while let Some(chunk) = build.next_chunk() {
            let position = split
                .manifest
                .chunks
                .iter()
                .position(|c| c == chunk)
                .expect("listed");
            let bytes = split.chunks[position].as_bytes();
            rounds += 1;
            build.work(bytes, || {
                budget = budget.saturating_sub(1);
                budget % 3 == 0
            })?;
            assert!(rounds < 10_000);
        }
        Ok(build.finish().expect("complete"))
    }

    #[test]
    fn split_manifest_signs_verifies_and_builds_the_same_policy() {
        let split = split_snapshot(snapshot(3000), 500).expect("split");
        assert_eq!(split.manifest.chunks.len(), 8);
        let json = serde_json::to_string(&split.manifest).expect("json");
        let envelope = sign_manifest(&json, &key()).expect("signed");
        let manifest = verify_manifest(envelope.as_bytes(), &[public()], NOW).expect("verifies");
        assert_eq!(manifest, split.manifest);
        let policy = build(&split, 1000).expect("builds");
        assert_eq!(policy.keys().len(), 3000);
        assert_eq!(policy.version, 4);
        for i in [0, 1234, 2999] {
            let key = policy.key_by_id(&format!("k{i:06}")).expect("found");
            assert_eq!(policy.key_at(key.position), Some(key));
        }
        // Keys stay in their chunk: one changed key changes one chunk.
        let mut changed = snapshot(3000);
        changed.keys[17].status = KeyStatus::Revoked;
        let again = split_snapshot(changed, 500).expect("split");
        let differing = again
            .manifest
            .chunks
            .iter()
            .filter(|c| !split.manifest.chunks.contains(c))
            .count();
        assert_eq!(differing, 1);
    }

    #[test]
    fn tampered_manifest_and_chunks_are_refused() {
        let split = split_snapshot(snapshot(100), 50).expect("split");
        let json = serde_json::to_string(&split.manifest).expect("json");
        let envelope = sign_manifest(&json, &key()).expect("signed");
        let tampered = envelope.replace("\"version\":4", "\"version\":5");
        assert_eq!(
            verify_manifest(tampered.as_bytes(), &[public()], NOW),
            Err(SnapshotRejected::BadSignature)
        );
        let mut bad = SplitSnapshot {
            manifest: split.manifest.clone(),
            chunks: split.chunks.clone(),
        };
        bad.chunks[0] = bad.chunks[0].replacen("active", "paused", 1);
        assert_eq!(build(&bad, 10).err(), Some(BuildError::ChunkMismatch));
        assert!(split.manifest.chunks[0].matches(split.chunks[0].as_bytes()));
        assert!(!split.manifest.chunks[0].matches(bad.chunks[0].as_bytes()));
    }

    #[test]
    fn expired_unexpiring_and_symmetric_manifests_are_refused() {
        let split = split_snapshot(snapshot(10), 50).expect("split");
        let json = serde_json::to_string(&split.manifest).expect("json");
        let envelope = sign_manifest(&json, &key()).expect("signed");
        assert_eq!(
            verify_manifest(envelope.as_bytes(), &[public()], 200),
            Err(SnapshotRejected::Expired {
                expires_at: 200,
                now: 200
            })
        );
        let symmetric = envelope.replace(MANIFEST_FORMAT, SYMMETRIC_MANIFEST_FORMAT);
        assert_eq!(
            verify_manifest(symmetric.as_bytes(), &[public()], NOW),
            Err(SnapshotRejected::SymmetricSignature)
        );
        // A snapshot envelope's signature does not make a manifest (and back).
        let as_snapshot =
            envelope.replace(MANIFEST_FORMAT, crate::signed_snapshot::ENVELOPE_FORMAT);
        assert!(
            crate::signed_snapshot::verify_snapshot(as_snapshot.as_bytes(), &[public()], NOW)
                .is_err()
        );
        let mut forever = split.manifest.clone();
        forever.expires_at = None;
        let envelope =
            sign_manifest(&serde_json::to_string(&forever).expect("json"), &key()).expect("s");
        assert!(matches!(
            verify_manifest(envelope.as_bytes(), &[public()], NOW),
            Err(SnapshotRejected::InvalidSnapshot(error)) if error.path == "expires_at"
        ));
    }

    #[test]
    fn inconsistent_manifests_are_invalid() {
        let split = split_snapshot(snapshot(10), 50).expect("split");
        let mut manifest = split.manifest.clone();
        manifest.keys = 11;
        let envelope =
            sign_manifest(&serde_json::to_string(&manifest).expect("json"), &key()).expect("s");
        assert!(matches!(
            verify_manifest(envelope.as_bytes(), &[public()], NOW),
            Err(SnapshotRejected::InvalidSnapshot(_))
        ));
        let mut manifest = split.manifest.clone();
        manifest.chunks.push(manifest.chunks[0].clone());
        manifest.keys *= 2;
        let envelope =
            sign_manifest(&serde_json::to_string(&manifest).expect("json"), &key()).expect("s");
        assert!(matches!(
            verify_manifest(envelope.as_bytes(), &[public()], NOW),
            Err(SnapshotRejected::InvalidSnapshot(_))
        ));
    }

    #[test]
    fn a_signed_chunk_with_a_bad_key_fails_the_whole_build() {
        let mut snap = snapshot(10);
        snap.keys[3].project = Some("nope".into());
        let split = split_snapshot(snap, 50).expect("split");
        assert!(matches!(build(&split, 5), Err(BuildError::Invalid(_))));
        let mut snap = snapshot(10);
        snap.keys[3].id = "k000004".into();
        let split = split_snapshot(snap, 50).expect("split");
        assert!(matches!(build(&split, 5), Err(BuildError::Invalid(_))));
    }

    #[test]
    fn chunk_counts_are_powers_of_two() {
        assert_eq!(chunk_count_for(0, 8192), 1);
        assert_eq!(chunk_count_for(8192, 8192), 1);
        assert_eq!(chunk_count_for(8193, 8192), 2);
        assert_eq!(chunk_count_for(1_000_000, 8192), 128);
    }
}
