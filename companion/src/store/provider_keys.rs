//! Provider keys in the store: ciphertext under the KEK (see `provider_secrets`), never
//! plaintext, one per provider and owner (a project, or an org as the fallback). Every change is
//! an audited change that makes a new policy version, so the next snapshot carries it. A key's
//! last use comes from the data planes' usage reports: it only moves forward, and a rotation
//! (which keeps the row) keeps it.

use std::collections::BTreeMap;

use keyward_engine::provider::{KeyOwnerKind, Provider};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::change::Change;
use super::projects::{find_project, require_org};
use super::sql::{args, Row, Sql, Value};
use super::Store;
use crate::error::Error;

/// A stored provider key: what the store holds of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKeyRow {
    pub provider: Provider,
    pub owner: KeyOwnerKind,
    pub owner_id: String,
    /// Base64 of nonce, ciphertext and tag under the KEK. Never shown.
    pub ciphertext: String,
    pub last4: String,
    /// A name for people (`list` shows it); optional.
    pub name: Option<String>,
    pub created_at: u64,
    pub rotated_at: Option<u64>,
    /// Unix seconds of the last request a data plane forwarded with this key (usage reports).
    pub last_used_at: Option<u64>,
}

/// What `list`, the admin API and the CLI show of a provider key: never the key, nor its
/// ciphertext; its last 4 characters only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProviderKeyView {
    /// `openai`, `anthropic`, `azure`, `google`, `mistral`, `groq`, `deepseek`, `cohere`, `xai`
    /// or `perplexity`.
    #[schema(value_type = String)]
    pub provider: Provider,
    /// `project` or `org` (an org's key is the fallback of its projects).
    #[schema(value_type = String)]
    pub owner: KeyOwnerKind,
    /// The project's or org's id.
    pub owner_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// The key's last 4 characters.
    pub last4: String,
    pub created_at: u64,
    #[serde(default)]
    pub rotated_at: Option<u64>,
    /// The last request forwarded with the key, from usage reports; forward only, kept across
    /// rotations.
    #[serde(default)]
    pub last_used_at: Option<u64>,
}

impl From<&ProviderKeyRow> for ProviderKeyView {
    fn from(row: &ProviderKeyRow) -> ProviderKeyView {
        ProviderKeyView {
            provider: row.provider,
            owner: row.owner,
            owner_id: row.owner_id.clone(),
            name: row.name.clone(),
            last4: row.last4.clone(),
            created_at: row.created_at,
            rotated_at: row.rotated_at,
            last_used_at: row.last_used_at,
        }
    }
}

/// A provider key a usage report says was used: provider, scope and owner id (derived from the
/// store, never taken from the report), with the latest use.
pub(super) type ProviderKeyUses = BTreeMap<(Provider, KeyOwnerKind, String), u64>;

const COLUMNS: &str =
    "provider, owner_kind, owner_id, ciphertext, last4, created_at, rotated_at, name, last_used_at";

/// Longest name of a provider key, in characters.
pub const MAX_PROVIDER_KEY_NAME_CHARS: usize = 100;

fn row_of(row: &Row) -> Result<ProviderKeyRow, Error> {
    let mut columns = row.columns();
    let provider_text = columns.text()?;
    let owner_text = columns.text()?;
    let bad = || Error::internal("a stored provider key names an unknown provider or owner");
    Ok(ProviderKeyRow {
        provider: Provider::parse(&provider_text).ok_or_else(bad)?,
        owner: KeyOwnerKind::parse(&owner_text).ok_or_else(bad)?,
        owner_id: columns.text()?,
        ciphertext: columns.text()?,
        last4: columns.text()?,
        created_at: columns.uint()?,
        rotated_at: columns.opt_uint()?,
        name: columns.opt_text()?,
        last_used_at: columns.opt_uint()?,
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

/// `project/openai/proj_a`: how the audit trail and messages name a provider key.
pub fn provider_key_target(provider: Provider, owner: KeyOwnerKind, owner_id: &str) -> String {
    format!("{}/{}/{owner_id}", owner.as_str(), provider.as_str())
}

fn audit(change: &mut Change<'_>, action: &str, row: &ProviderKeyRow) -> Result<(), Error> {
    change.audit(
        action,
        &provider_key_target(row.provider, row.owner, &row.owner_id),
        serde_json::json!({
            "provider": row.provider.as_str(),
            "owner": row.owner.as_str(),
            "owner_id": row.owner_id,
            "name": row.name,
            "last4": row.last4,
        }),
    )
}

/// Checks a provider key's name: 1 to 100 characters, no control characters.
pub fn check_provider_key_name(name: &str) -> Result<(), Error> {
    let count = name.chars().count();
    if (1..=MAX_PROVIDER_KEY_NAME_CHARS).contains(&count) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_name",
            format!(
                "a provider key's name is 1 to {MAX_PROVIDER_KEY_NAME_CHARS} characters, none \
                 of them control characters"
            ),
        ))
    }
}

