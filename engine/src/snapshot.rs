//! The policy snapshot pushed by the control plane (DESIGN §5): its JSON model, its validation,
//! and the compiled, indexed form the data path reads.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::budget::{LimitsRecord, OwnLimits, Plan, PlanRecord};
use crate::field_error::{from_json, FieldError};
use crate::hash::{parse_hex_digest, Sha256Digest};
use crate::pricing::PriceTable;
use crate::provider_keys::{FleetPrivateKey, ProviderKeys, ProviderKeysRecord, SealedProviderKeys};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Paused,
    Revoked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    Active,
    Archived,
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRecord {
    pub id: String,
    pub org: String,
    pub status: ProjectStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_cap_microusd: Option<u64>,
    #[serde(default)]
    pub spent_microusd: u64,
    /// A threshold below the cap: passing it adds a warning header, never a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_soft_cap_microusd: Option<u64>,
    /// Budgets that reset, quotas, a plan (see `budget`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::budget_json::read_limits"
    )]
    pub limits: Option<LimitsRecord>,
}

fn default_environment() -> String {
    "live".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// The key id: embedded in `key_id_secret` keys, a display id for opaque keys.
    pub id: String,
    /// Hex SHA-256 of the secret part of a `key_id_secret` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<String>,
    /// Hex SHA-256 of a whole opaque key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub status: KeyStatus,
    #[serde(default = "default_environment")]
    pub environment: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The model allow-list; absent means every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_cap_microusd: Option<u64>,
    #[serde(default)]
    pub spent_microusd: u64,
    /// A human label for logs and audits ("billing-service").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A threshold below the cap: passing it adds a warning header, never a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_soft_cap_microusd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// For audits only (the filter ignores it): when the key was minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    /// For audits only: the last use any data plane reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// Budgets that reset, quotas, a plan (see `budget`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::budget_json::read_limits"
    )]
    pub limits: Option<LimitsRecord>,
}

/// Per-key local rate limits (per Envoy instance; DESIGN §3 step 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

/// What a model costs, in micro-USD per one million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceRecord {
    /// An exact model name, or a prefix written with a trailing `*` (`gpt-4o*`).
    pub model: String,
    pub input_microusd_per_mtok: u64,
    pub output_microusd_per_mtok: u64,
    /// Defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_microusd_per_mtok: Option<u64>,
    /// Defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_microusd_per_mtok: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u64,
    pub issued_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub projects: Vec<ProjectRecord>,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceRecord>,
    /// Which price table this is: its version and date.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::budget_json::read_price_catalog"
    )]
    pub price_catalog: Option<PriceCatalog>,
    /// Bundles of budgets, quotas, models and rate limits that keys and projects name.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::budget_json::read_plans"
    )]
    pub plans: Vec<PlanRecord>,
    /// Provider keys, sealed to the fleet's key (see `provider_keys`): never plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_keys: Option<ProviderKeysRecord>,
}

/// The price table's identity: a version that grows with every change, and the date of the
/// prices (the newest import's, or of the last change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceCatalog {
    pub version: u64,
    /// `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

/// Whom a key acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// A project key: index into [`Policy::projects`].
    Project(usize),
    /// An organization key (a customer's service key): any active project of the org.
    Org(String),
}

/// How the filter finds a key, and the digest it compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookup {
    /// By key id, then SHA-256 of the secret.
    ById { secret_digest: Sha256Digest },
    /// By SHA-256 of the whole key.
    ByHash { key_digest: Sha256Digest },
}

/// A model allow-list entry: exact, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPattern {
    Exact(String),
    Prefix(String),
}

impl ModelPattern {
    pub(crate) fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => ModelPattern::Prefix(prefix.to_owned()),
            None => ModelPattern::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelPattern::Exact(exact) => exact == model,
            ModelPattern::Prefix(prefix) => model.starts_with(prefix.as_str()),
        }
    }
}

