//! `keyward audit --config …`: what every key of a policy snapshot can do on every configured
//! route, and the risky settings a security team should look at before a rollout.
//!
//! The per-route answer is the engine's own decision (`keyward_engine::decision::decide`): for
//! each key, the audit builds a one-key copy of the snapshot whose hash belongs to a synthetic
//! credential of a configured key format, and decides a representative request with it. Nothing
//! printed here is a hash or a secret.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use keyward_engine::config::{Mode, PluginConfig, PolicyUnavailable, Settings, UnmatchedPaths};
use keyward_engine::route::{ModelSource, Route};
use keyward_engine::signed_snapshot::{verify_snapshot, SigningKey, ENVELOPE_FORMAT};
use keyward_engine::snapshot::{KeyRecord, KeyStatus, Policy, ProjectStatus, Snapshot};
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::ControlPlane;
use crate::error::Error;
use crate::secrets;
use crate::synthetic::{self, RequestShape, RouteDecision};

/// The name the report gives the route used when no configured route matches.
pub const FALLBACK_ROUTE: &str = "(fallback)";

/// `--unused-days` when not given.
pub const DEFAULT_UNUSED_DAYS: u64 = 30;

const SECONDS_PER_DAY: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// Where the snapshot comes from, and how to check it. Shared by `audit` and `explain`.
#[derive(Args, Debug, Clone)]
pub struct SnapshotSource {
    /// A snapshot file: a signed envelope (`keyward snapshot build`) or a plain snapshot.
    #[arg(long, conflicts_with = "control_plane")]
    pub snapshot: Option<PathBuf>,
    /// Fetch the snapshot from a control plane: GET URL/v1/snapshot (http or https).
    #[arg(long)]
    pub control_plane: Option<String>,
    /// The plugin configuration (JSON) the filter runs with.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Verify the envelope with this signing key id (with --signing-key-file).
    #[arg(long, requires = "signing_key_file")]
    pub signing_key_id: Option<String>,
    #[arg(long, requires = "signing_key_id")]
    pub signing_key_file: Option<PathBuf>,
    /// Decide as of this Unix time instead of now (reproducible reports).
    #[arg(long)]
    pub now: Option<u64>,
}

/// The policy-audit options of `keyward audit`.
#[derive(Args, Debug, Clone)]
pub struct PolicyAuditArgs {
    #[command(flatten)]
    pub source: SnapshotSource,
    /// Exit 2 when a finding is at or above this severity.
    #[arg(long, value_enum, default_value_t = Severity::High)]
    pub fail_on: Severity,
    /// Flag active keys unused for this many days before the snapshot was issued (their last
    /// reported use, or their creation when never used); 0 turns the check off.
    #[arg(long, default_value_t = DEFAULT_UNUSED_DAYS)]
    pub unused_days: u64,
}

impl PolicyAuditArgs {
    /// Whether the command line asked for a policy audit rather than the audit trail.
    pub fn requested(&self) -> bool {
        self.source.config.is_some()
            || self.source.snapshot.is_some()
            || self.source.control_plane.is_some()
    }
}

/// How the snapshot reached us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A signed envelope whose signature verified with the given key.
    Verified(String),
    /// A signed envelope, not verified (no signing key given).
    NotVerified(String),
    /// A plain snapshot.
    Unsigned,
}

/// A snapshot and configuration, loaded and validated with the engine.
pub struct Loaded {
    pub config: PluginConfig,
    pub snapshot: Snapshot,
    pub policy: Policy,
    pub signature: Signature,
    pub now: u64,
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|error| {
        Error::invalid(
            "unreadable_file",
            format!("cannot read the {what} {}: {error}", path.display()),
        )
    })
}

