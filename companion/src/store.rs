//! The embedded store: one SQLite file. Every change runs in one immediate transaction that also
//! bumps `policy_version` and writes its audit event(s), so the snapshot version, the data and the
//! audit trail never disagree. Only hashes of keys are stored; no column ever holds a plaintext
//! key or a secret.

use std::collections::BTreeMap;
use std::path::Path;

use keyward_engine::snapshot::{
    KeyRecord, KeyStatus, Policy, PriceRecord, ProjectRecord, ProjectStatus, RateLimits, Snapshot,
};
use keyward_engine::usage_report::{UsageAck, UsageReport};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde::Serialize;
use serde_json::json;

use crate::error::Error;
use crate::keygen::{self, Environment, Format, Plaintext};
use crate::units::{from_sql_int, saturating_sql_int, to_sql_int};

/// Bumped when the schema changes; a store written by a newer keyward is refused. Version 2 added
/// soft caps, rate limits, prices and usage batches (see `MIGRATIONS`).
const SCHEMA_VERSION: i64 = 2;

/// The current schema. On an existing store the `CREATE ... IF NOT EXISTS` statements leave the
/// old tables alone; `MIGRATIONS` then adds the columns those tables lack.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS policy_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO policy_version (id, version) VALUES (1, 1);

CREATE TABLE IF NOT EXISTS projects (
    id                      TEXT PRIMARY KEY,
    org                     TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'archived', 'suspended')),
    spend_cap_microusd      INTEGER,
    spent_microusd          INTEGER NOT NULL DEFAULT 0,
    created_at              INTEGER NOT NULL,
    archived_at             INTEGER,
    spend_soft_cap_microusd INTEGER,
    pending_spend_microusd  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS keys (
    id                      TEXT PRIMARY KEY,
    format                  TEXT NOT NULL CHECK (format IN ('ak', 'vpx')),
    secret_sha256           TEXT,
    key_sha256              TEXT UNIQUE,
    project                 TEXT REFERENCES projects (id),
    org                     TEXT,
    environment             TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'paused', 'revoked')),
    scopes                  TEXT NOT NULL,
    models                  TEXT,
    expires_at              INTEGER,
    spend_cap_microusd      INTEGER,
    spent_microusd          INTEGER NOT NULL DEFAULT 0,
    label                   TEXT,
    note                    TEXT,
    created_at              INTEGER NOT NULL,
    last_seen_at            INTEGER,
    rotated_from            TEXT REFERENCES keys (id),
    revoke_at               INTEGER,
    revoked_at              INTEGER,
    spend_soft_cap_microusd INTEGER,
    rate_limit_rpm          INTEGER,
    rate_limit_tpm          INTEGER,
    CHECK ((secret_sha256 IS NULL) <> (key_sha256 IS NULL)),
    CHECK ((project IS NULL) <> (org IS NULL))
);
CREATE INDEX IF NOT EXISTS keys_by_project ON keys (project);
CREATE INDEX IF NOT EXISTS keys_pending_revocation ON keys (revoke_at)
    WHERE revoke_at IS NOT NULL AND status <> 'revoked';

CREATE TABLE IF NOT EXISTS audit_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    details        TEXT NOT NULL,
    policy_version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS prices (
    model                          TEXT PRIMARY KEY,
    input_microusd_per_mtok        INTEGER NOT NULL,
    output_microusd_per_mtok       INTEGER NOT NULL,
    cached_input_microusd_per_mtok INTEGER,
    cache_write_microusd_per_mtok  INTEGER,
    updated_at                     INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS usage_batches (
    batch_id       TEXT PRIMARY KEY,
    reporter       TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    entries        INTEGER NOT NULL,
    applied        INTEGER NOT NULL,
    skipped        INTEGER NOT NULL,
    cost_microusd  INTEGER NOT NULL,
    requests       INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_batches_by_time ON usage_batches (received_at);
"#;

/// Columns added after schema version 1: (table, column, type). Each is added with
/// `ALTER TABLE ... ADD COLUMN` when `PRAGMA table_info` does not list it, so opening an older
/// store keeps its data and a current store is left alone.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    ("projects", "spend_soft_cap_microusd", "INTEGER"),
    ("keys", "spend_soft_cap_microusd", "INTEGER"),
    ("keys", "rate_limit_rpm", "INTEGER"),
    ("keys", "rate_limit_tpm", "INTEGER"),
    (
        "projects",
        "pending_spend_microusd",
        "INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "keys",
        "pending_spend_microusd",
        "INTEGER NOT NULL DEFAULT 0",
    ),
];

/// How long an applied usage batch id is remembered: a retry within this window is answered as
/// a duplicate; the rows are pruned afterwards so the table stays small.
pub const USAGE_BATCH_RETENTION_SECONDS: u64 = 30 * 86_400;

/// The actor recorded for changes keyward makes by itself (a rotation grace deadline passing).
pub const SYSTEM_ACTOR: &str = "system";

pub struct Store {
    conn: Connection,
}

/// Whom a key acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Project(String),
    Org(String),
}

/// The settings a key is created with; `rotate` copies them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySettings {
    pub environment: Environment,
    pub scopes: Vec<String>,
    /// `None`: every model.
    pub models: Option<Vec<String>>,
    pub expires_at: Option<u64>,
    pub spend_cap_microusd: Option<u64>,
    /// Past it the filter adds a warning header; must be below the cap.
    pub spend_soft_cap_microusd: Option<u64>,
    pub rate_limits: Option<RateLimits>,
    pub label: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub owner: Owner,
    pub format: Format,
    pub settings: KeySettings,
}

/// A partial update: `None` leaves a field alone; `Some(None)` clears an optional field.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub scopes: Option<Vec<String>>,
    pub models: Option<Option<Vec<String>>>,
    pub expires_at: Option<Option<u64>>,
    pub spend_cap_microusd: Option<Option<u64>>,
    pub spend_soft_cap_microusd: Option<Option<u64>>,
    /// The two rate limits change independently: `Some(None)` removes one.
    pub requests_per_minute: Option<Option<u32>>,
    pub tokens_per_minute: Option<Option<u64>>,
    pub label: Option<Option<String>>,
    pub note: Option<Option<String>>,
}

impl KeyUpdate {
    fn is_empty(&self) -> bool {
        self.scopes.is_none()
            && self.models.is_none()
            && self.expires_at.is_none()
            && self.spend_cap_microusd.is_none()
            && self.spend_soft_cap_microusd.is_none()
            && self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
            && self.label.is_none()
            && self.note.is_none()
    }
}

/// A partial update of a project's caps: `None` leaves a cap alone; `Some(None)` removes it.
#[derive(Debug, Clone, Default)]
pub struct ProjectUpdate {
    pub spend_cap_microusd: Option<Option<u64>>,
    pub spend_soft_cap_microusd: Option<Option<u64>>,
}

/// A price as operators see it: micro-USD per one million tokens, as in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceView {
    pub model: String,
    pub input_microusd_per_mtok: u64,
    pub output_microusd_per_mtok: u64,
    /// `null`: the input price applies.
    pub cached_input_microusd_per_mtok: Option<u64>,
    /// `null`: the input price applies.
    pub cache_write_microusd_per_mtok: Option<u64>,
    pub updated_at: u64,
}

impl PriceView {
    fn record(&self) -> PriceRecord {
        PriceRecord {
            model: self.model.clone(),
            input_microusd_per_mtok: self.input_microusd_per_mtok,
            output_microusd_per_mtok: self.output_microusd_per_mtok,
            cached_input_microusd_per_mtok: self.cached_input_microusd_per_mtok,
            cache_write_microusd_per_mtok: self.cache_write_microusd_per_mtok,
        }
    }
}

/// A usage report batch as it was applied (the idempotency record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageBatchView {
    pub batch_id: String,
    pub reporter: String,
    pub received_at: u64,
    /// The first policy version whose spend includes the batch (the acknowledged version).
    pub policy_version: u64,
    pub entries: u64,
    /// Entries whose key was found and charged.
    pub applied: u64,
    /// Entries skipped: unknown key.
    pub skipped: u64,
    pub cost_microusd: u64,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The outcome of a usage report: the acknowledgement, and what was skipped (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageApplied {
    pub ack: UsageAck,
    /// One line per skipped entry or skipped project charge; never a secret.
    pub warnings: Vec<String>,
}

/// A status change requested by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Revoke,
    Pause,
    Resume,
}

/// A project as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectView {
    pub id: String,
    pub org: String,
    pub status: ProjectStatus,
    pub spend_cap_microusd: Option<u64>,
    pub spend_soft_cap_microusd: Option<u64>,
    pub spent_microusd: u64,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<u64>,
}

/// A key as operators see it: everything but its hash (and, of course, its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyView {
    pub id: String,
    pub format: Format,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub environment: String,
    pub status: KeyStatus,
    pub scopes: Vec<String>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<u64>,
    pub spend_cap_microusd: Option<u64>,
    pub spend_soft_cap_microusd: Option<u64>,
    pub spent_microusd: u64,
    /// Per Envoy instance; `null`: none.
    pub rate_limits: Option<RateLimits>,
    pub label: Option<String>,
    pub note: Option<String>,
    pub created_at: u64,
    /// The last use a data plane reported (usage reports).
    pub last_seen_at: Option<u64>,
    pub rotated_from: Option<String>,
    /// Set while a rotated key is in its grace period: when it becomes revoked.
    pub revoke_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

/// A key just created: its plaintext, shown this once, and its stored view.
#[derive(Debug)]
pub struct CreatedKey {
    pub plaintext: Plaintext,
    pub key: KeyView,
}

/// The outcome of a rotation: the new key (plaintext shown once) and the old one.
#[derive(Debug)]
pub struct Rotation {
    pub new: CreatedKey,
    pub old: KeyView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub id: u64,
    pub at: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
    /// The policy version this change produced.
    pub policy_version: u64,
}