/// A key, compiled for the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Where the key sits in [`Policy::keys`].
    pub position: usize,
    pub id: String,
    pub lookup: KeyLookup,
    pub scope: KeyScope,
    pub status: KeyStatus,
    pub environment: String,
    pub scopes: Vec<String>,
    pub models: Option<Vec<ModelPattern>>,
    pub expires_at: Option<u64>,
    pub spend_cap_microusd: Option<u64>,
    pub spent_microusd: u64,
    pub label: Option<String>,
    pub spend_soft_cap_microusd: Option<u64>,
    /// The key's own, else its plan's.
    pub rate_limits: Option<RateLimits>,
    /// Where the key's plan sits in [`Policy::plans`].
    pub plan: Option<usize>,
    /// The key's own budgets that reset, quotas and increases.
    pub limits: Option<Box<OwnLimits>>,
    /// Windows follow this offset: the key's own, else its project's (minutes east of UTC).
    pub utc_offset_minutes: i32,
    /// Whether admission counts anything for the key (caps, windows, quotas, rate limits, own
    /// or from its plan): a key without any never touches a counter.
    pub counted: bool,
}

impl Key {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|held| held == "*" || held == scope)
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|pattern| pattern.matches(model)))
    }
}

/// A project, compiled for the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Where the project sits in [`Policy::projects`].
    pub position: usize,
    pub id: String,
    pub org: String,
    pub status: ProjectStatus,
    pub spend_cap_microusd: Option<u64>,
    pub spent_microusd: u64,
    pub spend_soft_cap_microusd: Option<u64>,
    pub plan: Option<usize>,
    pub limits: Option<Box<OwnLimits>>,
    pub utc_offset_minutes: i32,
    /// Whether admission counts anything on the project (caps, windows, quotas).
    pub counted: bool,
}

/// A validated snapshot with its indexes: O(1) lookups, built once per snapshot version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub version: u64,
    pub issued_at: u64,
    pub expires_at: Option<u64>,
    projects: Vec<Project>,
    project_index: HashMap<String, usize>,
    keys: Vec<Key>,
    by_id: HashMap<String, usize>,
    by_hash: HashMap<Sha256Digest, usize>,
    prices: PriceTable,
    plans: Vec<Plan>,
    /// Whether any decision on this policy depends on the clock.
    time_dependent: bool,
    provider_keys: ProviderKeys,
}

impl Policy {
    /// Parses and validates a snapshot document.
    pub fn from_json(json: &[u8]) -> Result<Policy, FieldError> {
        Policy::compile(from_json::<Snapshot>(json)?)
    }

    /// Validates a snapshot and builds its indexes. Every inconsistency is an error: a policy
    /// that cannot be read exactly is not used at all.
    pub fn compile(snapshot: Snapshot) -> Result<Policy, FieldError> {
        let mut builder = PolicyBuilder::new_with_plans(
            snapshot.version,
            snapshot.issued_at,
            snapshot.expires_at,
            snapshot.projects,
            snapshot.prices,
            snapshot.plans,
        )?;
        builder.reserve(snapshot.keys.len());
        for record in snapshot.keys {
            builder.add_key(record)?;
        }
        if let Some(record) = snapshot.provider_keys {
            builder.set_provider_keys(record)?;
        }
        Ok(builder.finish())
    }

    /// Opens the policy's sealed provider keys with the fleet's private key (once per policy,
    /// before it serves). Returns a line for the log when there was something to open.
    pub fn open_provider_keys(&mut self, fleet: Option<&FleetPrivateKey>) -> Option<String> {
        self.provider_keys.open(fleet)
    }

    pub fn provider_keys(&self) -> &ProviderKeys {
        &self.provider_keys
    }

    /// Whether the snapshot may decide requests at `now`.
    pub fn is_fresh(&self, now: u64, max_age_seconds: u64) -> bool {
        let not_expired = self.expires_at.is_none_or(|expires_at| now < expires_at);
        let young_enough =
            max_age_seconds == 0 || now <= self.issued_at.saturating_add(max_age_seconds);
        not_expired && young_enough
    }

    /// Whether deciding with this policy needs the current time (expiring snapshot or keys);
    /// the filter skips the clock host call when it does not.
    pub fn needs_clock(&self, max_age_seconds: u64) -> bool {
        self.time_dependent || max_age_seconds > 0
    }

    pub fn key_by_id(&self, id: &str) -> Option<&Key> {
        self.by_id
            .get(id)
            .and_then(|&position| self.keys.get(position))
    }

