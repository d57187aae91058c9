//! API keys: stored as hashes, created with the OS CSPRNG, changed only while not revoked.

use keyward_engine::snapshot::{KeyRecord, KeyStatus, ProjectStatus, RateLimits};
use serde_json::json;

use super::change::{apply_field, apply_spend_caps, Change, Details};
use super::model::{CreatedKey, KeySettings, KeyUpdate, KeyView, NewKey, Owner, StatusChange};
use super::projects::require_org;
use super::sql::{args, Row, Sql, Value};
use super::validate::{nothing_to_change, validate_settings, validate_with_engine};
use super::Store;
use crate::error::Error;
use crate::keygen::{self, Environment, Format};

pub(super) const KEY_COLUMNS: &str = "id, format, secret_sha256, key_sha256, project, org, \
    environment, status, scopes, models, expires_at, spend_cap_microusd, spent_microusd, label, \
    note, created_at, last_seen_at, rotated_from, revoke_at, revoked_at, \
    spend_soft_cap_microusd, rate_limit_rpm, rate_limit_tpm";

/// One row of `keys`, with its hashes: never leaves the store except as a view or a snapshot
/// record.
pub(super) struct KeyRow {
    pub view: KeyView,
    pub secret_sha256: Option<String>,
    pub key_sha256: Option<String>,
}

pub(super) fn key_status_str(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Paused => "paused",
        KeyStatus::Revoked => "revoked",
    }
}

fn parse_key_status(text: &str) -> Result<KeyStatus, Error> {
    match text {
        "active" => Ok(KeyStatus::Active),
        "paused" => Ok(KeyStatus::Paused),
        "revoked" => Ok(KeyStatus::Revoked),
        other => Err(Error::internal(format!(
            "unknown key status {other:?} in the store"
        ))),
    }
}

/// The stored limit columns as the snapshot's object: absent when neither is set.
fn rate_limits_of(rpm: Option<u64>, tpm: Option<u64>) -> Result<Option<RateLimits>, Error> {
    let requests_per_minute = rpm
        .map(|rpm| {
            u32::try_from(rpm).map_err(|_| Error::internal("a stored rate limit is out of range"))
        })
        .transpose()?;
    Ok(
        (requests_per_minute.is_some() || tpm.is_some()).then_some(RateLimits {
            requests_per_minute,
            tokens_per_minute: tpm,
        }),
    )
}

pub(super) fn rpm_of(limits: Option<&RateLimits>) -> Result<Value, Error> {
    Value::opt_uint(
        limits
            .and_then(|limits| limits.requests_per_minute)
            .map(u64::from),
    )
}

pub(super) fn tpm_of(limits: Option<&RateLimits>) -> Result<Value, Error> {
    Value::opt_uint(limits.and_then(|limits| limits.tokens_per_minute))
}

/// A row of `SELECT {KEY_COLUMNS}`.
pub(super) fn key_of(row: &Row) -> Result<KeyRow, Error> {
    let mut columns = row.columns();
    let id = columns.text()?;
    let format_text = columns.text()?;
    let format = Format::parse(&format_text).ok_or_else(|| {
        Error::internal(format!("unknown key format {format_text:?} in the store"))
    })?;
    let secret_sha256 = columns.opt_text()?;
    let key_sha256 = columns.opt_text()?;
    let project = columns.opt_text()?;
    let org = columns.opt_text()?;
    let environment = columns.text()?;
    let status = parse_key_status(&columns.text()?)?;
    let scopes: Vec<String> = serde_json::from_str(&columns.text()?)?;
    let models: Option<Vec<String>> = columns
        .opt_text()?
        .as_deref()
        .map(serde_json::from_str)
        .transpose()?;
    let expires_at = columns.opt_uint()?;
    let spend_cap_microusd = columns.opt_uint()?;
    let spent_microusd = columns.uint()?;
    let label = columns.opt_text()?;
    let note = columns.opt_text()?;
    let created_at = columns.uint()?;
    let last_seen_at = columns.opt_uint()?;
    let rotated_from = columns.opt_text()?;
    let revoke_at = columns.opt_uint()?;
    let revoked_at = columns.opt_uint()?;
    let spend_soft_cap_microusd = columns.opt_uint()?;
    let rate_limits = rate_limits_of(columns.opt_uint()?, columns.opt_uint()?)?;
    Ok(KeyRow {
        view: KeyView {
            id,
            format,
            project,
            org,
            environment,
            status,
            scopes,
            models,
            expires_at,
            spend_cap_microusd,
            spend_soft_cap_microusd,
            spent_microusd,
            rate_limits,
            label,
            note,
            created_at,
            last_seen_at,
            rotated_from,
            revoke_at,
            revoked_at,
        },
        secret_sha256,
        key_sha256,
    })
}