/// Reads the configuration and the snapshot (file, control plane, or the configuration's inline
/// policy) and validates both with the engine.
pub fn load(source: &SnapshotSource) -> Result<Loaded, Error> {
    let config_path = source.config.as_ref().ok_or_else(|| {
        Error::invalid("missing_config", "--config PLUGIN_CONFIG.json is required")
    })?;
    let config_bytes = read_file(config_path, "plugin configuration")?;
    let config = PluginConfig::from_json(&config_bytes).map_err(|error| {
        Error::invalid(
            "invalid_plugin_config",
            format!("invalid configuration: {error}"),
        )
    })?;
    let bytes = match (&source.snapshot, &source.control_plane) {
        (Some(path), _) => Some(read_file(path, "snapshot")?),
        (None, Some(url)) => Some(ControlPlane::new(url)?.get_bytes("/v1/snapshot")?),
        (None, None) => None,
    };
    let signing_key = match (&source.signing_key_id, &source.signing_key_file) {
        (Some(id), Some(file)) => Some(secrets::load_signing_key(id, file)?),
        _ => None,
    };
    let (snapshot, signature) = match bytes {
        Some(bytes) => parse_snapshot(&bytes, signing_key.as_ref())?,
        None => {
            // The configuration's inline policy: it travels inside the Envoy configuration.
            let document: Value = serde_json::from_slice(&config_bytes)?;
            let inline = document.get("policy").cloned().ok_or_else(|| {
                Error::invalid(
                    "missing_snapshot",
                    "give --snapshot or --control-plane (the configuration has no inline policy)",
                )
            })?;
            let snapshot: Snapshot = serde_json::from_value(inline)
                .map_err(|error| Error::invalid("invalid_snapshot", format!("policy: {error}")))?;
            (snapshot, Signature::Unsigned)
        }
    };
    let policy = Policy::compile(snapshot.clone()).map_err(|error| {
        Error::invalid("invalid_snapshot", format!("invalid snapshot: {error}"))
    })?;
    Ok(Loaded {
        config,
        snapshot,
        policy,
        signature,
        now: source.now.unwrap_or_else(crate::units::now),
    })
}

fn parse_snapshot(
    bytes: &[u8],
    signing_key: Option<&SigningKey>,
) -> Result<(Snapshot, Signature), Error> {
    let invalid = |message: String| Error::invalid("invalid_snapshot", message);
    let document: Value =
        serde_json::from_slice(bytes).map_err(|error| invalid(format!("not JSON: {error}")))?;
    let is_envelope = document.get("format").is_some() && document.get("signature").is_some();
    if !is_envelope {
        let snapshot: Snapshot = serde_json::from_value(document)
            .map_err(|error| invalid(format!("invalid snapshot: {error}")))?;
        return Ok((snapshot, Signature::Unsigned));
    }
    if document.get("format").and_then(Value::as_str) != Some(ENVELOPE_FORMAT) {
        return Err(invalid("unknown envelope format".to_owned()));
    }
    let key_id = document
        .get("key_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let signature = match signing_key {
        Some(key) => {
            verify_snapshot(bytes, std::slice::from_ref(key)).map_err(|rejected| {
                invalid(format!(
                    "the snapshot does not verify ({}): {rejected}",
                    rejected.reason()
                ))
            })?;
            Signature::Verified(key_id)
        }
        None => Signature::NotVerified(key_id),
    };
    let inner = document
        .get("snapshot")
        .cloned()
        .ok_or_else(|| invalid("the envelope has no snapshot".to_owned()))?;
    let snapshot: Snapshot = serde_json::from_value(inner)
        .map_err(|error| invalid(format!("invalid snapshot: {error}")))?;
    Ok((snapshot, signature))
}

/// The request the audit decides for a key on a route: its own project (an org key names the
/// first active project of its org when the route requires one), and a model of its allow-list
/// when the route reads the model from a header.
fn representative_shape(snapshot: &Snapshot, route: &Route, record: &KeyRecord) -> RequestShape {
    let reads_model = matches!(
        route.model,
        Some(ModelSource::Header(_) | ModelSource::Body)
    );
    let project = match (&record.org, route.require_project) {
        (Some(org), true) => snapshot
            .projects
            .iter()
            .find(|project| &project.org == org && project.status == ProjectStatus::Active)
            .map(|project| project.id.clone()),
        _ => None,
    };
    let model = match (reads_model, &record.models) {
        (true, Some(models)) => models.first().map(|model| match model.strip_suffix('*') {
            Some(prefix) => format!("{prefix}x"),
            None => model.clone(),
        }),
        _ => None,
    };
    RequestShape {
        project,
        model,
        ..RequestShape::default()
    }
}