/// One row of `keys`, with its hashes: never leaves this module except as a view or a
/// snapshot record.
struct KeyRow {
    view: KeyView,
    secret_sha256: Option<String>,
    key_sha256: Option<String>,
}

fn key_status_str(status: KeyStatus) -> &'static str {
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

fn parse_project_status(text: &str) -> Result<ProjectStatus, Error> {
    match text {
        "active" => Ok(ProjectStatus::Active),
        "archived" => Ok(ProjectStatus::Archived),
        "suspended" => Ok(ProjectStatus::Suspended),
        other => Err(Error::internal(format!(
            "unknown project status {other:?} in the store"
        ))),
    }
}

fn opt_int(value: Option<u64>) -> Result<Option<i64>, Error> {
    value.map(to_sql_int).transpose()
}

fn read_opt_int(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(column)?.map(from_sql_int))
}

const KEY_COLUMNS: &str = "id, format, secret_sha256, key_sha256, project, org, environment, \
    status, scopes, models, expires_at, spend_cap_microusd, spent_microusd, label, note, \
    created_at, last_seen_at, rotated_from, revoke_at, revoked_at, spend_soft_cap_microusd, \
    rate_limit_rpm, rate_limit_tpm";

const PROJECT_COLUMNS: &str = "id, org, status, spend_cap_microusd, spent_microusd, created_at, \
    archived_at, spend_soft_cap_microusd";

const PRICE_COLUMNS: &str = "model, input_microusd_per_mtok, output_microusd_per_mtok, \
    cached_input_microusd_per_mtok, cache_write_microusd_per_mtok, updated_at";

const BATCH_COLUMNS: &str = "batch_id, reporter, received_at, policy_version, entries, applied, \
    skipped, cost_microusd, requests, input_tokens, output_tokens";

/// Raw column values; converted (with errors that are ours, not SQLite's) by `into_key_row`.
struct RawKey {
    id: String,
    format: String,
    secret_sha256: Option<String>,
    key_sha256: Option<String>,
    project: Option<String>,
    org: Option<String>,
    environment: String,
    status: String,
    scopes: String,
    models: Option<String>,
    expires_at: Option<u64>,
    spend_cap_microusd: Option<u64>,
    spent_microusd: u64,
    label: Option<String>,
    note: Option<String>,
    created_at: u64,
    last_seen_at: Option<u64>,
    rotated_from: Option<String>,
    revoke_at: Option<u64>,
    revoked_at: Option<u64>,
    spend_soft_cap_microusd: Option<u64>,
    rate_limit_rpm: Option<u64>,
    rate_limit_tpm: Option<u64>,
}

fn raw_key(row: &Row<'_>) -> rusqlite::Result<RawKey> {
    Ok(RawKey {
        id: row.get("id")?,
        format: row.get("format")?,
        secret_sha256: row.get("secret_sha256")?,
        key_sha256: row.get("key_sha256")?,
        project: row.get("project")?,
        org: row.get("org")?,
        environment: row.get("environment")?,
        status: row.get("status")?,
        scopes: row.get("scopes")?,
        models: row.get("models")?,
        expires_at: read_opt_int(row, "expires_at")?,
        spend_cap_microusd: read_opt_int(row, "spend_cap_microusd")?,
        spent_microusd: from_sql_int(row.get("spent_microusd")?),
        label: row.get("label")?,
        note: row.get("note")?,
        created_at: from_sql_int(row.get("created_at")?),
        last_seen_at: read_opt_int(row, "last_seen_at")?,
        rotated_from: row.get("rotated_from")?,
        revoke_at: read_opt_int(row, "revoke_at")?,
        revoked_at: read_opt_int(row, "revoked_at")?,
        spend_soft_cap_microusd: read_opt_int(row, "spend_soft_cap_microusd")?,
        rate_limit_rpm: read_opt_int(row, "rate_limit_rpm")?,
        rate_limit_tpm: read_opt_int(row, "rate_limit_tpm")?,
    })
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

fn rpm_of(limits: Option<&RateLimits>) -> Option<u64> {
    limits
        .and_then(|limits| limits.requests_per_minute)
        .map(u64::from)
}

fn tpm_of(limits: Option<&RateLimits>) -> Option<u64> {
    limits.and_then(|limits| limits.tokens_per_minute)
}

fn into_key_row(raw: RawKey) -> Result<KeyRow, Error> {
    let format = Format::parse(&raw.format).ok_or_else(|| {
        Error::internal(format!("unknown key format {:?} in the store", raw.format))
    })?;
    let scopes: Vec<String> = serde_json::from_str(&raw.scopes)?;
    let models: Option<Vec<String>> = raw
        .models
        .as_deref()
        .map(serde_json::from_str)
        .transpose()?;
    Ok(KeyRow {
        view: KeyView {
            id: raw.id,
            format,
            project: raw.project,
            org: raw.org,
            environment: raw.environment,
            status: parse_key_status(&raw.status)?,
            scopes,
            models,
            expires_at: raw.expires_at,
            spend_cap_microusd: raw.spend_cap_microusd,
            spend_soft_cap_microusd: raw.spend_soft_cap_microusd,
            spent_microusd: raw.spent_microusd,
            rate_limits: rate_limits_of(raw.rate_limit_rpm, raw.rate_limit_tpm)?,
            label: raw.label,
            note: raw.note,
            created_at: raw.created_at,
            last_seen_at: raw.last_seen_at,
            rotated_from: raw.rotated_from,
            revoke_at: raw.revoke_at,
            revoked_at: raw.revoked_at,
        },
        secret_sha256: raw.secret_sha256,
        key_sha256: raw.key_sha256,
    })
}

struct RawProject {
    id: String,
    org: String,
    status: String,
    spend_cap_microusd: Option<u64>,
    spent_microusd: u64,
    created_at: u64,
    archived_at: Option<u64>,
    spend_soft_cap_microusd: Option<u64>,
}

fn raw_project(row: &Row<'_>) -> rusqlite::Result<RawProject> {
    Ok(RawProject {
        id: row.get("id")?,
        org: row.get("org")?,
        status: row.get("status")?,
        spend_cap_microusd: read_opt_int(row, "spend_cap_microusd")?,
        spent_microusd: from_sql_int(row.get("spent_microusd")?),
        created_at: from_sql_int(row.get("created_at")?),
        archived_at: read_opt_int(row, "archived_at")?,
        spend_soft_cap_microusd: read_opt_int(row, "spend_soft_cap_microusd")?,
    })
}

fn into_project_view(raw: RawProject) -> Result<ProjectView, Error> {
    Ok(ProjectView {
        status: parse_project_status(&raw.status)?,
        id: raw.id,
        org: raw.org,
        spend_cap_microusd: raw.spend_cap_microusd,
        spend_soft_cap_microusd: raw.spend_soft_cap_microusd,
        spent_microusd: raw.spent_microusd,
        created_at: raw.created_at,
        archived_at: raw.archived_at,
    })
}

impl ProjectView {
    fn record(&self) -> ProjectRecord {
        ProjectRecord {
            id: self.id.clone(),
            org: self.org.clone(),
            status: self.status,
            spend_cap_microusd: self.spend_cap_microusd,
            spent_microusd: self.spent_microusd,
            spend_soft_cap_microusd: self.spend_soft_cap_microusd,
        }
    }
}

impl KeyRow {
    /// The snapshot record. A key past its rotation deadline is revoked, even if the store has
    /// not recorded that yet.
    fn record(&self, now: u64) -> KeyRecord {
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
        }
    }
}

/// Checks records with the filter's own snapshot validation, so the control plane never
/// accepts what the data plane would refuse. The error names the field.
fn validate_with_engine(
    projects: Vec<ProjectRecord>,
    keys: Vec<KeyRecord>,
    prices: Vec<PriceRecord>,
) -> Result<(), Error> {
    let snapshot = Snapshot {
        version: 1,
        issued_at: 0,
        expires_at: None,
        projects,
        keys,
        prices,
    };
    Policy::compile(snapshot).map(|_| ()).map_err(|error| {
        let path = ["keys[0]", "projects[0]", "prices[0]"]
            .iter()
            .find_map(|prefix| error.path.strip_prefix(prefix))
            .unwrap_or(&error.path)
            .trim_start_matches('.');
        let message = if path.is_empty() {
            error.message.clone()
        } else {
            format!("{path}: {}", error.message)
        };
        Error::invalid("invalid_field", message)
    })
}

/// Free-text fields end up in terminals, logs and JSON: keep them printable and bounded.
fn validate_text(field: &str, value: Option<&str>, max: usize) -> Result<(), Error> {
    if let Some(value) = value {
        if value.chars().count() > max || value.chars().any(char::is_control) {
            return Err(Error::invalid(
                "invalid_field",
                format!("{field}: at most {max} characters, no control characters"),
            ));
        }
    }
    Ok(())
}

fn validate_list(field: &str, values: &[String]) -> Result<(), Error> {
    for value in values {
        if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
            return Err(Error::invalid(
                "invalid_field",
                format!("{field}: each entry must be 1 to 128 printable characters"),
            ));
        }
    }
    Ok(())
}

fn validate_settings(settings: &KeySettings) -> Result<(), Error> {
    validate_list("scopes", &settings.scopes)?;
    if let Some(models) = &settings.models {
        validate_list("models", models)?;
    }
    validate_text("label", settings.label.as_deref(), 128)?;
    validate_text("note", settings.note.as_deref(), 1000)?;
    Ok(())
}