    pub fn key_by_hash(&self, digest: &Sha256Digest) -> Option<&Key> {
        self.by_hash
            .get(digest)
            .and_then(|&position| self.keys.get(position))
    }

    pub fn project(&self, id: &str) -> Option<&Project> {
        self.project_index
            .get(id)
            .and_then(|&position| self.projects.get(position))
    }

    pub fn project_at(&self, position: usize) -> Option<&Project> {
        self.projects.get(position)
    }

    pub fn key_at(&self, position: usize) -> Option<&Key> {
        self.keys.get(position)
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn projects(&self) -> &[Project] {
        &self.projects
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    pub fn plan_at(&self, position: Option<usize>) -> Option<&Plan> {
        self.plans.get(position?)
    }

    /// The allow-lists a model must be on: the key's own (else its plan's), and the plan's of
    /// the project the request acts on.
    fn model_lists<'p>(
        &'p self,
        key: &'p Key,
        project: Option<&Project>,
    ) -> [Option<&'p [ModelPattern]>; 2] {
        let key_list = key.models.as_deref().or_else(|| {
            self.plan_at(key.plan)
                .and_then(|plan| plan.models.as_deref())
        });
        let project_list = project
            .and_then(|project| self.plan_at(project.plan))
            .and_then(|plan| plan.models.as_deref());
        [key_list, project_list]
    }

    /// Whether a model allow-list applies to this key acting on this project.
    pub fn restricts_models(&self, key: &Key, project: Option<&Project>) -> bool {
        self.model_lists(key, project).iter().any(Option::is_some)
    }

    /// Whether `model` is on every allow-list that applies.
    pub fn allows_model(&self, key: &Key, project: Option<&Project>, model: &str) -> bool {
        self.model_lists(key, project).iter().all(|list| {
            list.is_none_or(|patterns| patterns.iter().any(|pattern| pattern.matches(model)))
        })
    }
}

/// Builds a [`Policy`] a few keys at a time, so a large snapshot can be compiled in slices
/// (a bounded amount of work per tick) while the previous policy keeps serving. The result is
/// the same as [`Policy::compile`] of a snapshot holding the keys in the order they were added.
#[derive(Debug)]
pub struct PolicyBuilder {
    version: u64,
    issued_at: u64,
    expires_at: Option<u64>,
    projects: Vec<Project>,
    project_index: HashMap<String, usize>,
    keys: Vec<Key>,
    by_id: HashMap<String, usize>,
    by_hash: HashMap<Sha256Digest, usize>,
    /// Ids of the keys found by hash (those found by id are in `by_id`): ids are unique across
    /// both kinds.
    hash_key_ids: HashSet<String>,
    prices: PriceTable,
    plans: Vec<Plan>,
    plan_index: HashMap<String, usize>,
    time_dependent: bool,
    provider_keys: ProviderKeys,
}

impl PolicyBuilder {
    /// Validates the snapshot's header, projects and prices; keys come next with `add_key`.
    pub fn new(
        version: u64,
        issued_at: u64,
        expires_at: Option<u64>,
        project_records: Vec<ProjectRecord>,
        price_records: Vec<PriceRecord>,
    ) -> Result<PolicyBuilder, FieldError> {
        Self::new_with_plans(
            version,
            issued_at,
            expires_at,
            project_records,
            price_records,
            Vec::new(),
        )
    }