/// Every configured route, then the fallback, with the name the report shows.
pub fn routes(settings: &Settings) -> Vec<(&Route, String)> {
    settings
        .routes
        .iter()
        .map(|route| (route, route.name.clone()))
        .chain(std::iter::once((
            &settings.fallback_route,
            FALLBACK_ROUTE.to_owned(),
        )))
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    pub subject: String,
    pub message: String,
}

fn status_name(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Paused => "paused",
        KeyStatus::Revoked => "revoked",
    }
}

fn key_state(record: &KeyRecord, now: u64) -> &'static str {
    if record.status != KeyStatus::Revoked && record.expires_at.is_some_and(|at| now >= at) {
        "expired"
    } else {
        status_name(record.status)
    }
}

/// The whole report: built once, printed as a table or as JSON.
pub struct Report {
    pub json: Value,
    pub findings: Vec<Finding>,
}

/// The unused-key check (#6) for one key: `Some(message)` when the key's last use (or, never
/// used, its creation) is more than `days` days before the snapshot's `issued_at`. Measured from
/// `issued_at`, not the clock, so a report on a fixed snapshot never changes. `None` also when
/// the snapshot carries neither time for the key (see `unused_data_missing`).
fn unused_key_message(record: &KeyRecord, issued_at: u64, days: u64) -> Option<String> {
    let window = days.saturating_mul(SECONDS_PER_DAY);
    let (reference, what) = match (record.last_used_at, record.created_at) {
        (Some(used), _) => (used, "last used"),
        (None, Some(created)) => (created, "never used; created"),
        (None, None) => return None,
    };
    let idle = issued_at.checked_sub(reference)?;
    (idle > window).then(|| {
        format!(
            "{what} {} ({} days before the snapshot was issued; threshold {days})",
            crate::units::format_time(reference),
            idle / SECONDS_PER_DAY
        )
    })
}

