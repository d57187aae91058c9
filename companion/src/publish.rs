//! Signed snapshots built from the store: what `keyward snapshot build` writes and what
//! `GET /v1/snapshot` serves.

use keyward_engine::signed_snapshot::{sign_snapshot, SigningKey};

use crate::error::Error;
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

/// Records revocations whose rotation grace has ended (a change of its own, by `system`), then
/// reads the whole policy in one transaction and signs it. `version` is the store's
/// `policy_version`, `issued_at` is `now`.
pub fn build_signed(
    store: &mut Store,
    key: &SigningKey,
    now: u64,
) -> Result<SignedSnapshot, Error> {
    store.revoke_rotated_keys(now)?;
    let snapshot = store.snapshot(now)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygen::Format;
    use crate::store::{KeySettings, NewKey, Owner};
    use keyward_engine::signed_snapshot::verify_snapshot;
    use keyward_engine::snapshot::KeyStatus;

    #[test]
    fn built_snapshots_verify_with_the_engine() {
        let key = SigningKey::from_base64("k1", &"QUJD".repeat(11)).unwrap();
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
        let signed = build_signed(&mut store, &key, 1000).unwrap();
        assert_eq!((signed.version, signed.keys, signed.projects), (3, 1, 1));
        assert_eq!(signed.etag(), "\"3-1000\"");
        assert!(!signed.envelope.contains(created.plaintext.expose()));
        let policy = verify_snapshot(signed.envelope.as_bytes(), &[key]).unwrap();
        assert_eq!(policy.version, 3);
        assert_eq!(policy.issued_at, 1000);
        let stored = policy.key_by_id(&created.key.id).unwrap();
        assert_eq!(stored.status, KeyStatus::Active);
    }
}