    /// [`PolicyBuilder::new`] with the snapshot's plans (compiled first: projects and keys name
    /// them).
    pub fn new_with_plans(
        version: u64,
        issued_at: u64,
        expires_at: Option<u64>,
        project_records: Vec<ProjectRecord>,
        price_records: Vec<PriceRecord>,
        plan_records: Vec<PlanRecord>,
    ) -> Result<PolicyBuilder, FieldError> {
        if version == 0 {
            return Err(FieldError::new("version", "must be at least 1"));
        }
        if let Some(expires_at) = expires_at {
            if expires_at <= issued_at {
                return Err(FieldError::new("expires_at", "must be after issued_at"));
            }
        }
        let (plans, plan_index) = compile_plans(plan_records)?;
        let mut projects = Vec::with_capacity(project_records.len());
        let mut project_index = HashMap::with_capacity(project_records.len());
        for (position, record) in project_records.into_iter().enumerate() {
            let path = format!("projects[{position}]");
            require_identifier(&record.id).map_err(|m| FieldError::new(format!("{path}.id"), m))?;
            require_identifier(&record.org)
                .map_err(|m| FieldError::new(format!("{path}.org"), m))?;
            if project_index.insert(record.id.clone(), position).is_some() {
                return Err(FieldError::new(
                    format!("{path}.id"),
                    format!("duplicate project id {:?}", record.id),
                ));
            }
            check_soft_cap(record.spend_soft_cap_microusd, record.spend_cap_microusd)
                .map_err(|error| error.within(&path))?;
            let (plan, limits) = compile_limits(record.limits.as_ref(), &plan_index)
                .map_err(|error| error.within(&path))?;
            let counted = record.spend_cap_microusd.is_some()
                || record.spend_soft_cap_microusd.is_some()
                || limits.as_ref().is_some_and(|own| !own.limits.is_empty())
                || plan
                    .and_then(|position| plans.get(position))
                    .is_some_and(|plan: &Plan| !plan.limits.is_empty());
            projects.push(Project {
                position,
                id: record.id,
                org: record.org,
                status: record.status,
                spend_cap_microusd: record.spend_cap_microusd,
                spent_microusd: record.spent_microusd,
                spend_soft_cap_microusd: record.spend_soft_cap_microusd,
                plan,
                utc_offset_minutes: limits
                    .as_ref()
                    .and_then(|own| own.utc_offset_minutes)
                    .unwrap_or(0),
                limits,
                counted,
            });
        }
        let prices = PriceTable::compile(price_records).map_err(|e| e.within("prices"))?;
        Ok(PolicyBuilder {
            version,
            issued_at,
            expires_at,
            projects,
            project_index,
            keys: Vec::new(),
            by_id: HashMap::new(),
            by_hash: HashMap::new(),
            hash_key_ids: HashSet::new(),
            prices,
            plans,
            plan_index,
            time_dependent: expires_at.is_some(),
            provider_keys: ProviderKeys::None,
        })
    }

    /// Room for `additional` more keys (fewer reallocations of the big tables).
    pub fn reserve(&mut self, additional: usize) {
        self.keys.reserve(additional);
        self.by_id.reserve(additional);
    }

    /// How many keys were added so far.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Validates and indexes the next key; errors name it `keys[<position>]`.
    pub fn add_key(&mut self, record: KeyRecord) -> Result<(), FieldError> {
        let position = self.keys.len();
        let path = format!("keys[{position}]");
        let key = compile_key(
            record,
            position,
            &self.project_index,
            &self.projects,
            &self.plans,
            &self.plan_index,
        )
        .map_err(|error| error.within(&path))?;
        let duplicate_id = || {
            FieldError::new(
                format!("{path}.id"),
                format!("duplicate key id {:?}", key.id),
            )
        };
        match key.lookup {
            KeyLookup::ById { .. } => {
                if self.hash_key_ids.contains(&key.id) || self.by_id.contains_key(&key.id) {
                    return Err(duplicate_id());
                }
                self.by_id.insert(key.id.clone(), position);
            }
            KeyLookup::ByHash { key_digest } => {
                if self.by_id.contains_key(&key.id) || self.hash_key_ids.contains(&key.id) {
                    return Err(duplicate_id());
                }
                if self.by_hash.contains_key(&key_digest) {
                    return Err(FieldError::new(
                        format!("{path}.key_sha256"),
                        "duplicate key hash",
                    ));
                }
                self.hash_key_ids.insert(key.id.clone());
                self.by_hash.insert(key_digest, position);
            }
        }
        self.time_dependent |= key.expires_at.is_some();
        self.keys.push(key);
        Ok(())
    }

    /// The snapshot's sealed provider keys (checked for form here, opened by the host later).
    pub fn set_provider_keys(&mut self, record: ProviderKeysRecord) -> Result<(), FieldError> {
        let sealed = SealedProviderKeys::compile(record, self.version)
            .map_err(|error| error.within("provider_keys"))?;
        self.provider_keys = ProviderKeys::Sealed(sealed);
        Ok(())
    }