impl KeyRow {
    /// The snapshot record. A key past its rotation deadline is revoked, even if the store has
    /// not recorded that yet.
    pub fn record(&self, now: u64) -> KeyRecord {
        let view = &self.view;
        let grace_over = view.revoke_at.is_some_and(|deadline| deadline <= now);
        KeyRecord {
            id: view.id.clone(),
            secret_sha256: self.secret_sha256.clone(),
            key_sha256: self.key_sha256.clone(),
            project: view.project.clone(),
            org: view.org.clone(),
            status: if grace_over {
                KeyStatus::Revoked
            } else {
                view.status
            },
            environment: view.environment.clone(),
            scopes: view.scopes.clone(),
            models: view.models.clone(),
            expires_at: view.expires_at,
            spend_cap_microusd: view.spend_cap_microusd,
            spent_microusd: view.spent_microusd,
            label: view.label.clone(),
            spend_soft_cap_microusd: view.spend_soft_cap_microusd,
            rate_limits: view.rate_limits,
            created_at: Some(view.created_at),
            last_used_at: view.last_seen_at,
            limits: None,
        }
    }
}

pub(super) fn find_key(sql: &mut dyn Sql, id: &str) -> Result<Option<KeyRow>, Error> {
    sql.query_opt(
        &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"),
        args![id],
    )?
    .as_ref()
    .map(key_of)
    .transpose()
}

fn key_not_found() -> Error {
    Error::not_found("key_not_found", "No key with this id.")
}

impl Change<'_> {
    pub fn key(&mut self, id: &str) -> Result<KeyRow, Error> {
        find_key(self.sql, id)?.ok_or_else(key_not_found)
    }
}

pub(super) fn require_not_revoked(row: &KeyRow) -> Result<(), Error> {
    if row.view.status == KeyStatus::Revoked {
        return Err(Error::conflict(
            "key_revoked",
            "The key is revoked; a revoked key cannot be changed.",
        ));
    }
    Ok(())
}

/// What the audit trail records about a key's settings (never its hash).
fn settings_details(settings: &KeySettings) -> serde_json::Value {
    json!({
        "environment": settings.environment.as_str(),
        "scopes": settings.scopes,
        "models": settings.models,
        "expires_at": settings.expires_at,
        "spend_cap_microusd": settings.spend_cap_microusd,
        "spend_soft_cap_microusd": settings.spend_soft_cap_microusd,
        "rate_limits": settings.rate_limits,
        "label": settings.label,
        "note": settings.note,
    })
}

pub(super) fn settings_of(view: &KeyView) -> KeySettings {
    KeySettings {
        environment: Environment::parse(&view.environment).unwrap_or_default(),
        scopes: view.scopes.clone(),
        models: view.models.clone(),
        expires_at: view.expires_at,
        spend_cap_microusd: view.spend_cap_microusd,
        spend_soft_cap_microusd: view.spend_soft_cap_microusd,
        rate_limits: view.rate_limits,
        label: view.label.clone(),
        note: view.note.clone(),
    }
}

/// Validates one key row (with its project, when it has one) with the engine.
fn validate_row(change: &mut Change<'_>, row: &KeyRow, now: u64) -> Result<(), Error> {
    let projects = match &row.view.project {
        Some(project) => vec![change.project(project)?.record()],
        None => vec![],
    };
    validate_with_engine(projects, vec![row.record(now)], vec![])
}