pub fn build_report(loaded: &Loaded, unused_days: u64) -> Report {
    let settings = &loaded.config.settings;
    let now = loaded.now;
    let routes = routes(settings);
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let mut finding = |severity, code, subject: &str, message: String| {
        findings.push(Finding {
            severity,
            code,
            subject: subject.to_owned(),
            message,
        });
    };

    // Configuration.
    if settings.policy_unavailable == PolicyUnavailable::FailOpen {
        finding(
            Severity::High,
            "fail_open",
            "config",
            "policy_unavailable is fail_open: without a usable policy every request passes"
                .to_owned(),
        );
    }
    if settings.mode == Mode::Shadow {
        finding(
            Severity::Medium,
            "shadow_mode",
            "config",
            "mode is shadow: denials are logged but every request is let through".to_owned(),
        );
    }
    let guarded = settings
        .routes
        .iter()
        .any(|route| !route.scopes.is_empty() || route.meter || route.model.is_some());
    if guarded && settings.unmatched_paths == UnmatchedPaths::Authenticate {
        finding(
            Severity::Medium,
            "unmatched_paths_authenticate",
            "config",
            "routes require scopes, models or metering, but a path no route names only needs a \
             valid key (unmatched_paths: authenticate); set unmatched_paths: deny so that only \
             the paths the routes name are served"
                .to_owned(),
        );
    }
    match (&loaded.signature, &loaded.config.sync) {
        (Signature::Unsigned, _) => finding(
            Severity::High,
            "snapshot_unsigned",
            "snapshot",
            "the snapshot is not a signed envelope: nothing proves who issued it".to_owned(),
        ),
        (Signature::NotVerified(_), _) => finding(
            Severity::High,
            "signature_not_verified",
            "snapshot",
            "no signing key was given (--signing-key-id/--signing-key-file): the envelope's \
             signature was not checked"
                .to_owned(),
        ),
        (Signature::Verified(_), _) => {}
    }
    match (&loaded.config.sync, &loaded.signature) {
        (None, _) => finding(
            Severity::High,
            "no_sync_signing_key",
            "config",
            "the configuration has no sync block, so no signature key: pushed snapshots cannot \
             be verified (the policy is inline)"
                .to_owned(),
        ),
        (Some(sync), Signature::Verified(id) | Signature::NotVerified(id))
            if !sync.signing_keys.iter().any(|key| &key.id == id) =>
        {
            finding(
                Severity::High,
                "signing_key_not_configured",
                "config",
                format!(
                    "the snapshot is signed with key id {id:?}, which is not in sync.signing_keys: \
                     the filter would refuse it"
                ),
            )
        }
        _ => {}
    }
    let issued_at = loaded.snapshot.issued_at;
    let active = |record: &&KeyRecord| key_state(record, now) == "active";
    if unused_days > 0 {
        let without_times: Vec<&str> = loaded
            .snapshot
            .keys
            .iter()
            .filter(active)
            .filter(|record| record.last_used_at.is_none() && record.created_at.is_none())
            .map(|record| record.id.as_str())
            .collect();
        if !without_times.is_empty() {
            notes.push(format!(
                "unused keys: {} active key(s) carry neither last_used_at nor created_at in this \
                 snapshot, so their use could not be checked: {}",
                without_times.len(),
                without_times.join(",")
            ));
        }
    }

    // Scopes some route needs.
    let needed: Vec<&String> = settings
        .routes
        .iter()
        .filter(|route| !route.exempt)
        .flat_map(|route| route.scopes.iter())
        .collect();

    let mut keys = Vec::new();
    for record in &loaded.snapshot.keys {
        let id = record.id.as_str();
        let decisions: Vec<RouteDecision> = routes
            .iter()
            .map(|(route, label)| {
                let shape = representative_shape(&loaded.snapshot, route, record);
                synthetic::route_decision(loaded, route, label, record, &shape)
            })
            .collect();
        // Revoked and expired keys can do nothing: only keys that still work get findings.
        let usable = matches!(key_state(record, now), "active" | "paused");
        if unused_days > 0 && active(&record) {
            if let Some(message) = unused_key_message(record, issued_at, unused_days) {
                finding(Severity::Medium, "key_unused", id, message);
            }
        }
        if usable && record.expires_at.is_none() {
            finding(
                Severity::Low,
                "key_without_expiry",
                id,
                "the key never expires".to_owned(),
            );
        }
        let project_cap = record.project.as_ref().and_then(|project| {
            loaded
                .snapshot
                .projects
                .iter()
                .find(|candidate| &candidate.id == project)
                .and_then(|project| project.spend_cap_microusd)
        });
        if usable
            && record.environment == "live"
            && record.spend_cap_microusd.is_none()
            && project_cap.is_none()
        {
            finding(
                Severity::Medium,
                "live_key_without_spend_cap",
                id,
                "live key with no spend cap, on the key or on its project".to_owned(),
            );
        }
        if usable {
            let broad: Vec<&str> = record
                .scopes
                .iter()
                .filter(|scope| scope.as_str() == "*" || !needed.contains(scope))
                .map(String::as_str)
                .collect();
            if !broad.is_empty() {
                finding(
                    Severity::Low,
                    "scope_broader_than_routes",
                    id,
                    format!(
                        "scopes no route requires: {} (routes require: {})",
                        broad.join(","),
                        if needed.is_empty() {
                            "none".to_owned()
                        } else {
                            let mut names: Vec<&str> =
                                needed.iter().map(|scope| scope.as_str()).collect();
                            names.sort_unstable();
                            names.dedup();
                            names.join(",")
                        }
                    ),
                );
            }
        }
        if record.environment == "test" {
            let open: Vec<&str> = routes
                .iter()
                .zip(&decisions)
                .filter(|((route, _), decision)| {
                    !route.exempt && route.environments.is_empty() && decision.decision == "allow"
                })
                .map(|((_, label), _)| label.as_str())
                .collect();
            if !open.is_empty() {
                finding(
                    Severity::Medium,
                    "test_key_on_unrestricted_route",
                    id,
                    format!(
                        "test key allowed on routes that do not restrict environments: {}",
                        open.join(",")
                    ),
                );
            }
        }
        keys.push(json!({
            "id": record.id,
            "label": record.label,
            "project": record.project,
            "org": record.org.clone().or_else(|| record.project.as_ref().and_then(|project| {
                loaded.snapshot.projects.iter().find(|p| &p.id == project).map(|p| p.org.clone())
            })),
            "environment": record.environment,
            "status": key_state(record, now),
            "scopes": record.scopes,
            "models": record.models,
            "expires_at": record.expires_at,
            "spend_cap_microusd": record.spend_cap_microusd,
            "spend_soft_cap_microusd": record.spend_soft_cap_microusd,
            "spent_microusd": record.spent_microusd,
            "rate_limits": record.rate_limits,
            "created_at": record.created_at,
            "last_used_at": record.last_used_at,
            "routes": decisions,
        }));
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.code.cmp(b.code))
            .then(a.subject.cmp(&b.subject))
    });
    let count = |severity| {
        findings
            .iter()
            .filter(|finding| finding.severity == severity)
            .count()
    };
    let summary = json!({
        "high": count(Severity::High),
        "medium": count(Severity::Medium),
        "low": count(Severity::Low),
    });
    let signature = match &loaded.signature {
        Signature::Verified(id) => json!({"state": "verified", "key_id": id}),
        Signature::NotVerified(id) => json!({"state": "not_verified", "key_id": id}),
        Signature::Unsigned => json!({"state": "unsigned"}),
    };
    let route_list: Vec<Value> = routes
        .iter()
        .map(|(route, label)| {
            json!({
                "name": label,
                "exempt": route.exempt,
                "scopes": route.scopes,
                "environments": route.environments,
                "require_project": route.require_project,
                "checks_model": route.model.is_some(),
                "deny_browser_requests": route.deny_browser_requests,
            })
        })
        .collect();
    let json = json!({
        "evaluated_at": now,
        "snapshot": {
            "version": loaded.snapshot.version,
            "issued_at": loaded.snapshot.issued_at,
            "expires_at": loaded.snapshot.expires_at,
            "usable": loaded.policy.is_fresh(now, settings.max_policy_age_seconds),
            "signature": signature,
        },
        "config": {
            "mode": if settings.mode == Mode::Shadow { "shadow" } else { "enforce" },
            "policy_unavailable": if settings.policy_unavailable == PolicyUnavailable::FailOpen {
                "fail_open"
            } else {
                "fail_closed"
            },
            "sync": loaded.config.sync.is_some(),
        },
        "routes": route_list,
        "keys": keys,
        "findings": findings,
        "summary": summary,
        "notes": notes,
    });
    Report { json, findings }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) => {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.iter().map(text).collect::<Vec<_>>().join(",")
            }
        }
        other => other.to_string(),
    }
}