/// Bumps the policy version; returns the new one. Reported spend waiting for a version is
/// folded in at the same time: usage reports were acknowledged with "the next version", and this
/// is it, whatever change makes it.
fn bump_version(tx: &Transaction<'_>) -> Result<u64, Error> {
    for table in ["keys", "projects"] {
        // Held at i64::MAX: SQLite would turn an overflowing sum into a float.
        tx.execute(
            &format!(
                "UPDATE {table} SET spent_microusd = CASE \
                   WHEN spent_microusd > 9223372036854775807 - pending_spend_microusd \
                   THEN 9223372036854775807 ELSE spent_microusd + pending_spend_microusd END, \
                 pending_spend_microusd = 0 WHERE pending_spend_microusd > 0"
            ),
            [],
        )?;
    }
    let version: i64 = tx.query_row(
        "UPDATE policy_version SET version = version + 1 WHERE id = 1 RETURNING version",
        [],
        |row| row.get(0),
    )?;
    Ok(from_sql_int(version))
}

/// One audited change in progress: the transaction, who, when, and the version it produces.
struct Change<'t> {
    tx: &'t Transaction<'t>,
    actor: &'t str,
    now: u64,
    version: u64,
}

impl Change<'_> {
    fn audit(&self, action: &str, target: &str, details: serde_json::Value) -> Result<(), Error> {
        self.tx.execute(
            "INSERT INTO audit_events (at, actor, action, target, details, policy_version) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_sql_int(self.now)?,
                self.actor,
                action,
                target,
                serde_json::to_string(&details)?,
                to_sql_int(self.version)?
            ],
        )?;
        Ok(())
    }

    fn project(&self, id: &str) -> Result<ProjectView, Error> {
        find_project(self.tx, id)?
            .ok_or_else(|| Error::not_found("project_not_found", format!("No project {id:?}.")))
    }

    fn key(&self, id: &str) -> Result<KeyRow, Error> {
        find_key(self.tx, id)?.ok_or_else(key_not_found)
    }
}

fn key_not_found() -> Error {
    Error::not_found("key_not_found", "No key with this id.")
}

fn find_project(conn: &Connection, id: &str) -> Result<Option<ProjectView>, Error> {
    conn.query_row(
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
        [id],
        raw_project,
    )
    .optional()?
    .map(into_project_view)
    .transpose()
}

fn find_key(conn: &Connection, id: &str) -> Result<Option<KeyRow>, Error> {
    conn.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"),
        [id],
        raw_key,
    )
    .optional()?
    .map(into_key_row)
    .transpose()
}

fn raw_price(row: &Row<'_>) -> rusqlite::Result<PriceView> {
    Ok(PriceView {
        model: row.get("model")?,
        input_microusd_per_mtok: from_sql_int(row.get("input_microusd_per_mtok")?),
        output_microusd_per_mtok: from_sql_int(row.get("output_microusd_per_mtok")?),
        cached_input_microusd_per_mtok: read_opt_int(row, "cached_input_microusd_per_mtok")?,
        cache_write_microusd_per_mtok: read_opt_int(row, "cache_write_microusd_per_mtok")?,
        updated_at: from_sql_int(row.get("updated_at")?),
    })
}

fn find_price(conn: &Connection, model: &str) -> Result<Option<PriceView>, Error> {
    Ok(conn
        .query_row(
            &format!("SELECT {PRICE_COLUMNS} FROM prices WHERE model = ?1"),
            [model],
            raw_price,
        )
        .optional()?)
}

fn all_prices(conn: &Connection) -> Result<Vec<PriceView>, Error> {
    let mut statement = conn.prepare(&format!(
        "SELECT {PRICE_COLUMNS} FROM prices ORDER BY model"
    ))?;
    let prices = statement
        .query_map([], raw_price)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(prices)
}

/// Inserts or replaces one price row.
fn write_price(conn: &Connection, price: &PriceRecord, now: u64) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO prices (model, input_microusd_per_mtok, output_microusd_per_mtok, \
         cached_input_microusd_per_mtok, cache_write_microusd_per_mtok, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (model) DO UPDATE SET \
         input_microusd_per_mtok = excluded.input_microusd_per_mtok, \
         output_microusd_per_mtok = excluded.output_microusd_per_mtok, \
         cached_input_microusd_per_mtok = excluded.cached_input_microusd_per_mtok, \
         cache_write_microusd_per_mtok = excluded.cache_write_microusd_per_mtok, \
         updated_at = excluded.updated_at",
        params![
            price.model,
            to_sql_int(price.input_microusd_per_mtok)?,
            to_sql_int(price.output_microusd_per_mtok)?,
            opt_int(price.cached_input_microusd_per_mtok)?,
            opt_int(price.cache_write_microusd_per_mtok)?,
            to_sql_int(now)?,
        ],
    )?;
    Ok(())
}

fn price_details(price: &PriceRecord) -> serde_json::Value {
    json!({
        "input_microusd_per_mtok": price.input_microusd_per_mtok,
        "output_microusd_per_mtok": price.output_microusd_per_mtok,
        "cached_input_microusd_per_mtok": price.cached_input_microusd_per_mtok,
        "cache_write_microusd_per_mtok": price.cache_write_microusd_per_mtok,
    })
}

fn raw_batch(row: &Row<'_>) -> rusqlite::Result<UsageBatchView> {
    let int = |column: &str| row.get::<_, i64>(column).map(from_sql_int);
    Ok(UsageBatchView {
        batch_id: row.get("batch_id")?,
        reporter: row.get("reporter")?,
        received_at: int("received_at")?,
        policy_version: int("policy_version")?,
        entries: int("entries")?,
        applied: int("applied")?,
        skipped: int("skipped")?,
        cost_microusd: int("cost_microusd")?,
        requests: int("requests")?,
        input_tokens: int("input_tokens")?,
        output_tokens: int("output_tokens")?,
    })
}