/// Generates and inserts a key; audits `key.create`.
pub(super) fn insert_key(
    change: &mut Change<'_>,
    new: &NewKey,
    status: KeyStatus,
    rotated_from: Option<&str>,
) -> Result<CreatedKey, Error> {
    let (project, org) = match &new.owner {
        Owner::Project(project) => {
            let found = change.project(project)?;
            if found.status != ProjectStatus::Active {
                return Err(Error::conflict(
                    "project_archived",
                    format!("The project {project:?} is not active; it cannot get new keys."),
                ));
            }
            (Some(project.clone()), None)
        }
        Owner::Org(org) => {
            require_org(change.sql, org)?;
            (None, Some(org.clone()))
        }
    };
    let settings = &new.settings;
    if let Some(expires_at) = settings.expires_at.filter(|at| *at <= change.now) {
        return Err(Error::invalid(
            "expired_at_birth",
            format!(
                "the key would expire at {} (Unix {expires_at}), which is not after now: give a \
                 future --expires-at or a positive --expires-in",
                crate::units::format_time(expires_at)
            ),
        ));
    }
    // A clash of 12 random base62 characters is astronomically unlikely; still never overwrite.
    let mut material = keygen::generate(new.format, settings.environment)?;
    for _ in 0..4 {
        if find_key(change.sql, &material.id)?.is_none() {
            break;
        }
        material = keygen::generate(new.format, settings.environment)?;
    }
    if find_key(change.sql, &material.id)?.is_some() {
        return Err(Error::internal("could not draw an unused key id"));
    }
    let row = KeyRow {
        view: KeyView {
            id: material.id.clone(),
            format: new.format,
            project: project.clone(),
            org: org.clone(),
            environment: settings.environment.as_str().to_owned(),
            status,
            scopes: settings.scopes.clone(),
            models: settings.models.clone(),
            expires_at: settings.expires_at,
            spend_cap_microusd: settings.spend_cap_microusd,
            spend_soft_cap_microusd: settings.spend_soft_cap_microusd,
            spent_microusd: 0,
            rate_limits: settings.rate_limits,
            label: settings.label.clone(),
            note: settings.note.clone(),
            created_at: change.now,
            last_seen_at: None,
            rotated_from: rotated_from.map(str::to_owned),
            revoke_at: None,
            revoked_at: None,
        },
        secret_sha256: material.secret_sha256.clone(),
        key_sha256: material.key_sha256.clone(),
    };
    let now = change.now;
    validate_row(change, &row, now)?;
    change.sql.execute(
        "INSERT INTO keys (id, format, secret_sha256, key_sha256, project, org, environment, \
         status, scopes, models, expires_at, spend_cap_microusd, label, note, created_at, \
         rotated_from, spend_soft_cap_microusd, rate_limit_rpm, rate_limit_tpm) VALUES (?1, ?2, \
         ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        args![
            &material.id,
            new.format.as_str(),
            material.secret_sha256.as_ref(),
            material.key_sha256.as_ref(),
            project.as_ref(),
            org.as_ref(),
            settings.environment.as_str(),
            key_status_str(status),
            Value::json(&settings.scopes)?,
            settings
                .models
                .as_ref()
                .map(Value::json)
                .transpose()?
                .unwrap_or(Value::Null),
            Value::opt_uint(settings.expires_at)?,
            Value::opt_uint(settings.spend_cap_microusd)?,
            settings.label.as_ref(),
            settings.note.as_ref(),
            Value::uint(now)?,
            Value::opt_text(rotated_from),
            Value::opt_uint(settings.spend_soft_cap_microusd)?,
            rpm_of(settings.rate_limits.as_ref())?,
            tpm_of(settings.rate_limits.as_ref())?,
        ],
    )?;
    let mut details = settings_details(settings);
    if let Some(object) = details.as_object_mut() {
        object.insert("format".into(), json!(new.format.as_str()));
        object.insert("project".into(), json!(project));
        object.insert("org".into(), json!(org));
        object.insert("rotated_from".into(), json!(rotated_from));
    }
    change.audit("key.create", &material.id, details)?;
    Ok(CreatedKey {
        plaintext: material.plaintext,
        key: row.view,
    })
}

/// `update` applied to a key's view; returns the audit details of what it names.
fn apply_update(view: &mut KeyView, update: &KeyUpdate) -> Details {
    let mut details = Details::new();
    apply_field(
        &mut details,
        "scopes",
        &mut view.scopes,
        update.scopes.as_ref(),
    );
    apply_field(
        &mut details,
        "models",
        &mut view.models,
        update.models.as_ref(),
    );
    apply_field(
        &mut details,
        "expires_at",
        &mut view.expires_at,
        update.expires_at.as_ref(),
    );
    apply_spend_caps(
        &mut details,
        [
            &mut view.spend_cap_microusd,
            &mut view.spend_soft_cap_microusd,
        ],
        [update.spend_cap_microusd, update.spend_soft_cap_microusd],
    );
    if update.requests_per_minute.is_some() || update.tokens_per_minute.is_some() {
        let current = view.rate_limits.unwrap_or(RateLimits {
            requests_per_minute: None,
            tokens_per_minute: None,
        });
        let limits = RateLimits {
            requests_per_minute: update
                .requests_per_minute
                .unwrap_or(current.requests_per_minute),
            tokens_per_minute: update
                .tokens_per_minute
                .unwrap_or(current.tokens_per_minute),
        };
        view.rate_limits = (limits.requests_per_minute.is_some()
            || limits.tokens_per_minute.is_some())
        .then_some(limits);
        details.insert("rate_limits".into(), json!(view.rate_limits));
    }
    apply_field(
        &mut details,
        "label",
        &mut view.label,
        update.label.as_ref(),
    );
    apply_field(&mut details, "note", &mut view.note, update.note.as_ref());
    details
}