    /// The compiled policy.
    pub fn finish(self) -> Policy {
        Policy {
            time_dependent: self.time_dependent,
            version: self.version,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            projects: self.projects,
            project_index: self.project_index,
            keys: self.keys,
            by_id: self.by_id,
            by_hash: self.by_hash,
            prices: self.prices,
            plans: self.plans,
            provider_keys: self.provider_keys,
        }
    }
}

/// Plans compiled and indexed by id (ids unique, in the identifier alphabet).
fn compile_plans(
    records: Vec<PlanRecord>,
) -> Result<(Vec<Plan>, HashMap<String, usize>), FieldError> {
    let mut plans = Vec::with_capacity(records.len());
    let mut index = HashMap::with_capacity(records.len());
    for (position, record) in records.into_iter().enumerate() {
        let path = format!("plans[{position}]");
        require_identifier(&record.id).map_err(|m| FieldError::new(format!("{path}.id"), m))?;
        if index.insert(record.id.clone(), position).is_some() {
            return Err(FieldError::new(
                format!("{path}.id"),
                format!("duplicate plan id {:?}", record.id),
            ));
        }
        plans.push(Plan::compile(record).map_err(|error| error.within(&path))?);
    }
    Ok((plans, index))
}

/// An owner's `limits`: its plan's position and its own limits (`None` when it sets none).
fn compile_limits(
    record: Option<&LimitsRecord>,
    plan_index: &HashMap<String, usize>,
) -> Result<(Option<usize>, Option<Box<OwnLimits>>), FieldError> {
    let Some(record) = record else {
        return Ok((None, None));
    };
    let plan = record
        .plan
        .as_ref()
        .map(|id| {
            plan_index
                .get(id)
                .copied()
                .ok_or_else(|| FieldError::new("limits.plan", format!("unknown plan {id:?}")))
        })
        .transpose()?;
    let own = OwnLimits::compile(record).map_err(|error| error.within("limits"))?;
    let keep = own != OwnLimits::default();
    Ok((plan, keep.then(|| Box::new(own))))
}

/// Ids travel in headers and logs: keep them to a conservative, printable alphabet.
fn require_identifier(id: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
    if id.is_empty() || id.len() > 128 || !id.bytes().all(allowed) {
        return Err(format!(
            "{id:?} must be 1 to 128 characters of A-Z a-z 0-9 _ - . :"
        ));
    }
    Ok(())
}

fn check_soft_cap(soft: Option<u64>, hard: Option<u64>) -> Result<(), FieldError> {
    match (soft, hard) {
        (Some(soft), Some(hard)) if soft >= hard => Err(FieldError::new(
            "spend_soft_cap_microusd",
            "must be below spend_cap_microusd",
        )),
        _ => Ok(()),
    }
}

fn compile_key(
    record: KeyRecord,
    position: usize,
    project_index: &HashMap<String, usize>,
    projects: &[Project],
    plans: &[Plan],
    plan_index: &HashMap<String, usize>,
) -> Result<Key, FieldError> {
    require_identifier(&record.id).map_err(|m| FieldError::new("id", m))?;
    let lookup = match (&record.secret_sha256, &record.key_sha256) {
        (Some(secret), None) => KeyLookup::ById {
            secret_digest: parse_hex_digest(secret)
                .ok_or_else(|| FieldError::new("secret_sha256", "must be 64 hex characters"))?,
        },
        (None, Some(whole)) => KeyLookup::ByHash {
            key_digest: parse_hex_digest(whole)
                .ok_or_else(|| FieldError::new("key_sha256", "must be 64 hex characters"))?,
        },
        _ => {
            return Err(FieldError::new(
                "",
                "needs exactly one of secret_sha256 and key_sha256",
            ))
        }
    };
    let scope = match (record.project, record.org) {
        (Some(project), None) => {
            KeyScope::Project(*project_index.get(&project).ok_or_else(|| {
                FieldError::new("project", format!("unknown project {project:?}"))
            })?)
        }
        (None, Some(org)) => {
            require_identifier(&org).map_err(|m| FieldError::new("org", m))?;
            KeyScope::Org(org)
        }
        _ => return Err(FieldError::new("", "needs exactly one of project and org")),
    };
    require_identifier(&record.environment).map_err(|m| FieldError::new("environment", m))?;
    for (position, scope) in record.scopes.iter().enumerate() {
        if scope.is_empty() {
            return Err(FieldError::new(
                format!("scopes[{position}]"),
                "must not be empty",
            ));
        }
    }
    if let Some(limits) = &record.rate_limits {
        if limits.requests_per_minute == Some(0) || limits.tokens_per_minute == Some(0) {
            return Err(FieldError::new(
                "rate_limits",
                "limits must be at least 1 (pause the key to stop it)",
            ));
        }
    }
    check_soft_cap(record.spend_soft_cap_microusd, record.spend_cap_microusd)?;
    let (plan_position, limits) = compile_limits(record.limits.as_ref(), plan_index)?;
    let plan = plan_position.and_then(|position| plans.get(position));
    let rate_limits = record
        .rate_limits
        .filter(|limits| limits.requests_per_minute.is_some() || limits.tokens_per_minute.is_some())
        .or_else(|| plan.and_then(|plan| plan.rate_limits));
    let home_offset = match &scope {
        KeyScope::Project(position) => projects.get(*position).map(|p| p.utc_offset_minutes),
        KeyScope::Org(_) => None,
    };
    let utc_offset_minutes = limits
        .as_ref()
        .and_then(|own| own.utc_offset_minutes)
        .or(home_offset)
        .unwrap_or(0);
    let counted = record.spend_cap_microusd.is_some()
        || record.spend_soft_cap_microusd.is_some()
        || rate_limits.is_some()
        || limits.as_ref().is_some_and(|own| !own.limits.is_empty())
        || plan.is_some_and(|plan| !plan.limits.is_empty());
    Ok(Key {
        position,
        id: record.id,
        lookup,
        scope,
        status: record.status,
        environment: record.environment,
        scopes: record.scopes,
        models: record
            .models
            .map(|models| models.iter().map(|m| ModelPattern::parse(m)).collect()),
        expires_at: record.expires_at,
        spend_cap_microusd: record.spend_cap_microusd,
        spent_microusd: record.spent_microusd,
        label: record.label,
        spend_soft_cap_microusd: record.spend_soft_cap_microusd,
        rate_limits,
        plan: plan_position,
        limits,
        utc_offset_minutes,
        counted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn snapshot_json(keys: &str) -> String {
        format!(
            r#"{{"version": 3, "issued_at": 1000,
               "projects": [{{"id": "proj_a", "org": "org_1", "status": "active"}}],
               "keys": [{keys}]}}"#
        )
    }

    fn secret_hash(secret: &str) -> String {
        hex::encode(sha256(secret.as_bytes()))
    }

    #[test]
    fn compiles_and_indexes_keys() {
        let json = snapshot_json(&format!(
            r#"{{"id": "k1", "secret_sha256": "{}", "project": "proj_a", "status": "active"}},
               {{"id": "k2", "key_sha256": "{}", "org": "org_1", "status": "paused", "environment": "test"}}"#,
            secret_hash("s"),
            secret_hash("vpx_test_x")
        ));
        let policy = Policy::from_json(json.as_bytes()).expect("valid snapshot");
        assert_eq!(policy.version, 3);
        let k1 = policy.key_by_id("k1").expect("k1");
        assert_eq!(k1.scope, KeyScope::Project(0));
        assert_eq!(k1.environment, "live");
        let k2 = policy.key_by_hash(&sha256(b"vpx_test_x")).expect("k2");
        assert_eq!(k2.scope, KeyScope::Org("org_1".to_owned()));
        assert!(
            policy.key_by_id("k2").is_none(),
            "hash keys are not found by id"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                snapshot_json(
                    r#"{"id": "k1", "secret_sha256": "abc", "project": "proj_a", "status": "active"}"#,
                ),
                "keys[0].secret_sha256",
            ),
            (
                snapshot_json(&format!(
                    r#"{{"id": "k1", "secret_sha256": "{}", "project": "nope", "status": "active"}}"#,
                    secret_hash("s")
                )),
                "keys[0].project",
            ),
            (
                snapshot_json(&format!(
                    r#"{{"id": "k1", "secret_sha256": "{}", "project": "proj_a", "status": "gone"}}"#,
                    secret_hash("s")
                )),
                "keys[0].status",
            ),
            (
                snapshot_json(&format!(
                    r#"{{"id": "k1", "secret_sha256": "{}", "project": "proj_a", "status": "active", "colour": 1}}"#,
                    secret_hash("s")
                )),
                "keys[0]",
            ),
            (
                snapshot_json(&format!(
                    r#"{{"id": "k1", "secret_sha256": "{h}", "project": "proj_a", "status": "active"}},
                       {{"id": "k1", "secret_sha256": "{h}", "project": "proj_a", "status": "active"}}"#,
                    h = secret_hash("s")
                )),
                "keys[1].id",
            ),
            (
                snapshot_json(&format!(
                    r#"{{"id": "k1", "secret_sha256": "{h}", "org": "o", "project": "proj_a", "status": "active"}}"#,
                    h = secret_hash("s")
                )),
                "keys[0]",
            ),
        ];
        for (json, path) in cases {
            let error = Policy::from_json(json.as_bytes()).expect_err("must fail");
            assert!(error.path.starts_with(path), "{error} should be at {path}");
        }
    }