/// The reporter names the audit actor: printable, at most 64 characters, never empty.
fn reporter_actor(reporter: &str) -> String {
    let cleaned: String = printable(reporter).chars().take(64).collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        "data-plane".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Report text for terminals and the audit trail: control characters dropped.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// A batch id or key id from a report, shortened and quoted for a log line.
fn shown(text: &str) -> String {
    let cleaned: String = printable(text).chars().take(80).collect();
    format!("{cleaned:?}")
}

/// A key's or project's figures before a report, and the report's running totals for it.
struct Charge {
    spent: u64,
    last_seen_at: Option<u64>,
}

impl Charge {
    fn add(&mut self, cost: u64, last_used_at: Option<u64>) {
        self.spent = self.spent.saturating_add(cost);
        self.last_seen_at = self.last_seen_at.max(last_used_at);
    }
}

fn require_not_revoked(row: &KeyRow) -> Result<(), Error> {
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

/// Adds the columns of `MIGRATIONS` that a store created by an older keyward lacks.
fn migrate(tx: &Transaction<'_>) -> Result<(), Error> {
    for (table, column, kind) in MIGRATIONS {
        let present: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            params![table, column],
            |row| row.get(0),
        )?;
        if !present {
            // Names and types are constants of this module, never input.
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (and on first use creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let conn = Connection::open(path).map_err(|error| {
            Error::internal(format!("cannot open the store {}: {error}", path.display()))
        })?;
        Store::init(conn)
    }

    #[cfg(test)]
    pub fn in_memory() -> Result<Store, Error> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, Error> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL lets `keyward serve` read snapshots while a CLI writes; "memory" for in-memory.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(Error::internal(format!(
                "the store has schema version {found}; this keyward knows up to {SCHEMA_VERSION}"
            )));
        }
        tx.execute_batch(SCHEMA)?;
        migrate(&tx)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(Store { conn })
    }

    /// Runs `apply` as one audited change: one transaction, one new policy version.
    fn change<T>(
        &mut self,
        actor: &str,
        now: u64,
        apply: impl FnOnce(&Change<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = {
            let version = bump_version(&tx)?;
            let change = Change {
                tx: &tx,
                actor,
                now,
                version,
            };
            apply(&change)?
        };
        tx.commit()?;
        Ok(result)
    }

    /// Imports the projects, keys and prices of a plain snapshot (hashes only) into an
    /// empty-for-those-ids store: for moving existing hashed keys in, and for seeding demos. One
    /// audited change. Returns the counts of projects, keys and prices.
    pub fn import_snapshot(
        &mut self,
        actor: &str,
        now: u64,
        snapshot: &Snapshot,
    ) -> Result<(usize, usize, usize), Error> {
        // The filter must be able to use what we import: check with its own compiler first.
        Policy::compile(snapshot.clone()).map_err(|error| {
            Error::invalid(
                "invalid_snapshot",
                format!("The snapshot is invalid: {error}"),
            )
        })?;
        self.change(actor, now, |change| {
            for project in &snapshot.projects {
                if find_project(change.tx, &project.id)?.is_some() {
                    return Err(Error::conflict(
                        "project_exists",
                        format!("A project {:?} already exists.", project.id),
                    ));
                }
                let status = match project.status {
                    ProjectStatus::Active => "active",
                    ProjectStatus::Archived => "archived",
                    ProjectStatus::Suspended => "suspended",
                };
                change.tx.execute(
                    "INSERT INTO projects (id, org, status, spend_cap_microusd, spent_microusd, \
                     created_at, spend_soft_cap_microusd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        project.id,
                        project.org,
                        status,
                        opt_int(project.spend_cap_microusd)?,
                        to_sql_int(project.spent_microusd)?,
                        to_sql_int(now)?,
                        opt_int(project.spend_soft_cap_microusd)?
                    ],
                )?;
            }
            for key in &snapshot.keys {
                if find_key(change.tx, &key.id)?.is_some() {
                    return Err(Error::conflict(
                        "key_exists",
                        format!("A key {:?} already exists.", key.id),
                    ));
                }
                let format = if key.secret_sha256.is_some() {
                    "ak"
                } else {
                    "vpx"
                };
                change.tx.execute(
                    "INSERT INTO keys (id, format, secret_sha256, key_sha256, project, org, \
                     environment, status, scopes, models, expires_at, spend_cap_microusd, \
                     spent_microusd, label, created_at, last_seen_at, spend_soft_cap_microusd, \
                     rate_limit_rpm, rate_limit_tpm) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
                     ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                    params![
                        key.id,
                        format,
                        key.secret_sha256.as_ref().map(|h| h.to_ascii_lowercase()),
                        key.key_sha256.as_ref().map(|h| h.to_ascii_lowercase()),
                        key.project,
                        key.org,
                        key.environment,
                        key_status_str(key.status),
                        serde_json::to_string(&key.scopes)?,
                        key.models.as_ref().map(serde_json::to_string).transpose()?,
                        opt_int(key.expires_at)?,
                        opt_int(key.spend_cap_microusd)?,
                        to_sql_int(key.spent_microusd)?,
                        key.label,
                        to_sql_int(key.created_at.unwrap_or(now))?,
                        opt_int(key.last_used_at)?,
                        opt_int(key.spend_soft_cap_microusd)?,
                        opt_int(rpm_of(key.rate_limits.as_ref()))?,
                        opt_int(tpm_of(key.rate_limits.as_ref()))?
                    ],
                )?;
            }
            for price in &snapshot.prices {
                if find_price(change.tx, &price.model)?.is_some() {
                    return Err(Error::conflict(
                        "price_exists",
                        format!("A price for {:?} already exists.", price.model),
                    ));
                }
                validate_text("model", Some(&price.model), 256)?;
                write_price(change.tx, price, now)?;
            }
            change.audit(
                "snapshot.import",
                "policy",
                json!({"projects": snapshot.projects.len(), "keys": snapshot.keys.len(),
                       "prices": snapshot.prices.len()}),
            )?;
            Ok((
                snapshot.projects.len(),
                snapshot.keys.len(),
                snapshot.prices.len(),
            ))
        })
    }

    pub fn policy_version(&self) -> Result<u64, Error> {
        let version: i64 = self.conn.query_row(
            "SELECT version FROM policy_version WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        Ok(from_sql_int(version))
    }

    // ---- projects ------------------------------------------------------------------------

    pub fn create_project(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        org: &str,
        spend_cap_microusd: Option<u64>,
        spend_soft_cap_microusd: Option<u64>,
    ) -> Result<ProjectView, Error> {
        let view = ProjectView {
            id: id.to_owned(),
            org: org.to_owned(),
            status: ProjectStatus::Active,
            spend_cap_microusd,
            spend_soft_cap_microusd,
            spent_microusd: 0,
            created_at: now,
            archived_at: None,
        };
        validate_with_engine(vec![view.record()], vec![], vec![])?;
        self.change(actor, now, |change| {
            if find_project(change.tx, id)?.is_some() {
                return Err(Error::conflict(
                    "project_exists",
                    format!("A project {id:?} already exists."),
                ));
            }
            change.tx.execute(
                "INSERT INTO projects (id, org, status, spend_cap_microusd, \
                 spend_soft_cap_microusd, created_at) VALUES (?1, ?2, 'active', ?3, ?4, ?5)",
                params![
                    id,
                    org,
                    opt_int(spend_cap_microusd)?,
                    opt_int(spend_soft_cap_microusd)?,
                    to_sql_int(now)?
                ],
            )?;
            change.audit(
                "project.create",
                id,
                json!({"org": org, "spend_cap_microusd": spend_cap_microusd,
                       "spend_soft_cap_microusd": spend_soft_cap_microusd}),
            )?;
            Ok(view)
        })
    }

    pub fn project(&self, id: &str) -> Result<ProjectView, Error> {
        find_project(&self.conn, id)?
            .ok_or_else(|| Error::not_found("project_not_found", format!("No project {id:?}.")))
    }

    /// Changes a project's caps (checked with the engine, like everything stored).
    pub fn update_project(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        update: &ProjectUpdate,
    ) -> Result<ProjectView, Error> {
        if update.spend_cap_microusd.is_none() && update.spend_soft_cap_microusd.is_none() {
            return Err(Error::invalid(
                "nothing_to_change",
                "Name at least one setting to change.",
            ));
        }
        self.change(actor, now, |change| {
            let mut view = change.project(id)?;
            let mut details = serde_json::Map::new();
            if let Some(cap) = update.spend_cap_microusd {
                view.spend_cap_microusd = cap;
                details.insert("spend_cap_microusd".into(), json!(cap));
            }
            if let Some(soft) = update.spend_soft_cap_microusd {
                view.spend_soft_cap_microusd = soft;
                details.insert("spend_soft_cap_microusd".into(), json!(soft));
            }
            validate_with_engine(vec![view.record()], vec![], vec![])?;
            change.tx.execute(
                "UPDATE projects SET spend_cap_microusd = ?2, spend_soft_cap_microusd = ?3 \
                 WHERE id = ?1",
                params![
                    id,
                    opt_int(view.spend_cap_microusd)?,
                    opt_int(view.spend_soft_cap_microusd)?
                ],
            )?;
            change.audit("project.update", id, serde_json::Value::Object(details))?;
            change.project(id)
        })
    }

    pub fn archive_project(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
    ) -> Result<ProjectView, Error> {
        self.change(actor, now, |change| {
            let project = change.project(id)?;
            if project.status == ProjectStatus::Archived {
                return Err(Error::conflict(
                    "project_archived",
                    format!("The project {id:?} is already archived."),
                ));
            }
            change.tx.execute(
                "UPDATE projects SET status = 'archived', archived_at = ?2 WHERE id = ?1",
                params![id, to_sql_int(now)?],
            )?;
            change.audit("project.archive", id, json!({}))?;
            change.project(id)
        })
    }

    pub fn projects(&self) -> Result<Vec<ProjectView>, Error> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id"
        ))?;
        let raws = statement
            .query_map([], raw_project)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter().map(into_project_view).collect()
    }

    // ---- keys ----------------------------------------------------------------------------

    pub fn create_key(&mut self, actor: &str, now: u64, new: &NewKey) -> Result<CreatedKey, Error> {
        validate_settings(&new.settings)?;
        self.change(actor, now, |change| {
            let created = insert_key(change, new, KeyStatus::Active, None)?;
            Ok(created)
        })
    }

    pub fn key(&self, id: &str) -> Result<KeyView, Error> {
        find_key(&self.conn, id)?
            .map(|row| row.view)
            .ok_or_else(key_not_found)
    }

    pub fn keys(&self, project: Option<&str>) -> Result<Vec<KeyView>, Error> {
        let (sql, filter) = match project {
            Some(project) => (
                format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE project = ?1 ORDER BY created_at, id"
                ),
                vec![project],
            ),
            None => (
                format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id"),
                vec![],
            ),
        };
        let mut statement = self.conn.prepare(&sql)?;
        let raws = statement
            .query_map(rusqlite::params_from_iter(filter), raw_key)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter()
            .map(|raw| into_key_row(raw).map(|row| row.view))
            .collect()
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
            change.tx.execute(
                "UPDATE keys SET status = ?2, revoked_at = COALESCE(?3, revoked_at) WHERE id = ?1",
                params![id, key_status_str(status), opt_int(revoked_at)?],
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
            return Err(Error::invalid(
                "nothing_to_change",
                "Name at least one setting to change.",
            ));
        }
        self.change(actor, now, |change| {
            let row = change.key(id)?;
            require_not_revoked(&row)?;
            let mut view = row.view.clone();
            let mut details = serde_json::Map::new();
            if let Some(scopes) = &update.scopes {
                view.scopes.clone_from(scopes);
                details.insert("scopes".into(), json!(scopes));
            }
            if let Some(models) = &update.models {
                view.models.clone_from(models);
                details.insert("models".into(), json!(models));
            }
            if let Some(expires_at) = update.expires_at {
                view.expires_at = expires_at;
                details.insert("expires_at".into(), json!(expires_at));
            }
            if let Some(cap) = update.spend_cap_microusd {
                view.spend_cap_microusd = cap;
                details.insert("spend_cap_microusd".into(), json!(cap));
            }
            if let Some(soft) = update.spend_soft_cap_microusd {
                view.spend_soft_cap_microusd = soft;
                details.insert("spend_soft_cap_microusd".into(), json!(soft));
            }
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
            if let Some(label) = &update.label {
                view.label.clone_from(label);
                details.insert("label".into(), json!(label));
            }
            if let Some(note) = &update.note {
                view.note.clone_from(note);
                details.insert("note".into(), json!(note));
            }
            let updated = KeyRow {
                view,
                secret_sha256: row.secret_sha256.clone(),
                key_sha256: row.key_sha256.clone(),
            };
            validate_settings(&settings_of(&updated.view))?;
            validate_row(change, &updated, now)?;
            let view = &updated.view;
            change.tx.execute(
                "UPDATE keys SET scopes = ?2, models = ?3, expires_at = ?4, \
                 spend_cap_microusd = ?5, label = ?6, note = ?7, spend_soft_cap_microusd = ?8, \
                 rate_limit_rpm = ?9, rate_limit_tpm = ?10 WHERE id = ?1",
                params![
                    id,
                    serde_json::to_string(&view.scopes)?,
                    view.models
                        .as_ref()
                        .map(serde_json::to_string)
                        .transpose()?,
                    opt_int(view.expires_at)?,
                    opt_int(view.spend_cap_microusd)?,
                    view.label,
                    view.note,
                    opt_int(view.spend_soft_cap_microusd)?,
                    opt_int(rpm_of(view.rate_limits.as_ref()))?,
                    opt_int(tpm_of(view.rate_limits.as_ref()))?,
                ],
            )?;
            change.audit("key.update", id, serde_json::Value::Object(details))?;
            Ok(change.key(id)?.view)
        })
    }

    /// Creates a key with the settings of `id`; `id` stays usable until `now + grace_seconds`,
    /// then is revoked (at once when the grace is 0).
    pub fn rotate_key(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        grace_seconds: u64,
    ) -> Result<Rotation, Error> {
        self.change(actor, now, |change| {
            let old = change.key(id)?;
            require_not_revoked(&old)?;
            if old.view.revoke_at.is_some() {
                return Err(Error::conflict(
                    "key_rotating",
                    "The key was already rotated and is in its grace period.",
                ));
            }
            let owner = match (&old.view.project, &old.view.org) {
                (Some(project), _) => Owner::Project(project.clone()),
                (None, Some(org)) => Owner::Org(org.clone()),
                (None, None) => return Err(Error::internal("a stored key has no owner")),
            };
            let new = NewKey {
                owner,
                format: old.view.format,
                settings: settings_of(&old.view),
            };
            let created = insert_key(change, &new, old.view.status, Some(id))?;
            let deadline = now.saturating_add(grace_seconds);
            if grace_seconds == 0 {
                change.tx.execute(
                    "UPDATE keys SET status = 'revoked', revoke_at = ?2, revoked_at = ?2 \
                     WHERE id = ?1",
                    params![id, to_sql_int(deadline)?],
                )?;
            } else {
                change.tx.execute(
                    "UPDATE keys SET revoke_at = ?2 WHERE id = ?1",
                    params![id, to_sql_int(deadline)?],
                )?;
            }
            change.audit(
                "key.rotate",
                id,
                json!({"new_key_id": created.key.id, "grace_seconds": grace_seconds,
                       "revoke_at": deadline}),
            )?;
            Ok(Rotation {
                old: change.key(id)?.view,
                new: created,
            })
        })
    }

    /// Revokes the keys whose rotation grace deadline has passed, as one audited change by
    /// `system`. Does nothing (and keeps the version) when none is due.
    pub fn revoke_rotated_keys(&mut self, now: u64) -> Result<Vec<String>, Error> {
        let now_sql = to_sql_int(now)?;
        let due_query = "SELECT id FROM keys WHERE revoke_at IS NOT NULL AND revoke_at <= ?1 \
                         AND status <> 'revoked' ORDER BY id";
        let any_due: bool =
            self.conn
                .query_row(&format!("SELECT EXISTS ({due_query})"), [now_sql], |row| {
                    row.get(0)
                })?;
        if !any_due {
            return Ok(vec![]);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due = {
            let mut statement = tx.prepare(due_query)?;
            let due = statement
                .query_map([now_sql], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            due
        };
        if due.is_empty() {
            return Ok(due);
        }
        let version = bump_version(&tx)?;
        {
            let change = Change {
                tx: &tx,
                actor: SYSTEM_ACTOR,
                now,
                version,
            };
            for id in &due {
                let row = change.key(id)?;
                let rotated_to: Option<String> = tx
                    .query_row("SELECT id FROM keys WHERE rotated_from = ?1", [id], |row| {
                        row.get(0)
                    })
                    .optional()?;
                tx.execute(
                    "UPDATE keys SET status = 'revoked', revoked_at = revoke_at WHERE id = ?1",
                    [id],
                )?;
                change.audit(
                    "key.revoke",
                    id,
                    json!({"from": key_status_str(row.view.status), "to": "revoked",
                           "reason": "rotation_grace_ended", "rotated_to": rotated_to}),
                )?;
            }
        }
        tx.commit()?;
        Ok(due)
    }

    // ---- prices ---------------------------------------------------------------------------

    /// The price table, by model.
    pub fn prices(&self) -> Result<Vec<PriceView>, Error> {
        all_prices(&self.conn)
    }

    /// Sets (creates or replaces) the price of a model or model prefix (`gpt-4o*`).
    pub fn set_price(
        &mut self,
        actor: &str,
        now: u64,
        price: &PriceRecord,
    ) -> Result<PriceView, Error> {
        validate_text("model", Some(&price.model), 256)?;
        validate_with_engine(vec![], vec![], vec![price.clone()])?;
        self.change(actor, now, |change| {
            let previous = find_price(change.tx, &price.model)?;
            write_price(change.tx, price, now)?;
            let mut details = price_details(price);
            if let Some(object) = details.as_object_mut() {
                object.insert(
                    "previous".into(),
                    previous.map_or(serde_json::Value::Null, |old| price_details(&old.record())),
                );
            }
            change.audit("price.set", &price.model, details)?;
            find_price(change.tx, &price.model)?
                .ok_or_else(|| Error::internal("a price just written is missing"))
        })
    }

    /// Removes a model's price; the filter then meters that model as unpriced.
    pub fn remove_price(&mut self, actor: &str, now: u64, model: &str) -> Result<PriceView, Error> {
        self.change(actor, now, |change| {
            let removed = find_price(change.tx, model)?.ok_or_else(|| {
                Error::not_found("price_not_found", format!("No price for {model:?}."))
            })?;
            change
                .tx
                .execute("DELETE FROM prices WHERE model = ?1", [model])?;
            change.audit("price.remove", model, price_details(&removed.record()))?;
            Ok(removed)
        })
    }

    // ---- usage reports ---------------------------------------------------------------------

    /// Applies a verified usage report in one transaction: adds each entry's cost to its key (and
    /// to the project it charged), moves `last_seen_at` forward, remembers the batch id and
    /// audits the batch once. The policy version is bumped once, when anything changed, so the
    /// next snapshot carries the new figures; the acknowledgement names that version. A batch id
    /// seen before is not applied again: its stored acknowledgement comes back with
    /// `duplicate: true`.
    ///
    /// Entries for unknown keys are skipped (a report may race a store restore); a project charge
    /// the key could not have made (not its own project, nor a project of its org) is skipped
    /// while the key is still charged. Both are listed in `warnings`.
    pub fn apply_usage_report(
        &mut self,
        report: &UsageReport,
        now: u64,
        publish_now: bool,
    ) -> Result<UsageApplied, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seen: Option<i64> = tx
            .query_row(
                "SELECT policy_version FROM usage_batches WHERE batch_id = ?1",
                [&report.batch_id],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(version) = seen {
            tx.commit()?;
            return Ok(UsageApplied {
                ack: UsageAck {
                    batch_id: report.batch_id.clone(),
                    version: from_sql_int(version),
                    duplicate: true,
                },
                warnings: vec![],
            });
        }
        let mut warnings = Vec::new();
        let mut keys: BTreeMap<String, Charge> = BTreeMap::new();
        let mut projects: BTreeMap<String, Charge> = BTreeMap::new();
        let (mut applied, mut skipped) = (0u64, 0u64);
        let (mut cost, mut requests, mut input_tokens, mut output_tokens) =
            (0u64, 0u64, 0u64, 0u64);
        for entry in &report.entries {
            let Some(key) = find_key(&tx, &entry.key_id)? else {
                skipped = skipped.saturating_add(1);
                warnings.push(format!(
                    "usage batch {}: unknown key {}, entry skipped",
                    shown(&report.batch_id),
                    shown(&entry.key_id)
                ));
                continue;
            };
            applied = applied.saturating_add(1);
            cost = cost.saturating_add(entry.cost_microusd);
            requests = requests.saturating_add(entry.requests);
            input_tokens = input_tokens.saturating_add(entry.input_tokens);
            output_tokens = output_tokens.saturating_add(entry.output_tokens);
            keys.entry(key.view.id.clone())
                .or_insert(Charge {
                    spent: 0,
                    last_seen_at: key.view.last_seen_at,
                })
                .add(entry.cost_microusd, entry.last_used_at);
            let Some(project_id) = &entry.project else {
                continue;
            };
            let project = find_project(&tx, project_id)?.filter(|project| {
                match (&key.view.project, &key.view.org) {
                    (Some(own), _) => own == &project.id,
                    (None, Some(org)) => org == &project.org,
                    (None, None) => false,
                }
            });
            if let Some(project) = project {
                projects
                    .entry(project.id.clone())
                    .or_insert(Charge {
                        spent: 0,
                        last_seen_at: None,
                    })
                    .add(entry.cost_microusd, None);
            } else {
                warnings.push(format!(
                    "usage batch {}: key {} cannot charge project {} (unknown, or not the key's \
                     own or of its org); charged the key only",
                    shown(&report.batch_id),
                    shown(&entry.key_id),
                    shown(project_id)
                ));
            }
        }
        let current: i64 = tx.query_row(
            "SELECT version FROM policy_version WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        // The spend waits as pending until the next version folds it in (`bump_version`): at
        // once when `publish_now`, else by `publish_pending_spend` on the server's interval, so a
        // fleet reporting every second does not make a new snapshot every second.
        let version = if applied > 0 {
            from_sql_int(current).saturating_add(1)
        } else {
            from_sql_int(current)
        };
        // Sums are exact integers, held at i64::MAX rather than wrapped (SQLite would turn an
        // overflowing sum into a float): computed here, within this transaction's lock.
        for (id, charge) in &keys {
            tx.execute(
                "UPDATE keys SET pending_spend_microusd = CASE \
                   WHEN pending_spend_microusd > 9223372036854775807 - ?2 \
                   THEN 9223372036854775807 ELSE pending_spend_microusd + ?2 END, \
                 last_seen_at = ?3 WHERE id = ?1",
                params![
                    id,
                    saturating_sql_int(charge.spent),
                    charge.last_seen_at.map(saturating_sql_int),
                ],
            )?;
        }
        for (id, charge) in &projects {
            tx.execute(
                "UPDATE projects SET pending_spend_microusd = CASE \
                   WHEN pending_spend_microusd > 9223372036854775807 - ?2 \
                   THEN 9223372036854775807 ELSE pending_spend_microusd + ?2 END WHERE id = ?1",
                params![id, saturating_sql_int(charge.spent)],
            )?;
        }
        if applied > 0 && publish_now {
            bump_version(&tx)?;
        }
        let entries = u64::try_from(report.entries.len()).unwrap_or(u64::MAX);
        tx.execute(
            &format!(
                "INSERT INTO usage_batches ({BATCH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
                 ?8, ?9, ?10, ?11)"
            ),
            params![
                report.batch_id,
                reporter_actor(&report.reporter),
                saturating_sql_int(now),
                saturating_sql_int(version),
                saturating_sql_int(entries),
                saturating_sql_int(applied),
                saturating_sql_int(skipped),
                saturating_sql_int(cost),
                saturating_sql_int(requests),
                saturating_sql_int(input_tokens),
                saturating_sql_int(output_tokens),
            ],
        )?;
        tx.execute(
            "DELETE FROM usage_batches WHERE received_at < ?1",
            [saturating_sql_int(
                now.saturating_sub(USAGE_BATCH_RETENTION_SECONDS),
            )],
        )?;
        let actor = reporter_actor(&report.reporter);
        Change {
            tx: &tx,
            actor: &actor,
            now,
            version,
        }
        .audit(
            "usage.report",
            &printable(&report.batch_id),
            json!({"entries": entries, "applied": applied, "skipped": skipped,
                   "cost_microusd": cost, "requests": requests,
                   "input_tokens": input_tokens, "output_tokens": output_tokens,
                   "keys": keys.len(), "projects": projects.len()}),
        )?;
        tx.commit()?;
        Ok(UsageApplied {
            ack: UsageAck {
                batch_id: report.batch_id.clone(),
                version,
                duplicate: false,
            },
            warnings,
        })
    }

    /// Makes the next version if reported spend is waiting for one; returns it.
    pub fn publish_pending_spend(&mut self) -> Result<Option<u64>, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let waiting: i64 = tx.query_row(
            "SELECT (SELECT COUNT(*) FROM keys WHERE pending_spend_microusd > 0) + \
                    (SELECT COUNT(*) FROM projects WHERE pending_spend_microusd > 0)",
            [],
            |row| row.get(0),
        )?;
        if waiting == 0 {
            return Ok(None);
        }
        let version = bump_version(&tx)?;
        tx.commit()?;
        Ok(Some(version))
    }

    /// The most recent usage batches, newest first.
    pub fn usage_batches(&self, limit: u64) -> Result<Vec<UsageBatchView>, Error> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {BATCH_COLUMNS} FROM usage_batches ORDER BY received_at DESC, rowid DESC \
             LIMIT ?1"
        ))?;
        let batches = statement
            .query_map([saturating_sql_int(limit)], raw_batch)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(batches)
    }

    // ---- audit and snapshot ----------------------------------------------------------------

    /// The audit trail, oldest first; with `limit`, its last `limit` events.
    pub fn audit_events(&self, limit: Option<u64>) -> Result<Vec<AuditEvent>, Error> {
        let limit = to_sql_int(limit.unwrap_or(i64::MAX.unsigned_abs()))?;
        let mut statement = self.conn.prepare(
            "SELECT * FROM (SELECT id, at, actor, action, target, details, policy_version \
             FROM audit_events ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = statement
            .query_map([limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, i64>(6)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, at, actor, action, target, details, version)| {
                Ok(AuditEvent {
                    id: from_sql_int(id),
                    at: from_sql_int(at),
                    actor,
                    action,
                    target,
                    details: serde_json::from_str(&details)?,
                    policy_version: from_sql_int(version),
                })
            })
            .collect()
    }

    /// The whole policy as a snapshot, read in one transaction so the version matches the
    /// content. Keys past their rotation deadline are emitted as revoked.
    pub fn snapshot(&mut self, issued_at: u64) -> Result<Snapshot, Error> {
        let tx = self.conn.transaction()?;
        let version: i64 = tx.query_row(
            "SELECT version FROM policy_version WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        let projects = {
            let mut statement = tx.prepare(&format!(
                "SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id"
            ))?;
            let raws = statement
                .query_map([], raw_project)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter()
                .map(|raw| into_project_view(raw).map(|view| view.record()))
                .collect::<Result<Vec<_>, Error>>()?
        };
        let keys = {
            let mut statement =
                tx.prepare(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY id"))?;
            let raws = statement
                .query_map([], raw_key)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter()
                .map(|raw| into_key_row(raw).map(|row| row.record(issued_at)))
                .collect::<Result<Vec<_>, Error>>()?
        };
        let prices = all_prices(&tx)?.iter().map(PriceView::record).collect();
        tx.commit()?;
        Ok(Snapshot {
            version: from_sql_int(version),
            issued_at,
            expires_at: None,
            projects,
            keys,
            prices,
        })
    }
}

fn settings_of(view: &KeyView) -> KeySettings {
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
fn validate_row(change: &Change<'_>, row: &KeyRow, now: u64) -> Result<(), Error> {
    let projects = match &row.view.project {
        Some(project) => vec![change.project(project)?.record()],
        None => vec![],
    };
    validate_with_engine(projects, vec![row.record(now)], vec![])
}

/// Generates and inserts a key; audits `key.create`.
fn insert_key(
    change: &Change<'_>,
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
        Owner::Org(org) => (None, Some(org.clone())),
    };
    let settings = &new.settings;
    // A clash of 12 random base62 characters is astronomically unlikely; still never overwrite.
    let mut material = keygen::generate(new.format, settings.environment)?;
    for _ in 0..4 {
        if find_key(change.tx, &material.id)?.is_none() {
            break;
        }
        material = keygen::generate(new.format, settings.environment)?;
    }
    if find_key(change.tx, &material.id)?.is_some() {
        return Err(Error::internal("could not draw an unused key id"));
    }
    let view = KeyView {
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
    };
    let row = KeyRow {
        view,
        secret_sha256: material.secret_sha256.clone(),
        key_sha256: material.key_sha256.clone(),
    };
    validate_row(change, &row, change.now)?;
    change.tx.execute(
        "INSERT INTO keys (id, format, secret_sha256, key_sha256, project, org, environment, \
         status, scopes, models, expires_at, spend_cap_microusd, label, note, created_at, \
         rotated_from, spend_soft_cap_microusd, rate_limit_rpm, rate_limit_tpm) VALUES (?1, ?2, \
         ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        params![
            material.id,
            new.format.as_str(),
            material.secret_sha256,
            material.key_sha256,
            project,
            org,
            settings.environment.as_str(),
            key_status_str(status),
            serde_json::to_string(&settings.scopes)?,
            settings
                .models
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
            opt_int(settings.expires_at)?,
            opt_int(settings.spend_cap_microusd)?,
            settings.label,
            settings.note,
            to_sql_int(change.now)?,
            rotated_from,
            opt_int(settings.spend_soft_cap_microusd)?,
            opt_int(rpm_of(settings.rate_limits.as_ref()))?,
            opt_int(tpm_of(settings.rate_limits.as_ref()))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_project() -> Store {
        let mut store = Store::in_memory().unwrap();
        store
            .create_project("alice", 100, "proj_a", "org_1", Some(5_000_000), None)
            .unwrap();
        store
    }

    fn new_key(owner: Owner, format: Format) -> NewKey {
        NewKey {
            owner,
            format,
            settings: KeySettings {
                scopes: vec!["chat:write".into()],
                ..KeySettings::default()
            },
        }
    }

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
        assert!(error.message.starts_with("org:"), "{}", error.message);
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
    fn rotation_keeps_the_old_key_until_the_deadline() {
        let mut store = store_with_project();
        let old = store
            .create_key(
                "a",
                10,
                &new_key(Owner::Project("proj_a".into()), Format::Ak),
            )
            .unwrap()
            .key;
        let rotation = store.rotate_key("a", 20, &old.id, 100).unwrap();
        assert_eq!(
            rotation.new.key.rotated_from.as_deref(),
            Some(old.id.as_str())
        );
        assert_eq!(rotation.new.key.scopes, old.scopes);
        assert_eq!(rotation.old.revoke_at, Some(120));
        let again = store.rotate_key("a", 21, &old.id, 100).unwrap_err();
        assert_eq!(again.code, "key_rotating");

        let status_at = |store: &mut Store, now: u64| {
            let snapshot = store.snapshot(now).unwrap();
            snapshot
                .keys
                .iter()
                .find(|key| key.id == old.id)
                .unwrap()
                .status
        };
        assert_eq!(status_at(&mut store, 119), KeyStatus::Active);
        assert_eq!(status_at(&mut store, 120), KeyStatus::Revoked);

        assert!(store.revoke_rotated_keys(119).unwrap().is_empty());
        let version = store.policy_version().unwrap();
        assert_eq!(
            store.revoke_rotated_keys(120).unwrap(),
            vec![old.id.clone()]
        );
        assert_eq!(store.policy_version().unwrap(), version + 1);
        assert_eq!(store.key(&old.id).unwrap().status, KeyStatus::Revoked);
        let last = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(
            (last.actor.as_str(), last.action.as_str()),
            ("system", "key.revoke")
        );
        assert!(store.revoke_rotated_keys(121).unwrap().is_empty());
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
    fn archived_projects_get_no_new_keys_and_snapshots_compile() {
        let mut store = store_with_project();
        store
            .create_key("a", 1, &new_key(Owner::Org("org_1".into()), Format::Vpx))
            .unwrap();
        store.archive_project("a", 2, "proj_a").unwrap();
        let error = store
            .create_key(
                "a",
                3,
                &new_key(Owner::Project("proj_a".into()), Format::Ak),
            )
            .unwrap_err();
        assert_eq!(error.code, "project_archived");
        let snapshot = store.snapshot(10).unwrap();
        let policy = Policy::compile(snapshot).unwrap();
        assert_eq!(policy.version, store.policy_version().unwrap());
        assert_eq!(
            policy.project("proj_a").unwrap().status,
            ProjectStatus::Archived
        );
        assert_eq!(policy.keys().len(), 1);
    }

    use keyward_engine::usage_report::UsageEntry;

    fn entry(key_id: &str, project: Option<&str>, cost: u64, last_used_at: u64) -> UsageEntry {
        UsageEntry {
            key_id: key_id.to_owned(),
            project: project.map(str::to_owned),
            cost_microusd: cost,
            requests: 2,
            input_tokens: 100,
            output_tokens: 50,
            last_used_at: Some(last_used_at),
        }
    }

    fn key_in(store: &mut Store, owner: Owner) -> String {
        store
            .create_key("a", 1, &new_key(owner, Format::Ak))
            .unwrap()
            .key
            .id
    }

    #[test]
    fn a_usage_report_is_applied_once_and_bumps_the_version_once() {
        let mut store = store_with_project();
        let k1 = key_in(&mut store, Owner::Project("proj_a".into()));
        let k2 = key_in(&mut store, Owner::Project("proj_a".into()));
        let before = store.policy_version().unwrap();
        let report = UsageReport::new(
            "envoy-1",
            "envoy-1-1",
            vec![
                entry(&k1, Some("proj_a"), 1_250_001, 500),
                entry(&k1, Some("proj_a"), 3, 400),
                entry(&k2, Some("proj_a"), 75_000, 450),
            ],
        );
        let applied = store.apply_usage_report(&report, 1000, true).unwrap();
        assert!(applied.warnings.is_empty(), "{:?}", applied.warnings);
        assert_eq!(
            applied.ack,
            UsageAck {
                batch_id: "envoy-1-1".into(),
                version: before + 1,
                duplicate: false
            }
        );
        assert_eq!(store.policy_version().unwrap(), before + 1);
        let first = store.key(&k1).unwrap();
        assert_eq!(first.spent_microusd, 1_250_004, "exact sum");
        assert_eq!(first.last_seen_at, Some(500), "the latest use");
        assert_eq!(store.key(&k2).unwrap().spent_microusd, 75_000);
        assert_eq!(store.project("proj_a").unwrap().spent_microusd, 1_325_004);

        // A retry: the same acknowledgement, nothing added, no new version or event.
        let events = store.audit_events(None).unwrap().len();
        let again = store.apply_usage_report(&report, 1005, true).unwrap();
        assert_eq!(again.ack.version, before + 1);
        assert!(again.ack.duplicate);
        assert_eq!(store.key(&k1).unwrap().spent_microusd, 1_250_004);
        assert_eq!(store.policy_version().unwrap(), before + 1);
        assert_eq!(store.audit_events(None).unwrap().len(), events);

        // One audit event for the batch, by the reporter.
        let event = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(
            (
                event.actor.as_str(),
                event.action.as_str(),
                event.target.as_str()
            ),
            ("envoy-1", "usage.report", "envoy-1-1")
        );
        assert_eq!(event.details["entries"], 3);
        assert_eq!(event.details["cost_microusd"], 1_325_004);
        assert_eq!(event.policy_version, before + 1);

        // The snapshot carries the spend and the last use.
        let snapshot = store.snapshot(2000).unwrap();
        let record = snapshot.keys.iter().find(|key| key.id == k1).unwrap();
        assert_eq!(record.spent_microusd, 1_250_004);
        assert_eq!(record.last_used_at, Some(500));
        assert_eq!(record.created_at, Some(1));
        assert_eq!(snapshot.projects[0].spent_microusd, 1_325_004);

        // An older last use never moves last_seen_at back.
        let later = UsageReport::new("envoy-2", "envoy-2-1", vec![entry(&k1, None, 1, 100)]);
        store.apply_usage_report(&later, 3000, true).unwrap();
        let first = store.key(&k1).unwrap();
        assert_eq!(
            (first.spent_microusd, first.last_seen_at),
            (1_250_005, Some(500))
        );
        assert_eq!(
            store.project("proj_a").unwrap().spent_microusd,
            1_325_004,
            "no project named: only the key is charged"
        );

        let batches = store.usage_batches(10).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].batch_id, "envoy-2-1", "newest first");
        assert_eq!(
            (batches[1].entries, batches[1].applied, batches[1].requests),
            (3, 3, 6)
        );
    }

    #[test]
    fn unknown_keys_and_foreign_projects_are_skipped_not_fatal() {
        let mut store = store_with_project();
        store
            .create_project("a", 1, "proj_b", "org_1", None, None)
            .unwrap();
        store
            .create_project("a", 1, "proj_x", "org_2", None, None)
            .unwrap();
        let own = key_in(&mut store, Owner::Project("proj_a".into()));
        let org_key = key_in(&mut store, Owner::Org("org_1".into()));
        let report = UsageReport::new(
            "envoy-1",
            "b1",
            vec![
                entry("nobody000001", Some("proj_a"), 999, 10),
                entry(&own, Some("proj_b"), 10, 10),
                entry(&org_key, Some("proj_b"), 20, 10),
                entry(&org_key, Some("proj_x"), 40, 10),
                entry(&org_key, Some("proj_gone"), 80, 10),
            ],
        );
        let applied = store.apply_usage_report(&report, 100, true).unwrap();
        assert_eq!(applied.warnings.len(), 4, "{:?}", applied.warnings);
        assert!(applied.warnings[0].contains("unknown key"));
        assert_eq!(store.key(&own).unwrap().spent_microusd, 10);
        assert_eq!(store.key(&org_key).unwrap().spent_microusd, 140);
        let spent = |store: &Store, id: &str| store.project(id).unwrap().spent_microusd;
        assert_eq!(spent(&store, "proj_a"), 0);
        assert_eq!(spent(&store, "proj_b"), 20, "the org key's project only");
        assert_eq!(spent(&store, "proj_x"), 0, "another org's project");
        let batch = store.usage_batches(1).unwrap().remove(0);
        assert_eq!((batch.entries, batch.applied, batch.skipped), (5, 4, 1));

        // A batch of unknown keys only: remembered and audited, but no new version.
        let version = store.policy_version().unwrap();
        let report = UsageReport::new("envoy-1", "b2", vec![entry("nobody000001", None, 5, 1)]);
        let applied = store.apply_usage_report(&report, 101, true).unwrap();
        assert_eq!(applied.ack.version, version);
        assert!(!applied.ack.duplicate);
        assert_eq!(store.policy_version().unwrap(), version);
        assert!(
            store
                .apply_usage_report(&report, 102, true)
                .unwrap()
                .ack
                .duplicate
        );
    }

    #[test]
    fn spend_saturates_instead_of_wrapping() {
        let mut store = store_with_project();
        let id = key_in(&mut store, Owner::Project("proj_a".into()));
        let huge = UsageReport::new(
            "r",
            "b1",
            vec![
                entry(&id, Some("proj_a"), u64::MAX, 1),
                entry(&id, Some("proj_a"), u64::MAX, 2),
            ],
        );
        store.apply_usage_report(&huge, 10, true).unwrap();
        store
            .apply_usage_report(
                &UsageReport::new("r", "b2", vec![entry(&id, None, 7, 3)]),
                11,
                true,
            )
            .unwrap();
        let max = i64::MAX.unsigned_abs();
        assert_eq!(store.key(&id).unwrap().spent_microusd, max);
        assert_eq!(store.project("proj_a").unwrap().spent_microusd, max);
        let batch = store.usage_batches(2).unwrap().remove(1);
        assert_eq!(batch.cost_microusd, max);
    }

    #[test]
    fn deferred_spend_is_acknowledged_with_the_next_version_and_folded_by_any_bump() {
        let mut store = store_with_project();
        let id = key_in(&mut store, Owner::Project("proj_a".into()));
        let before = store.policy_version().unwrap();
        let report = UsageReport::new("r", "d1", vec![entry(&id, Some("proj_a"), 500, 1)]);
        let ack = store.apply_usage_report(&report, 100, false).unwrap().ack;
        assert_eq!(ack.version, before + 1, "the next version will carry it");
        assert_eq!(store.policy_version().unwrap(), before, "no version yet");
        assert_eq!(
            store.key(&id).unwrap().spent_microusd,
            0,
            "not in any snapshot yet"
        );
        let again = store.apply_usage_report(&report, 101, false).unwrap().ack;
        assert_eq!((again.version, again.duplicate), (before + 1, true));
        store
            .apply_usage_report(
                &UsageReport::new("r", "d2", vec![entry(&id, Some("proj_a"), 20, 1)]),
                102,
                false,
            )
            .unwrap();
        assert_eq!(store.publish_pending_spend().unwrap(), Some(before + 1));
        assert_eq!(store.key(&id).unwrap().spent_microusd, 520);
        assert_eq!(store.project("proj_a").unwrap().spent_microusd, 520);
        assert_eq!(
            store.publish_pending_spend().unwrap(),
            None,
            "nothing waiting"
        );
        // Any other change that makes a version folds waiting spend in too.
        store
            .apply_usage_report(
                &UsageReport::new("r", "d3", vec![entry(&id, None, 5, 1)]),
                103,
                false,
            )
            .unwrap();
        store
            .create_project("t", 104, "proj_b", "org_1", None, None)
            .unwrap();
        assert_eq!(store.key(&id).unwrap().spent_microusd, 525);
    }

    #[test]
    fn old_batch_ids_are_pruned_after_the_retention() {
        let mut store = store_with_project();
        let id = key_in(&mut store, Owner::Project("proj_a".into()));
        let report = UsageReport::new("r", "old", vec![entry(&id, None, 1, 1)]);
        store.apply_usage_report(&report, 1000, true).unwrap();
        let later = 1000 + USAGE_BATCH_RETENTION_SECONDS + 1;
        store
            .apply_usage_report(&UsageReport::new("r", "new", vec![]), later, true)
            .unwrap();
        let ids: Vec<String> = store
            .usage_batches(10)
            .unwrap()
            .into_iter()
            .map(|batch| batch.batch_id)
            .collect();
        assert_eq!(ids, ["new"]);
    }

    fn price(model: &str, input: u64, output: u64) -> PriceRecord {
        PriceRecord {
            model: model.to_owned(),
            input_microusd_per_mtok: input,
            output_microusd_per_mtok: output,
            cached_input_microusd_per_mtok: None,
            cache_write_microusd_per_mtok: None,
        }
    }

    #[test]
    fn prices_reach_the_snapshot_sorted_and_checked_by_the_engine() {
        let mut store = Store::in_memory().unwrap();
        let mini = PriceRecord {
            cached_input_microusd_per_mtok: Some(75_000),
            ..price("gpt-4o-mini", 150_000, 600_000)
        };
        store
            .set_price("a", 1, &price("gpt-4o*", 2_500_000, 10_000_000))
            .unwrap();
        store.set_price("a", 2, &mini).unwrap();
        store
            .set_price("a", 3, &price("claude-3-5-sonnet*", 3_000_000, 15_000_000))
            .unwrap();
        let snapshot = store.snapshot(10).unwrap();
        let models: Vec<&str> = snapshot.prices.iter().map(|p| p.model.as_str()).collect();
        assert_eq!(models, ["claude-3-5-sonnet*", "gpt-4o*", "gpt-4o-mini"]);
        assert_eq!(snapshot.prices[2], mini);
        let policy = Policy::compile(snapshot).unwrap();
        let charged = policy.prices().price_for("gpt-4o-2024-08-06").unwrap();
        assert_eq!(charged.input, 2_500_000);
        assert_eq!(
            policy
                .prices()
                .price_for("gpt-4o-mini")
                .unwrap()
                .cached_input,
            75_000
        );

        // Replacing keeps one row; the audit records the previous price.
        let view = store
            .set_price("b", 4, &price("gpt-4o*", 5_000_000, 15_000_000))
            .unwrap();
        assert_eq!(
            (view.input_microusd_per_mtok, view.updated_at),
            (5_000_000, 4)
        );
        assert_eq!(store.prices().unwrap().len(), 3);
        let event = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(event.action, "price.set");
        assert_eq!(
            event.details["previous"]["input_microusd_per_mtok"],
            2_500_000
        );

        // What the filter would refuse is refused here.
        for bad in ["*", "", "bad\nmodel"] {
            let error = store.set_price("a", 5, &price(bad, 1, 1)).unwrap_err();
            assert_eq!(error.code, "invalid_field", "{bad:?}");
        }
        let too_big = price("m", u64::MAX, 1);
        assert_eq!(
            store.set_price("a", 5, &too_big).unwrap_err().code,
            "value_too_large"
        );

        let removed = store.remove_price("a", 6, "gpt-4o*").unwrap();
        assert_eq!(removed.model, "gpt-4o*");
        assert_eq!(
            store.remove_price("a", 7, "gpt-4o*").unwrap_err().status,
            404
        );
        assert_eq!(store.snapshot(10).unwrap().prices.len(), 2);
        let actions: Vec<String> = store
            .audit_events(None)
            .unwrap()
            .into_iter()
            .map(|event| event.action)
            .collect();
        assert_eq!(actions.iter().filter(|a| *a == "price.set").count(), 4);
        assert_eq!(actions.last().map(String::as_str), Some("price.remove"));
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
            error.message.starts_with("spend_soft_cap_microusd:"),
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

    /// The schema of keyward's first store, verbatim: a store it wrote must keep working.
    const SCHEMA_V1: &str = r#"
CREATE TABLE policy_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT INTO policy_version (id, version) VALUES (1, 1);
CREATE TABLE projects (
    id                 TEXT PRIMARY KEY,
    org                TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'archived', 'suspended')),
    spend_cap_microusd INTEGER,
    spent_microusd     INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    archived_at        INTEGER
);
CREATE TABLE keys (
    id                 TEXT PRIMARY KEY,
    format             TEXT NOT NULL CHECK (format IN ('ak', 'vpx')),
    secret_sha256      TEXT,
    key_sha256         TEXT UNIQUE,
    project            TEXT REFERENCES projects (id),
    org                TEXT,
    environment        TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'paused', 'revoked')),
    scopes             TEXT NOT NULL,
    models             TEXT,
    expires_at         INTEGER,
    spend_cap_microusd INTEGER,
    spent_microusd     INTEGER NOT NULL DEFAULT 0,
    label              TEXT,
    note               TEXT,
    created_at         INTEGER NOT NULL,
    last_seen_at       INTEGER,
    rotated_from       TEXT REFERENCES keys (id),
    revoke_at          INTEGER,
    revoked_at         INTEGER,
    CHECK ((secret_sha256 IS NULL) <> (key_sha256 IS NULL)),
    CHECK ((project IS NULL) <> (org IS NULL))
);
CREATE INDEX keys_by_project ON keys (project);
CREATE INDEX keys_pending_revocation ON keys (revoke_at)
    WHERE revoke_at IS NOT NULL AND status <> 'revoked';