impl Store {
    pub fn create_key(&mut self, actor: &str, now: u64, new: &NewKey) -> Result<CreatedKey, Error> {
        validate_settings(&new.settings)?;
        self.change(actor, now, |change| {
            insert_key(change, new, KeyStatus::Active, None)
        })
    }

    pub fn key(&mut self, id: &str) -> Result<KeyView, Error> {
        self.read(|sql| find_key(sql, id))?
            .map(|row| row.view)
            .ok_or_else(key_not_found)
    }

    pub fn keys(&mut self, project: Option<&str>) -> Result<Vec<KeyView>, Error> {
        let (sql, filter): (String, Vec<Value>) = match project {
            Some(project) => (
                format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE project = ?1 ORDER BY created_at, id"
                ),
                vec![Value::from(project)],
            ),
            None => (
                format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id"),
                vec![],
            ),
        };
        self.read(|tx| tx.query_map(&sql, &filter, |row| key_of(row).map(|row| row.view)))
    }

    pub fn change_status(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        requested: StatusChange,
    ) -> Result<KeyView, Error> {
        self.change(actor, now, |change| {
            let row = change.key(id)?;
            require_not_revoked(&row)?;
            let (action, status) = match (requested, row.view.status) {
                (StatusChange::Revoke, _) => ("key.revoke", KeyStatus::Revoked),
                (StatusChange::Pause, KeyStatus::Active) => ("key.pause", KeyStatus::Paused),
                (StatusChange::Pause, _) => {
                    return Err(Error::conflict("key_paused", "The key is already paused."))
                }
                (StatusChange::Resume, KeyStatus::Paused) => ("key.resume", KeyStatus::Active),
                (StatusChange::Resume, _) => {
                    return Err(Error::conflict("key_not_paused", "The key is not paused."))
                }
            };
            let revoked_at = (status == KeyStatus::Revoked).then_some(now);
            change.sql.execute(
                "UPDATE keys SET status = ?2, revoked_at = COALESCE(?3, revoked_at) WHERE id = ?1",
                args![id, key_status_str(status), Value::opt_uint(revoked_at)?],
            )?;
            change.audit(
                action,
                id,
                json!({"from": key_status_str(row.view.status), "to": key_status_str(status)}),
            )?;
            Ok(change.key(id)?.view)
        })
    }

    pub fn update_key(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        update: &KeyUpdate,
    ) -> Result<KeyView, Error> {
        if update.is_empty() {
            return Err(nothing_to_change());
        }
        self.change(actor, now, |change| {
            let row = change.key(id)?;
            require_not_revoked(&row)?;
            let mut view = row.view.clone();
            let details = apply_update(&mut view, update);
            let updated = KeyRow {
                view,
                secret_sha256: row.secret_sha256.clone(),
                key_sha256: row.key_sha256.clone(),
            };
            validate_settings(&settings_of(&updated.view))?;
            validate_row(change, &updated, now)?;
            let view = &updated.view;
            change.sql.execute(
                "UPDATE keys SET scopes = ?2, models = ?3, expires_at = ?4, \
                 spend_cap_microusd = ?5, label = ?6, note = ?7, spend_soft_cap_microusd = ?8, \
                 rate_limit_rpm = ?9, rate_limit_tpm = ?10 WHERE id = ?1",
                args![
                    id,
                    Value::json(&view.scopes)?,
                    view.models
                        .as_ref()
                        .map(Value::json)
                        .transpose()?
                        .unwrap_or(Value::Null),
                    Value::opt_uint(view.expires_at)?,
                    Value::opt_uint(view.spend_cap_microusd)?,
                    view.label.as_ref(),
                    view.note.as_ref(),
                    Value::opt_uint(view.spend_soft_cap_microusd)?,
                    rpm_of(view.rate_limits.as_ref())?,
                    tpm_of(view.rate_limits.as_ref())?,
                ],
            )?;
            change.audit("key.update", id, serde_json::Value::Object(details))?;
            Ok(change.key(id)?.view)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::ProjectUpdate;

    #[test]
    fn every_change_bumps_the_version_and_is_audited() {
        let mut store = store_with_project();
        assert_eq!(store.policy_version().unwrap(), 2);
        let created = store
            .create_key(
                "alice",
                101,
                &new_key(Owner::Project("proj_a".into()), Format::Ak),
            )
            .unwrap();
        store
            .change_status("bob", 102, &created.key.id, StatusChange::Pause)
            .unwrap();
        assert_eq!(store.policy_version().unwrap(), 4);
        let events = store.audit_events(None).unwrap();
        let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["project.create", "key.create", "key.pause"]);
        assert_eq!(events[2].actor, "bob");
        assert_eq!(events[2].policy_version, 4);
        assert_eq!(store.audit_events(Some(1)).unwrap().len(), 1);
    }

    #[test]
    fn a_failed_change_changes_nothing() {
        let mut store = store_with_project();
        let before = store.policy_version().unwrap();
        let error = store
            .create_project("alice", 101, "proj_a", "org_1", None, None)
            .unwrap_err();
        assert_eq!(error.code, "project_exists");
        let error = store
            .change_status("alice", 101, "nope", StatusChange::Revoke)
            .unwrap_err();
        assert_eq!(error.status, 404);
        assert_eq!(store.policy_version().unwrap(), before);
        assert_eq!(store.audit_events(None).unwrap().len(), 1);
    }

    #[test]
    fn the_engine_validates_what_is_stored() {
        let mut store = Store::in_memory().unwrap();
        let error = store
            .create_project("alice", 1, "bad id", "org", None, None)
            .unwrap_err();
        assert_eq!(error.code, "invalid_field");
        assert!(error.message.starts_with("id:"), "{}", error.message);
        let error = store
            .create_key(
                "alice",
                1,
                &new_key(Owner::Org("org with spaces".into()), Format::Ak),
            )
            .unwrap_err();
        assert_eq!(error.code, "unknown_org", "{}", error.message);
    }

    #[test]
    fn status_transitions_are_checked() {
        let mut store = store_with_project();
        let id = store
            .create_key(
                "a",
                1,
                &new_key(Owner::Project("proj_a".into()), Format::Vpx),
            )
            .unwrap()
            .key
            .id;
        let resume = store.change_status("a", 2, &id, StatusChange::Resume);
        assert_eq!(resume.unwrap_err().code, "key_not_paused");
        store
            .change_status("a", 2, &id, StatusChange::Pause)
            .unwrap();
        let pause = store.change_status("a", 3, &id, StatusChange::Pause);
        assert_eq!(pause.unwrap_err().code, "key_paused");
        let view = store
            .change_status("a", 3, &id, StatusChange::Revoke)
            .unwrap();
        assert_eq!(view.status, KeyStatus::Revoked);
        assert_eq!(view.revoked_at, Some(3));
        for change in [
            StatusChange::Revoke,
            StatusChange::Pause,
            StatusChange::Resume,
        ] {
            let error = store.change_status("a", 4, &id, change).unwrap_err();
            assert_eq!((error.status, error.code), (409, "key_revoked"));
        }
    }

    #[test]
    fn updates_change_only_what_is_named() {
        let mut store = store_with_project();
        let id = store
            .create_key(
                "a",
                1,
                &new_key(Owner::Project("proj_a".into()), Format::Ak),
            )
            .unwrap()
            .key
            .id;
        let update = KeyUpdate {
            models: Some(Some(vec!["gpt-4o*".into()])),
            expires_at: Some(Some(500)),
            ..KeyUpdate::default()
        };
        let view = store.update_key("a", 2, &id, &update).unwrap();
        assert_eq!(view.scopes, ["chat:write"]);
        assert_eq!(view.models, Some(vec!["gpt-4o*".to_owned()]));
        assert_eq!(view.expires_at, Some(500));
        let clear = KeyUpdate {
            models: Some(None),
            ..KeyUpdate::default()
        };
        assert_eq!(store.update_key("a", 3, &id, &clear).unwrap().models, None);
        let empty_scope = KeyUpdate {
            scopes: Some(vec![String::new()]),
            ..KeyUpdate::default()
        };
        assert_eq!(
            store
                .update_key("a", 4, &id, &empty_scope)
                .unwrap_err()
                .code,
            "invalid_field"
        );
        assert_eq!(
            store
                .update_key("a", 4, &id, &KeyUpdate::default())
                .unwrap_err()
                .code,
            "nothing_to_change"
        );
    }

    #[test]
    fn soft_caps_and_rate_limits_are_stored_checked_and_published() {
        let mut store = store_with_project();
        let limits = RateLimits {
            requests_per_minute: Some(60),
            tokens_per_minute: None,
        };
        let created = store
            .create_key(
                "a",
                1,
                &NewKey {
                    owner: Owner::Project("proj_a".into()),
                    format: Format::Ak,
                    settings: KeySettings {
                        spend_cap_microusd: Some(5_000_000),
                        spend_soft_cap_microusd: Some(4_000_000),
                        rate_limits: Some(limits),
                        ..KeySettings::default()
                    },
                },
            )
            .unwrap();
        let id = created.key.id;
        assert_eq!(created.key.rate_limits, Some(limits));

        // The tokens limit is added; the requests limit stays.
        let update = KeyUpdate {
            tokens_per_minute: Some(Some(100_000)),
            ..KeyUpdate::default()
        };
        let view = store.update_key("a", 2, &id, &update).unwrap();
        let both = RateLimits {
            requests_per_minute: Some(60),
            tokens_per_minute: Some(100_000),
        };
        assert_eq!(view.rate_limits, Some(both));
        let record = store.snapshot(3).unwrap().keys.remove(0);
        assert_eq!(record.rate_limits, Some(both));
        assert_eq!(record.spend_soft_cap_microusd, Some(4_000_000));

        // The engine's rules: a soft cap below the cap, limits of at least 1.
        let bad = KeyUpdate {
            spend_soft_cap_microusd: Some(Some(5_000_000)),
            ..KeyUpdate::default()
        };
        let error = store.update_key("a", 4, &id, &bad).unwrap_err();
        assert!(
            error
                .message
                .starts_with("--spend-soft-cap-usd: the soft cap (5.00 USD)"),
            "{}",
            error.message
        );
        let lower_cap = KeyUpdate {
            spend_cap_microusd: Some(Some(1_000_000)),
            ..KeyUpdate::default()
        };
        assert_eq!(
            store.update_key("a", 4, &id, &lower_cap).unwrap_err().code,
            "invalid_field"
        );
        let zero = KeyUpdate {
            requests_per_minute: Some(Some(0)),
            ..KeyUpdate::default()
        };
        let error = store.update_key("a", 4, &id, &zero).unwrap_err();
        assert!(
            error.message.starts_with("rate_limits:"),
            "{}",
            error.message
        );

        // Clearing both limits leaves none (not an empty object).
        let clear = KeyUpdate {
            requests_per_minute: Some(None),
            tokens_per_minute: Some(None),
            spend_soft_cap_microusd: Some(None),
            ..KeyUpdate::default()
        };
        let view = store.update_key("a", 5, &id, &clear).unwrap();
        assert_eq!(
            (view.rate_limits, view.spend_soft_cap_microusd),
            (None, None)
        );

        // A rotation copies caps and limits.
        store.update_key("a", 6, &id, &update).unwrap();
        let rotation = store.rotate_key("a", 7, &id, 0).unwrap();
        assert_eq!(
            rotation
                .new
                .key
                .rate_limits
                .and_then(|l| l.tokens_per_minute),
            Some(100_000)
        );

        // Project soft caps.
        let error = store
            .create_project("a", 8, "proj_s", "org_1", Some(10), Some(10))
            .unwrap_err();
        assert_eq!(error.code, "invalid_field");
        let project = store
            .create_project("a", 8, "proj_s", "org_1", Some(10), Some(9))
            .unwrap();
        assert_eq!(project.spend_soft_cap_microusd, Some(9));
        let raise = ProjectUpdate {
            spend_cap_microusd: Some(Some(100)),
            spend_soft_cap_microusd: Some(Some(80)),
        };
        let project = store.update_project("a", 9, "proj_s", &raise).unwrap();
        assert_eq!(
            (project.spend_cap_microusd, project.spend_soft_cap_microusd),
            (Some(100), Some(80))
        );
        let below = ProjectUpdate {
            spend_cap_microusd: Some(Some(50)),
            ..ProjectUpdate::default()
        };
        assert!(store.update_project("a", 10, "proj_s", &below).is_err());
        assert_eq!(
            store.audit_events(Some(1)).unwrap()[0].action,
            "project.update"
        );
    }
}