static NULL: Value = Value::Null;

/// The value at a JSON pointer, or null.
fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&NULL)
}

fn print_report_table(report: &Report) {
    let json = &report.json;
    let snapshot = at(json, "/snapshot");
    println!(
        "snapshot version {}, issued_at {}, signature {}; mode {}, policy_unavailable {}",
        at(snapshot, "/version"),
        at(snapshot, "/issued_at"),
        text(at(snapshot, "/signature/state")),
        text(at(json, "/config/mode")),
        text(at(json, "/config/policy_unavailable")),
    );
    println!();
    let route_names: Vec<String> = at(json, "/routes")
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|route| text(at(route, "/name")))
                .collect()
        })
        .unwrap_or_default();
    let mut headers: Vec<String> = [
        "KEY",
        "PROJECT",
        "ORG",
        "ENV",
        "STATUS",
        "SCOPES",
        "MODELS",
        "CAP",
        "EXPIRES",
        "LAST USED",
    ]
    .iter()
    .map(|header| (*header).to_owned())
    .collect();
    headers.extend(route_names.iter().map(|name| name.to_uppercase()));
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = at(json, "/keys")
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|key| {
            let mut row = vec![
                text(at(key, "/id")),
                text(at(key, "/project")),
                text(at(key, "/org")),
                text(at(key, "/environment")),
                text(at(key, "/status")),
                text(at(key, "/scopes")),
                if at(key, "/models").is_null() {
                    "*".to_owned()
                } else {
                    text(at(key, "/models"))
                },
                at(key, "/spend_cap_microusd")
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), crate::units::format_usd),
                at(key, "/expires_at")
                    .as_u64()
                    .map_or_else(|| "never".to_owned(), crate::units::format_time),
                at(key, "/last_used_at")
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), crate::units::format_time),
            ];
            let decisions = at(key, "/routes").as_array().unwrap_or(&empty);
            row.extend(
                decisions
                    .iter()
                    .map(|decision| match at(decision, "/code").as_str() {
                        Some(code) => format!("deny:{code}"),
                        None => text(at(decision, "/decision")),
                    }),
            );
            row
        })
        .collect();
    crate::cli::output::print_table(
        &headers.iter().map(String::as_str).collect::<Vec<_>>(),
        rows,
    );
    println!();
    if report.findings.is_empty() {
        println!("no findings");
    } else {
        let rows = report
            .findings
            .iter()
            .map(|finding| {
                vec![
                    finding.severity.name().to_uppercase(),
                    finding.code.to_owned(),
                    finding.subject.clone(),
                    finding.message.clone(),
                ]
            })
            .collect();
        crate::cli::output::print_table(&["SEVERITY", "FINDING", "SUBJECT", "DETAIL"], rows);
    }
    if let Some(notes) = at(json, "/notes").as_array() {
        for note in notes {
            println!("note: {}", text(note));
        }
    }
}