fn check_owner_id(owner_id: &str) -> Result<(), Error> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
    if owner_id.is_empty() || owner_id.len() > 128 || !owner_id.bytes().all(allowed) {
        return Err(Error::invalid(
            "invalid_owner",
            "the project or org id must be 1 to 128 characters of A-Z a-z 0-9 _ - . :",
        ));
    }
    Ok(())
}

/// Whether a stored or added key replaces one (`rotate`) or must be new (`add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    Add,
    Rotate,
}

/// Moves the last use of each provider key in `uses` forward (never back), within a usage
/// report's transaction. A key that is not stored (removed since, or never added) is skipped;
/// the warnings say which.
pub(super) fn record_provider_key_uses(
    sql: &mut dyn Sql,
    uses: &ProviderKeyUses,
) -> Result<Vec<String>, Error> {
    let mut warnings = Vec::new();
    for ((provider, owner, owner_id), at) in uses {
        let params = args![
            provider.as_str(),
            owner.as_str(),
            owner_id,
            Value::saturating(*at)
        ];
        let moved = sql.execute(
            "UPDATE provider_keys SET last_used_at = ?4 \
             WHERE provider = ?1 AND owner_kind = ?2 AND owner_id = ?3 \
               AND (last_used_at IS NULL OR last_used_at < ?4)",
            params,
        )?;
        if moved == 0 && find(sql, *provider, *owner, owner_id)?.is_none() {
            warnings.push(format!(
                "provider key {} is not stored (removed?); its last use is not recorded",
                provider_key_target(*provider, *owner, owner_id)
            ));
        }
    }
    Ok(warnings)
}

/// Whose provider key a usage entry used, from the API key's own project and org in the store
/// (an org's key acting on a project: the project it charges, once found to be of the key's
/// org), never from what the report claims. `None` when the key cannot have used one of that
/// scope.
pub(super) fn provider_key_owner(
    sql: &mut dyn Sql,
    key_project: Option<&str>,
    key_org: Option<&str>,
    scope: KeyOwnerKind,
    charged: Option<&str>,
) -> Result<Option<String>, Error> {
    Ok(match (scope, key_project, key_org) {
        (KeyOwnerKind::Project, Some(project), _) => Some(project.to_owned()),
        (KeyOwnerKind::Project, None, Some(org)) => match charged {
            Some(project) => find_project(sql, project)?
                .filter(|found| found.org == org)
                .map(|found| found.id),
            None => None,
        },
        (KeyOwnerKind::Org, _, Some(org)) => Some(org.to_owned()),
        (KeyOwnerKind::Org, Some(project), None) => {
            find_project(sql, project)?.map(|found| found.org)
        }
        (_, None, None) => None,
    })
}

