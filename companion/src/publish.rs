//! Signed snapshots built from the store: what `keyward snapshot build` writes and what
//! `GET /v1/snapshot` serves.

use std::collections::HashMap;

use keyward_engine::chunked::{sign_manifest, split_snapshot, TARGET_KEYS_PER_CHUNK};
use keyward_engine::signature::SigningKey;
use keyward_engine::signed_snapshot::sign_snapshot;

use crate::error::Error;
use crate::provider_secrets::seal_into;
use crate::store::Store;

/// A signed envelope and what it holds.
#[derive(Debug, Clone)]
pub struct SignedSnapshot {
    pub version: u64,
    pub issued_at: u64,
    pub keys: usize,
    pub projects: usize,
    /// `{"format":"keyward.signed-snapshot.v1","key_id":..,"signature":..,"snapshot":{..}}`
    pub envelope: String,
}

impl SignedSnapshot {
    /// The HTTP entity tag: version and issue time identify the bytes.
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.version, self.issued_at)
    }
}

/// How long a signed snapshot is valid by default: filters refuse it afterwards, so a captured
/// snapshot cannot be replayed for longer. `keyward serve` re-issues long before.
pub const DEFAULT_SNAPSHOT_TTL: &str = "24h";

/// The policy at `now`, valid for `ttl_seconds`: a signed snapshot always expires.
fn expiring_snapshot(
    store: &mut Store,
    now: u64,
    ttl_seconds: u64,
) -> Result<keyward_engine::snapshot::Snapshot, Error> {
    store.revoke_rotated_keys(now)?;
    let mut snapshot = store.snapshot(now)?;
    snapshot.expires_at = Some(now.saturating_add(ttl_seconds.max(1)));
    let sealing = store.provider_sealing();
    seal_into(store, &mut snapshot, sealing.as_deref())?;
    Ok(snapshot)
}

/// Records revocations whose rotation grace has ended (a change of its own, by `system`), then
/// reads the whole policy in one transaction and signs it. `version` is the store's
/// `policy_version`, `issued_at` is `now`, `expires_at` is `ttl_seconds` later.
pub fn build_signed(
    store: &mut Store,
    key: &SigningKey,
    now: u64,
    ttl_seconds: u64,
) -> Result<SignedSnapshot, Error> {
    let snapshot = expiring_snapshot(store, now, ttl_seconds)?;
    let json = serde_json::to_string(&snapshot)?;
    let envelope = sign_snapshot(&json, key)
        .map_err(|error| Error::internal(format!("cannot sign the snapshot: {error}")))?;
    Ok(SignedSnapshot {
        version: snapshot.version,
        issued_at: snapshot.issued_at,
        keys: snapshot.keys.len(),
        projects: snapshot.projects.len(),
        envelope,
    })
}

/// A snapshot in the chunked layout: a signed manifest and its chunks by SHA-256 (hex).
#[derive(Debug, Clone)]
pub struct ChunkedSnapshot {
    pub version: u64,
    pub issued_at: u64,
    /// `{"format":"keyward.signed-manifest.v1","key_id":..,"signature":..,"manifest":{..}}`
    pub manifest: String,
    pub chunks: HashMap<String, String>,
}

impl ChunkedSnapshot {
    pub fn etag(&self) -> String {
        format!("\"m{}-{}\"", self.version, self.issued_at)
    }
}

/// Like [`build_signed`], split for `GET /v1/snapshot/manifest` and `/v1/snapshot/chunks/…`:
/// keys go to chunks by a hash of their id, so a change re-sends only the chunks it touches.
pub fn build_chunked(
    store: &mut Store,
    key: &SigningKey,
    now: u64,
    ttl_seconds: u64,
    keys_per_chunk: Option<usize>,
) -> Result<ChunkedSnapshot, Error> {
    let snapshot = expiring_snapshot(store, now, ttl_seconds)?;
    let (version, issued_at) = (snapshot.version, snapshot.issued_at);
    let split = split_snapshot(snapshot, keys_per_chunk.unwrap_or(TARGET_KEYS_PER_CHUNK))?;
    let json = serde_json::to_string(&split.manifest)?;
    let manifest = sign_manifest(&json, key)
        .map_err(|error| Error::internal(format!("cannot sign the manifest: {error}")))?;
    let chunks = split
        .manifest
        .chunks
        .iter()
        .map(|chunk| chunk.sha256.clone())
        .zip(split.chunks)
        .collect();
    Ok(ChunkedSnapshot {
        version,
        issued_at,
        manifest,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygen::Format;
    use crate::store::{KeySettings, NewKey, Owner};
    use keyward_engine::signed_snapshot::verify_snapshot;
    use keyward_engine::snapshot::KeyStatus;

    #[test]
    fn built_snapshots_verify_with_the_engine() {
        let key = SigningKey::from_seed("k1", &[4; 32]).unwrap();
        let public = [key.public_key()];
        let mut store = Store::in_memory().unwrap();
        store
            .create_project("a", 1, "proj_a", "org_1", None, None)
            .unwrap();
        let created = store
            .create_key(
                "a",
                2,
                &NewKey {
                    owner: Owner::Project("proj_a".into()),
                    format: Format::Ak,
                    settings: KeySettings::default(),
                },
            )
            .unwrap();
        let signed = build_signed(&mut store, &key, 1000, 60).unwrap();
        assert_eq!((signed.version, signed.keys, signed.projects), (3, 1, 1));
        assert_eq!(signed.etag(), "\"3-1000\"");
        assert!(!signed.envelope.contains(created.plaintext.expose()));
        let policy = verify_snapshot(signed.envelope.as_bytes(), &public, 1059).unwrap();
        assert_eq!(policy.version, 3);
        assert_eq!(policy.issued_at, 1000);
        assert_eq!(policy.expires_at, Some(1060));
        assert!(verify_snapshot(signed.envelope.as_bytes(), &public, 1060).is_err());
        let stored = policy.key_by_id(&created.key.id).unwrap();
        assert_eq!(stored.status, KeyStatus::Active);

        let chunked = build_chunked(&mut store, &key, 1000, 60, None).unwrap();
        assert_eq!(chunked.version, 3);
        let manifest =
            keyward_engine::chunked::verify_manifest(chunked.manifest.as_bytes(), &public, 1059)
                .unwrap();
        assert_eq!(manifest.expires_at, Some(1060));
        assert_eq!(manifest.chunks.len(), 1);
        let mut build = keyward_engine::chunked::ChunkedBuild::new(&manifest).unwrap();
        let body = &chunked.chunks[&manifest.chunks[0].sha256];
        assert!(!body.contains(created.plaintext.expose()));
        assert_eq!(build.work(body.as_bytes(), || false), Ok(true));
        let policy = build.finish().unwrap();
        assert_eq!(
            policy.key_by_id(&created.key.id).map(|k| k.status),
            Some(KeyStatus::Active)
        );
    }
}