CREATE TABLE audit_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    details        TEXT NOT NULL,
    policy_version INTEGER NOT NULL
);
INSERT INTO projects (id, org, status, spend_cap_microusd, spent_microusd, created_at)
    VALUES ('proj_old', 'org_1', 'active', 9000000, 1500000, 50);
INSERT INTO keys (id, format, secret_sha256, project, environment, status, scopes,
                  spend_cap_microusd, spent_microusd, label, created_at, last_seen_at)
    VALUES ('kOldKey00001', 'ak',
            'f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114',
            'proj_old', 'live', 'active', '["chat:write"]', 5000000, 1000000, 'legacy', 60, 70);
INSERT INTO audit_events (at, actor, action, target, details, policy_version)
    VALUES (60, 'cli', 'key.create', 'kOldKey00001', '{}', 1);
UPDATE policy_version SET version = 3;
PRAGMA user_version = 1;
"#;

    fn columns(store: &Store, table: &str) -> Vec<String> {
        store
            .conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .unwrap()
            .query_map([table], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_store_of_the_previous_schema_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA_V1)
            .unwrap();

        let mut store = Store::open(&path).unwrap();
        for column in [
            "spend_soft_cap_microusd",
            "rate_limit_rpm",
            "rate_limit_tpm",
        ] {
            assert!(
                columns(&store, "keys").iter().any(|c| c == column),
                "{column}"
            );
        }
        assert!(columns(&store, "projects")
            .iter()
            .any(|c| c == "spend_soft_cap_microusd"));
        assert!(!columns(&store, "prices").is_empty());
        assert!(!columns(&store, "usage_batches").is_empty());
        let user_version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(user_version, SCHEMA_VERSION);

        // The data is kept, and works with the new features.
        assert_eq!(store.policy_version().unwrap(), 3);
        let key = store.key("kOldKey00001").unwrap();
        assert_eq!(
            (key.spent_microusd, key.last_seen_at, key.label.as_deref()),
            (1_000_000, Some(70), Some("legacy"))
        );
        assert_eq!((key.rate_limits, key.spend_soft_cap_microusd), (None, None));
        assert_eq!(store.audit_events(None).unwrap().len(), 1);
        let update = KeyUpdate {
            requests_per_minute: Some(Some(10)),
            spend_soft_cap_microusd: Some(Some(4_000_000)),
            ..KeyUpdate::default()
        };
        store
            .update_key("cli", 100, "kOldKey00001", &update)
            .unwrap();
        let report = UsageReport::new(
            "envoy-1",
            "b1",
            vec![entry("kOldKey00001", Some("proj_old"), 500_000, 200)],
        );
        assert_eq!(
            store
                .apply_usage_report(&report, 300, true)
                .unwrap()
                .ack
                .version,
            5
        );
        let policy = Policy::compile(store.snapshot(400).unwrap()).unwrap();
        let key = policy.key_by_id("kOldKey00001").unwrap();
        assert_eq!(key.spent_microusd, 1_500_000);
        assert_eq!(key.spend_soft_cap_microusd, Some(4_000_000));
        assert_eq!(
            policy.project("proj_old").unwrap().spent_microusd,
            2_000_000
        );
        drop(store);

        // Opening again is a no-op; a store from a newer keyward is refused.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.policy_version().unwrap(), 5);
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let error = Store::open(&path).err().unwrap();
        assert!(
            error.message.contains("schema version"),
            "{}",
            error.message
        );
    }

    #[test]
    fn imports_carry_caps_limits_use_times_and_prices() {
        let mut store = Store::in_memory().unwrap();
        let snapshot: Snapshot = serde_json::from_value(json!({
            "version": 4, "issued_at": 100,
            "projects": [{"id": "p", "org": "o", "status": "active",
                          "spend_cap_microusd": 10, "spend_soft_cap_microusd": 5}],
            "keys": [{"id": "k1", "secret_sha256": "f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114",
                      "project": "p", "status": "active",
                      "rate_limits": {"tokens_per_minute": 9}, "created_at": 20, "last_used_at": 30}],
            "prices": [{"model": "m*", "input_microusd_per_mtok": 1, "output_microusd_per_mtok": 2}]
        }))
        .unwrap();
        assert_eq!(
            store.import_snapshot("a", 200, &snapshot).unwrap(),
            (1, 1, 1)
        );
        let exported = store.snapshot(300).unwrap();
        assert_eq!(exported.projects[0].spend_soft_cap_microusd, Some(5));
        let key = &exported.keys[0];
        assert_eq!((key.created_at, key.last_used_at), (Some(20), Some(30)));
        assert_eq!(key.rate_limits.and_then(|l| l.tokens_per_minute), Some(9));
        assert_eq!(exported.prices, snapshot.prices);
        let error = store.import_snapshot(
            "a",
            201,
            &Snapshot {
                projects: vec![],
                keys: vec![],
                ..snapshot
            },
        );
        assert_eq!(error.unwrap_err().code, "price_exists");
    }
}
