//! The audit report: what each key can do on each route, and the findings.

use keyward_engine::config::{Mode, PolicyUnavailable, UnmatchedPaths};
use keyward_engine::snapshot::{KeyRecord, KeyStatus};
use serde::Serialize;
use serde_json::{json, Value};

use super::artifact::Artifact;
use super::decision::representative_shape;
use super::*;
use crate::synthetic::{self, RouteDecision};

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
    if settings.mode == Mode::Shadow {
        finding(
            Severity::Medium,
            "shadow_mode",
            "config",
            "mode is shadow: denials are logged but every request is let through".to_owned(),
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
            "no public key was given (--public-key ID=FILE): the envelope's signature was not \
             checked"
                .to_owned(),
        ),
        (Signature::Verified(_), _) => {}
    }
    // The configuration handed to `render`: render adds the sync block (and its keys) itself.
    let before_render = loaded.artifact == Artifact::PluginConfig && loaded.config.policy.is_none();
    match (&loaded.config.sync, &loaded.signature) {
        (None, _) if before_render => notes.push(
            "the configuration has no sync block: `keyward render` adds it (with the keys that \
             verify snapshots); audit the rendered Envoy bootstrap or WasmPlugin to check it"
                .to_owned(),
        ),
        (None, _) => finding(
            Severity::High,
            "no_sync_signing_key",
            "config",
            "the configuration has no sync block, so no signature key: pushed snapshots cannot \
             be verified (the policy is inline)"
                .to_owned(),
        ),
        (Some(sync), Signature::Verified(id) | Signature::NotVerified(id))
            if !sync.public_keys.iter().any(|key| &key.id == id) =>
        {
            finding(
                Severity::High,
                "signing_key_not_configured",
                "config",
                format!(
                    "the snapshot is signed with key id {id:?}, which is not in sync.public_keys: \
                     the filter would refuse it"
                ),
            )
        }
        _ => {}
    }
    if let Some(sync) = &loaded.config.sync {
        if sync.token.is_none() {
            finding(
                Severity::Medium,
                "sync_without_token",
                "config",
                "sync has no token: keyward serve answers snapshot polls and usage reports only \
                 with a data-plane token (keyward dataplane token create)"
                    .to_owned(),
            );
        }
        if settings.max_policy_age_seconds == 0 {
            finding(
                Severity::Medium,
                "no_max_policy_age",
                "config",
                "max_policy_age_seconds is 0: a data plane cut off from the control plane keeps \
                 enforcing its last policy until that snapshot's expires_at"
                    .to_owned(),
            );
        }
    }
    for found in super::prices::unpriced_models(loaded) {
        finding(found.severity, found.code, &found.subject, found.message);
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
            "read_from": loaded.artifact.name(),
        },
        "routes": route_list,
        "keys": keys,
        "findings": findings,
        "summary": summary,
        "notes": notes,
    });
    Report { json, findings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_engine::snapshot::KeyRecord;
    use serde_json::json;

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
