//! Provider keys in the store: ciphertext under the KEK (see `provider_secrets`), never
//! plaintext, one per provider and owner (a project, or an org as the fallback). Every change is
//! an audited change that makes a new policy version, so the next snapshot carries it.

use keyward_engine::provider::{KeyOwnerKind, Provider};
use serde::Serialize;

use super::change::Change;
use super::projects::find_project;
use super::sql::{args, Row, Sql, Value};
use super::Store;
use crate::error::Error;

/// A stored provider key: what the store holds of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderKeyRow {
    pub provider: Provider,
    pub owner: KeyOwnerKind,
    pub owner_id: String,
    /// Base64 of nonce, ciphertext and tag under the KEK. Never shown.
    #[serde(skip)]
    pub ciphertext: String,
    pub last4: String,
    pub created_at: u64,
    pub rotated_at: Option<u64>,
}

const COLUMNS: &str = "provider, owner_kind, owner_id, ciphertext, last4, created_at, rotated_at";

fn row_of(row: &Row) -> Result<ProviderKeyRow, Error> {
    let mut columns = row.columns();
    let provider_text = columns.text()?;
    let owner_text = columns.text()?;
    let bad = || Error::internal("a stored provider key names an unknown provider or owner");
    Ok(ProviderKeyRow {
        provider: Provider::parse(&provider_text).ok_or_else(bad)?,
        owner: match owner_text.as_str() {
            "project" => KeyOwnerKind::Project,
            "org" => KeyOwnerKind::Org,
            _ => return Err(bad()),
        },
        owner_id: columns.text()?,
        ciphertext: columns.text()?,
        last4: columns.text()?,
        created_at: columns.uint()?,
        rotated_at: columns.opt_uint()?,
    })
}

fn find(
    sql: &mut dyn Sql,
    provider: Provider,
    owner: KeyOwnerKind,
    owner_id: &str,
) -> Result<Option<ProviderKeyRow>, Error> {
    sql.query_opt(
        &format!(
            "SELECT {COLUMNS} FROM provider_keys \
             WHERE provider = ?1 AND owner_kind = ?2 AND owner_id = ?3"
        ),
        args![provider.as_str(), owner.as_str(), owner_id],
    )?
    .map(|row| row_of(&row))
    .transpose()
}

fn target(provider: Provider, owner: KeyOwnerKind, owner_id: &str) -> String {
    format!("{}/{}/{owner_id}", owner.as_str(), provider.as_str())
}

fn audit(change: &mut Change<'_>, action: &str, row: &ProviderKeyRow) -> Result<(), Error> {
    change.audit(
        action,
        &target(row.provider, row.owner, &row.owner_id),
        serde_json::json!({
            "provider": row.provider.as_str(),
            "owner": row.owner.as_str(),
            "owner_id": row.owner_id,
            "last4": row.last4,
        }),
    )
}

/// Whether a stored or added key replaces one (`rotate`) or must be new (`add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    Add,
    Rotate,
}