impl Store {
    /// Adds or rotates a provider key, already encrypted. A project owner must exist, an org
    /// must have a project (orgs exist through their projects). A rotation keeps the key's
    /// name (unless `key.name` gives a new one), creation time and last use.
    pub fn put_provider_key(
        &mut self,
        actor: &str,
        now: u64,
        mode: PutMode,
        key: ProviderKeyRow,
    ) -> Result<ProviderKeyRow, Error> {
        check_owner_id(&key.owner_id)?;
        if let Some(name) = &key.name {
            check_provider_key_name(name)?;
        }
        self.change(actor, now, |change| {
            match key.owner {
                KeyOwnerKind::Project => {
                    if find_project(change.sql, &key.owner_id)?.is_none() {
                        return Err(Error::not_found(
                            "project_not_found",
                            format!("no project {:?}", key.owner_id),
                        ));
                    }
                }
                KeyOwnerKind::Org if mode == PutMode::Add => {
                    require_org(change.sql, &key.owner_id)?
                }
                KeyOwnerKind::Org => {}
            }
            let existing = find(change.sql, key.provider, key.owner, &key.owner_id)?;
            let what = provider_key_target(key.provider, key.owner, &key.owner_id);
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
                (PutMode::Add, None) => ProviderKeyRow {
                    created_at: now,
                    rotated_at: None,
                    last_used_at: None,
                    ..key
                },
                (PutMode::Rotate, Some(old)) => ProviderKeyRow {
                    name: key.name.or(old.name),
                    created_at: old.created_at,
                    rotated_at: Some(now),
                    last_used_at: old.last_used_at,
                    ..key
                },
            };
            // ?1 to ?7 of both the insert and the rotation.
            let params = [
                Value::from(stored.provider.as_str()),
                Value::from(stored.owner.as_str()),
                Value::from(&stored.owner_id),
                Value::from(&stored.ciphertext),
                Value::from(&stored.last4),
                Value::uint(now)?,
                Value::opt_text(stored.name.as_deref()),
            ];
            let action = match mode {
                PutMode::Add => {
                    change.sql.execute(
                        &format!(
                            "INSERT INTO provider_keys ({COLUMNS}) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, NULL)"
                        ),
                        &params,
                    )?;
                    "provider_key.add"
                }
                PutMode::Rotate => {
                    change.sql.execute(
                        "UPDATE provider_keys SET ciphertext = ?4, last4 = ?5, rotated_at = ?6, \
                         name = ?7 WHERE provider = ?1 AND owner_kind = ?2 AND owner_id = ?3",
                        &params,
                    )?;
                    "provider_key.rotate"
                }
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
                    format!(
                        "{} has no key",
                        provider_key_target(provider, owner, owner_id)
                    ),
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

    /// What `list` shows of every stored provider key.
    pub fn provider_key_views(&mut self) -> Result<Vec<ProviderKeyView>, Error> {
        Ok(self
            .provider_keys()?
            .iter()
            .map(ProviderKeyView::from)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider_secrets::{last4, seal_into, Kek, ProviderSealing};
    use crate::store::test_support::{entry, key_in, store_with_org_projects, store_with_project};
    use crate::store::Owner;
    use keyward_engine::provider::ProviderKeyUse;
    use keyward_engine::provider_keys::FleetPrivateKey;
    use keyward_engine::snapshot::Policy;
    use keyward_engine::usage_report::{UsageEntry, UsageReport};
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
            name: None,
            created_at: 0,
            rotated_at: None,
            last_used_at: None,
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
            let shown = serde_json::to_string(&ProviderKeyView::from(stored)).unwrap();
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

    fn report(batch: &str, entries: Vec<UsageEntry>) -> UsageReport {
        UsageReport::new("envoy-1", batch, entries)
    }

    fn used(key_id: &str, project: Option<&str>, at: u64, scope: KeyOwnerKind) -> UsageEntry {
        UsageEntry {
            provider_key: Some(
                ProviderKeyUse {
                    provider: Provider::Openai,
                    owner: scope,
                }
                .label(),
            ),
            ..entry(key_id, project, 10, at)
        }
    }

    fn last_used(store: &mut Store, owner: KeyOwnerKind, id: &str) -> Option<u64> {
        store
            .provider_key_views()
            .unwrap()
            .into_iter()
            .find(|view| view.owner == owner && view.owner_id == id)
            .and_then(|view| view.last_used_at)
    }

    #[test]
    fn usage_moves_the_last_use_forward_only_and_rotation_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let kek = kek(dir.path(), "k.kek");
        let mut store = store_with_org_projects();
        for (owner, id) in [
            (KeyOwnerKind::Project, "proj_a"),
            (KeyOwnerKind::Org, "org_1"),
            (KeyOwnerKind::Org, "org_2"),
        ] {
            store
                .put_provider_key("alice", 100, PutMode::Add, row(&kek, owner, id, "sk-xyz-1"))
                .unwrap();
        }
        let project_key = key_in(&mut store, Owner::Project("proj_a".into()));
        let org_key = key_in(&mut store, Owner::Org("org_1".into()));
        let before = store.policy_version().unwrap();
        let applied = store
            .apply_usage_report(
                &report(
                    "b1",
                    vec![
                        used(&project_key, Some("proj_a"), 500, KeyOwnerKind::Project),
                        used(&project_key, Some("proj_a"), 450, KeyOwnerKind::Org),
                        // An org key acting on proj_b: org_1's key. A report claiming org_2's
                        // is derived from the key, not believed.
                        used(&org_key, Some("proj_b"), 480, KeyOwnerKind::Org),
                        // Far in the future: held at the control plane's clock.
                        used(&org_key, Some("proj_a"), 9_000, KeyOwnerKind::Project),
                    ],
                ),
                1_000,
                false,
            )
            .unwrap();
        assert!(applied.warnings.is_empty(), "{:?}", applied.warnings);
        assert_eq!(
            last_used(&mut store, KeyOwnerKind::Project, "proj_a"),
            Some(1_000)
        );
        assert_eq!(last_used(&mut store, KeyOwnerKind::Org, "org_1"), Some(480));
        assert_eq!(last_used(&mut store, KeyOwnerKind::Org, "org_2"), None);
        assert_eq!(
            store.policy_version().unwrap(),
            before,
            "a last use is no new policy"
        );
        // An older use does not move it back; a rotation keeps the row and its last use.
        store
            .apply_usage_report(
                &report(
                    "b2",
                    vec![used(&project_key, Some("proj_a"), 300, KeyOwnerKind::Org)],
                ),
                1_100,
                true,
            )
            .unwrap();
        assert_eq!(last_used(&mut store, KeyOwnerKind::Org, "org_1"), Some(480));
        let new_key = row(&kek, KeyOwnerKind::Org, "org_1", "sk-new-2222");
        let rotated = store.put_provider_key("bob", 1_200, PutMode::Rotate, new_key);
        let rotated = rotated.unwrap();
        assert_eq!(rotated.last_used_at, Some(480));
        assert_eq!(last_used(&mut store, KeyOwnerKind::Org, "org_1"), Some(480));
        store
            .apply_usage_report(
                &report(
                    "b3",
                    vec![used(&org_key, Some("proj_b"), 1_150, KeyOwnerKind::Org)],
                ),
                1_300,
                true,
            )
            .unwrap();
        assert_eq!(
            last_used(&mut store, KeyOwnerKind::Org, "org_1"),
            Some(1_150)
        );
        // A removed key: the use is skipped with a warning, the batch still applies.
        store
            .remove_provider_key(
                "alice",
                1_400,
                Provider::Openai,
                KeyOwnerKind::Project,
                "proj_a",
            )
            .unwrap();
        let applied = store
            .apply_usage_report(
                &report(
                    "b4",
                    vec![used(
                        &project_key,
                        Some("proj_a"),
                        1_450,
                        KeyOwnerKind::Project,
                    )],
                ),
                1_500,
                true,
            )
            .unwrap();
        assert_eq!(applied.warnings.len(), 1, "{:?}", applied.warnings);
        assert!(applied.warnings[0].contains("project/openai/proj_a is not stored"));
        assert_eq!(store.key(&project_key).unwrap().last_seen_at, Some(1_450));
        let event = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(event.action, "usage.report");
        assert_eq!(
            event.details["provider_keys"],
            serde_json::json!(["project/openai/proj_a"])
        );
    }

    #[test]
    fn names_and_owners_are_checked_and_a_rotation_keeps_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let kek = kek(dir.path(), "k.kek");
        let mut store = store_with_project();
        let named = |name: &str| ProviderKeyRow {
            name: Some(name.to_owned()),
            ..row(&kek, KeyOwnerKind::Project, "proj_a", "sk-abc-1234")
        };
        let bad = store.put_provider_key("a", 1, PutMode::Add, named("two\nlines"));
        assert_eq!(bad.unwrap_err().code, "invalid_name");
        let long = "x".repeat(MAX_PROVIDER_KEY_NAME_CHARS + 1);
        assert_eq!(
            store
                .put_provider_key("a", 1, PutMode::Add, named(&long))
                .unwrap_err()
                .code,
            "invalid_name"
        );
        let added = store
            .put_provider_key("a", 1, PutMode::Add, named("prod OpenAI"))
            .unwrap();
        assert_eq!(added.name.as_deref(), Some("prod OpenAI"));
        let rotated = store
            .put_provider_key(
                "a",
                2,
                PutMode::Rotate,
                row(&kek, KeyOwnerKind::Project, "proj_a", "sk-abc-5678"),
            )
            .unwrap();
        assert_eq!(rotated.name.as_deref(), Some("prod OpenAI"));
        let orphan = store.put_provider_key(
            "a",
            3,
            PutMode::Add,
            row(&kek, KeyOwnerKind::Org, "org_nobody", "sk-1"),
        );
        assert_eq!(orphan.unwrap_err().code, "unknown_org");
        let bad_id = store.put_provider_key(
            "a",
            3,
            PutMode::Add,
            row(&kek, KeyOwnerKind::Org, "org 1", "sk-1"),
        );
        assert_eq!(bad_id.unwrap_err().code, "invalid_owner");
        let event = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(event.details["name"], "prod OpenAI");
    }
}