    #[test]
    fn freshness_honours_expiry_and_max_age() {
        let policy = Policy::from_json(br#"{"version": 1, "issued_at": 1000, "expires_at": 2000}"#)
            .expect("valid");
        assert!(policy.is_fresh(1500, 0));
        assert!(!policy.is_fresh(2000, 0));
        assert!(policy.is_fresh(1100, 100));
        assert!(!policy.is_fresh(1101, 100));
    }

    #[test]
    fn plans_are_validated_and_named_by_keys_and_projects() {
        let base = |plans: &str, project_limits: &str, key_limits: &str| {
            format!(
                r#"{{"version": 1, "issued_at": 1, "plans": [{plans}],
                   "projects": [{{"id": "p", "org": "o", "status": "active" {project_limits}}}],
                   "keys": [{{"id": "k1", "secret_sha256": "{}", "project": "p", "status": "active" {key_limits}}}]}}"#,
                secret_hash("s")
            )
        };
        let free =
            r#"{"id": "free", "quotas": [{"period": "day", "requests": 50}], "models": ["m1"]}"#;
        let policy =
            Policy::from_json(base(free, "", r#", "limits": {"plan": "free"}"#).as_bytes())
                .expect("valid");
        let key = policy.key_by_id("k1").expect("k1");
        assert!(key.counted, "the plan's quota is counted");
        assert!(policy.allows_model(key, None, "m1") && !policy.allows_model(key, None, "m2"));
        for (json, path) in [
            (
                base(free, "", r#", "limits": {"plan": "gold"}"#),
                "keys[0].limits.plan",
            ),
            (
                base(free, r#", "limits": {"plan": "gold"}"#, ""),
                "projects[0].limits.plan",
            ),
            (base(&format!("{free}, {free}"), "", ""), "plans[1].id"),
            (
                base(r#"{"id": "x", "quotas": [{"period": "day"}]}"#, "", ""),
                "plans[0].quotas[0]",
            ),
            (
                base(free, "", r#", "limits": {"utc_offset_minutes": 841}"#),
                "keys[0].limits.utc_offset_minutes",
            ),
        ] {
            let error = Policy::from_json(json.as_bytes()).expect_err("must fail");
            assert_eq!(error.path, path, "{error}");
        }
        // A key without limits and a plan without any is not counted: the fast path stays.
        let plain = Policy::from_json(
            base(r#"{"id": "none"}"#, "", r#", "limits": {"plan": "none"}"#).as_bytes(),
        )
        .expect("valid");
        assert!(!plain.key_by_id("k1").expect("k1").counted);
    }

    #[test]
    fn model_patterns() {
        assert!(ModelPattern::parse("gpt-4o*").matches("gpt-4o-mini"));
        assert!(!ModelPattern::parse("gpt-4o").matches("gpt-4o-mini"));
    }
}
