//! The store's public types: what callers send (settings, updates) and what they get back
//! (views of projects, keys, prices, usage batches and audit events). Views never carry a hash.

use keyward_engine::snapshot::{KeyStatus, PriceRecord, ProjectRecord, ProjectStatus, RateLimits};
use keyward_engine::usage_report::UsageAck;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::keygen::{Environment, Format, Plaintext};

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
    pub(super) fn is_empty(&self) -> bool {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    pub(super) fn record(&self) -> PriceRecord {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub org: String,
    /// `active`, `archived` or `suspended`.
    #[schema(value_type = String)]
    pub status: ProjectStatus,
    pub spend_cap_microusd: Option<u64>,
    pub spend_soft_cap_microusd: Option<u64>,
    pub spent_microusd: u64,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<u64>,
}

/// A key as operators see it: everything but its hash (and, of course, its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub format: Format,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub environment: String,
    /// `active`, `paused` or `revoked`.
    #[schema(value_type = String)]
    pub status: KeyStatus,
    pub scopes: Vec<String>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<u64>,
    pub spend_cap_microusd: Option<u64>,
    pub spend_soft_cap_microusd: Option<u64>,
    pub spent_microusd: u64,
    /// Per Envoy instance: `{"requests_per_minute"?, "tokens_per_minute"?}`; `null`: none.
    #[schema(value_type = Option<Object>)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: u64,
    pub at: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The policy version this change produced.
    pub policy_version: u64,
}

impl ProjectView {
    pub(super) fn record(&self) -> ProjectRecord {
        ProjectRecord {
            id: self.id.clone(),
            org: self.org.clone(),
            status: self.status,
            spend_cap_microusd: self.spend_cap_microusd,
            spent_microusd: self.spent_microusd,
            spend_soft_cap_microusd: self.spend_soft_cap_microusd,
            limits: None,
        }
    }
}