impl Store {
    /// Adds or rotates a provider key, already encrypted. A project owner must exist; an org is
    /// any org id (the org's key serves every project of it).
    pub fn put_provider_key(
        &mut self,
        actor: &str,
        now: u64,
        mode: PutMode,
        key: ProviderKeyRow,
    ) -> Result<ProviderKeyRow, Error> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
        if key.owner_id.is_empty() || key.owner_id.len() > 128 || !key.owner_id.bytes().all(allowed)
        {
            return Err(Error::invalid(
                "invalid_owner",
                "the project or org id must be 1 to 128 characters of A-Z a-z 0-9 _ - . :",
            ));
        }
        self.change(actor, now, |change| {
            if key.owner == KeyOwnerKind::Project && find_project(change.sql, &key.owner_id)?.is_none()
            {
                return Err(Error::not_found(
                    "project_not_found",
                    format!("no project {:?}", key.owner_id),
                ));
            }
            let existing = find(change.sql, key.provider, key.owner, &key.owner_id)?;
            let what = target(key.provider, key.owner, &key.owner_id);
            // ?1 to ?6 of both the insert and the rotation.
            let params = [
                Value::from(key.provider.as_str()),
                Value::from(key.owner.as_str()),
                Value::from(&key.owner_id),
                Value::from(&key.ciphertext),
                Value::from(&key.last4),
                Value::uint(now)?,
            ];
            let stored = match (mode, existing) {
                (PutMode::Add, Some(_)) => {
                    return Err(Error::conflict(
                        "provider_key_exists",
                        format!("{what} has a key already: rotate it instead"),
                    ))
                }
                (PutMode::Rotate, None) => {
                    return Err(Error::not_found(
                        "provider_key_not_found",
                        format!("{what} has no key to rotate"),
                    ))
                }
                (PutMode::Add, None) => {
                    change.sql.execute(
                        &format!("INSERT INTO provider_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)"),
                        &params,
                    )?;
                    ProviderKeyRow {
                        created_at: now,
                        rotated_at: None,
                        ..key
                    }
                }
                (PutMode::Rotate, Some(old)) => {
                    change.sql.execute(
                        "UPDATE provider_keys SET ciphertext = ?4, last4 = ?5, rotated_at = ?6 \
                         WHERE provider = ?1 AND owner_kind = ?2 AND owner_id = ?3",
                        &params,
                    )?;
                    ProviderKeyRow {
                        created_at: old.created_at,
                        rotated_at: Some(now),
                        ..key
                    }
                }
            };
            let action = match mode {
                PutMode::Add => "provider_key.add",
                PutMode::Rotate => "provider_key.rotate",
            };
            audit(change, action, &stored)?;
            Ok(stored)
        })
    }

    pub fn remove_provider_key(
        &mut self,
        actor: &str,
        now: u64,
        provider: Provider,
        owner: KeyOwnerKind,
        owner_id: &str,
    ) -> Result<ProviderKeyRow, Error> {
        self.change(actor, now, |change| {
            let removed = find(change.sql, provider, owner, owner_id)?.ok_or_else(|| {
                Error::not_found(
                    "provider_key_not_found",
                    format!("{} has no key", target(provider, owner, owner_id)),
                )
            })?;
            change.sql.execute(
                "DELETE FROM provider_keys WHERE provider = ?1 AND owner_kind = ?2 AND owner_id = ?3",
                args![provider.as_str(), owner.as_str(), owner_id],
            )?;
            audit(change, "provider_key.remove", &removed)?;
            Ok(removed)
        })
    }

    /// Every stored provider key (ciphertext included, for sealing), in a stable order.
    pub fn provider_keys(&mut self) -> Result<Vec<ProviderKeyRow>, Error> {
        self.read(|sql| {
            sql.query(
                &format!(
                    "SELECT {COLUMNS} FROM provider_keys ORDER BY owner_kind, owner_id, provider"
                ),
                &[],
            )?
            .iter()
            .map(row_of)
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider_secrets::{last4, seal_into, Kek, ProviderSealing};
    use crate::store::test_support::store_with_project;
    use keyward_engine::provider_keys::FleetPrivateKey;
    use keyward_engine::snapshot::Policy;
    use std::sync::Arc;

    fn kek(dir: &std::path::Path, name: &str) -> Kek {
        let path = dir.join(name);
        std::fs::write(&path, Kek::generate().unwrap().as_bytes()).unwrap();
        Kek::load(&path).unwrap()
    }

    fn row(kek: &Kek, owner: KeyOwnerKind, id: &str, plaintext: &str) -> ProviderKeyRow {
        ProviderKeyRow {
            provider: Provider::Openai,
            owner,
            owner_id: id.to_owned(),
            ciphertext: kek.encrypt(Provider::Openai, owner, id, plaintext).unwrap(),
            last4: last4(plaintext),
            created_at: 0,
            rotated_at: None,
        }
    }

    #[test]
    fn keys_are_stored_encrypted_audited_and_sealed_into_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let kek_a = kek(dir.path(), "a.kek");
        let mut store = store_with_project();
        let secret = "sk-project-secret-0001";
        store
            .put_provider_key(
                "alice",
                200,
                PutMode::Add,
                row(&kek_a, KeyOwnerKind::Project, "proj_a", secret),
            )
            .unwrap();
        store
            .put_provider_key(
                "alice",
                201,
                PutMode::Add,
                row(&kek_a, KeyOwnerKind::Org, "org_1", "sk-org-9999"),
            )
            .unwrap();
        let again = store.put_provider_key(
            "alice",
            202,
            PutMode::Add,
            row(&kek_a, KeyOwnerKind::Org, "org_1", "x"),
        );
        assert_eq!(again.unwrap_err().code, "provider_key_exists");
        let missing = store.put_provider_key(
            "alice",
            202,
            PutMode::Add,
            row(&kek_a, KeyOwnerKind::Project, "nope", "x"),
        );
        assert_eq!(missing.unwrap_err().code, "project_not_found");
        let rotated = store
            .put_provider_key(
                "bob",
                300,
                PutMode::Rotate,
                row(&kek_a, KeyOwnerKind::Project, "proj_a", "sk-rotated-7777"),
            )
            .unwrap();
        assert_eq!((rotated.created_at, rotated.rotated_at), (200, Some(300)));
        let rows = store.provider_keys().unwrap();
        assert_eq!(rows.len(), 2);
        for stored in &rows {
            assert!(!stored.ciphertext.contains("sk-"), "ciphertext only");
            let shown = serde_json::to_string(stored).unwrap();
            assert!(
                !shown.contains(&stored.ciphertext),
                "list never shows the ciphertext"
            );
        }
        let project_row = rows
            .iter()
            .find(|r| r.owner == KeyOwnerKind::Project)
            .unwrap();
        assert_eq!(project_row.last4, "7777");
        assert_eq!(
            kek_a.decrypt(project_row).unwrap().as_str(),
            "sk-rotated-7777"
        );
        // Another KEK does not decrypt, and says so without the key.
        let kek_b = kek(dir.path(), "b.kek");
        let error = kek_b.decrypt(project_row).unwrap_err();
        assert_eq!(error.code, "provider_key_undecryptable");
        assert!(!error.message.contains("sk-"));
        // A ciphertext moved to another owner does not decrypt either.
        let moved = ProviderKeyRow {
            owner_id: "org_1".into(),
            owner: KeyOwnerKind::Org,
            ..project_row.clone()
        };
        assert!(kek_a.decrypt(&moved).is_err());
        let actions: Vec<String> = store
            .audit_events(None)
            .unwrap()
            .into_iter()
            .filter(|event| event.action.starts_with("provider_key."))
            .map(|event| {
                format!(
                    "{} {} {}",
                    event.action, event.target, event.details["last4"]
                )
            })
            .collect();
        assert_eq!(
            actions,
            [
                "provider_key.add project/openai/proj_a \"0001\"",
                "provider_key.add org/openai/org_1 \"9999\"",
                "provider_key.rotate project/openai/proj_a \"7777\""
            ]
        );
        // Sealed into a snapshot: no plaintext, and the filter's side opens it.
        let (private, public) = FleetPrivateKey::derive_pair(&[4u8; 32]);
        let mut snapshot = store.snapshot(400).unwrap();
        let unsealed = seal_into(&mut store, &mut snapshot.clone(), None);
        assert_eq!(
            unsealed.unwrap_err().code,
            "provider_sealing_not_configured"
        );
        let sealing = Arc::new(ProviderSealing {
            kek: kek_a,
            fleet_public_key: public,
        });
        seal_into(&mut store, &mut snapshot, Some(&sealing)).unwrap();
        let text = serde_json::to_string(&snapshot).unwrap();
        assert!(!text.contains("sk-rotated-7777") && !text.contains("sk-org-9999"));
        let mut policy = Policy::from_json(text.as_bytes()).unwrap();
        let fleet = FleetPrivateKey::from_base64(&private).unwrap();
        assert_eq!(
            policy.open_provider_keys(Some(&fleet)).as_deref(),
            Some("keyward: opened 2 provider keys")
        );
        store
            .remove_provider_key("alice", 500, Provider::Openai, KeyOwnerKind::Org, "org_1")
            .unwrap();
        assert_eq!(store.provider_keys().unwrap().len(), 1);
    }
}