/// `keyward audit --config …`: exit 2 when a finding reaches `--fail-on`.
pub fn run(args: &PolicyAuditArgs, json: bool) -> Result<ExitCode, Error> {
    let loaded = load(&args.source)?;
    let report = build_report(&loaded, args.unused_days);
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json)?);
    } else {
        print_report_table(&report);
    }
    let failing = report
        .findings
        .iter()
        .filter(|finding| finding.severity >= args.fail_on)
        .count();
    if failing > 0 {
        eprintln!(
            "keyward: {failing} finding(s) at or above {}",
            args.fail_on.name()
        );
        Ok(ExitCode::from(2))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(created_at: Option<u64>, last_used_at: Option<u64>) -> KeyRecord {
        serde_json::from_value(json!({
            "id": "k", "secret_sha256": "00", "project": "p", "status": "active",
            "created_at": created_at, "last_used_at": last_used_at,
        }))
        .unwrap()
    }

    #[test]
    fn unused_means_older_than_the_window_before_issue() {
        let day = SECONDS_PER_DAY;
        let issued = 1_000 * day;
        // Exactly 30 days is not over the line; one second more is.
        assert!(unused_key_message(&record(None, Some(issued - 30 * day)), issued, 30).is_none());
        let message =
            unused_key_message(&record(None, Some(issued - 30 * day - 1)), issued, 30).unwrap();
        assert!(message.starts_with("last used "), "{message}");
        // The last use wins over the creation time; creation counts when never used.
        assert!(unused_key_message(&record(Some(0), Some(issued)), issued, 30).is_none());
        let message = unused_key_message(&record(Some(0), None), issued, 30).unwrap();
        assert!(message.starts_with("never used; created "), "{message}");
        assert!(message.contains("1000 days"), "{message}");
        // No data, or a use after the snapshot was issued: no finding.
        assert!(unused_key_message(&record(None, None), issued, 30).is_none());
        assert!(unused_key_message(&record(None, Some(issued + 5)), issued, 0).is_none());
        // An absurd threshold saturates instead of overflowing.
        assert!(unused_key_message(&record(Some(0), None), issued, u64::MAX).is_none());
    }
}
