//! Usage reports: how a data plane tells the control plane what its keys spent.
//!
//! A report is one batch of per-(key, project) totals accumulated since the previous batch.
//! It is POSTed as JSON with the data plane's own credential (`authorization: Bearer <data-plane
//! token>`, the sync block's `token`): a token that can read snapshots and report usage and
//! nothing else, revocable on its own, and never able to sign a policy. The control plane checks
//! every entry against its store (the key's project or org, the price table, the time) and
//! refuses a batch that does not add up. `batch_id` makes a retry idempotent: the control plane
//! applies a batch id once and answers a repeat with the same acknowledgement. The
//! acknowledgement names the snapshot version that includes the batch, so the data plane knows
//! when its local copy of that spend may be dropped.

use serde::{Deserialize, Serialize};

use crate::field_error::{from_json, FieldError};
use crate::provider::ProviderKeyUse;

pub const REPORT_FORMAT: &str = "keyward.usage-report.v1";
/// Upper bound on entries per batch, so one report stays a small request.
pub const MAX_ENTRIES_PER_REPORT: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEntry {
    pub key_id: String,
    /// The project charged: the key's own, or the one an org key acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub cost_microusd: u64,
    pub requests: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    /// Unix seconds of the key's last allowed request in this batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// The key's budget and quota windows this usage was counted in (`2026-11-30`,
    /// `2026-W48`, `2026-11`), on the data plane's clock at admission: the control plane adds
    /// it to exactly these windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_windows: Vec<String>,
    /// The same for the project charged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_windows: Vec<String>,
    /// The provider key these requests were forwarded with, as `<scope>/<provider>`
    /// (`project/openai`, `org/anthropic`; [`ProviderKeyUse::label`]), never key material: for
    /// its last use. Absent without one. A control plane older than this field refuses reports
    /// that carry it: upgrade control planes before filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub format: String,
    /// Which data plane (Envoy instance) sent it; informational.
    pub reporter: String,
    /// Unique per batch; the idempotency key.
    pub batch_id: String,
    pub entries: Vec<UsageEntry>,
}

/// The control plane's answer to a report (HTTP 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAck {
    pub batch_id: String,
    /// The first snapshot version whose `spent_microusd` figures include this batch.
    pub version: u64,
    /// True when this batch id had already been applied (a retry).
    #[serde(default)]
    pub duplicate: bool,
}

impl UsageReport {
    pub fn new(reporter: &str, batch_id: &str, entries: Vec<UsageEntry>) -> UsageReport {
        UsageReport {
            format: REPORT_FORMAT.to_owned(),
            reporter: reporter.to_owned(),
            batch_id: batch_id.to_owned(),
            entries,
        }
    }
}

/// Parses and checks the shape of a report body (the control plane checks its content against
/// the store).
pub fn parse_report(body: &[u8]) -> Result<UsageReport, FieldError> {
    let report: UsageReport = from_json(body)?;
    if report.format != REPORT_FORMAT {
        return Err(FieldError::new(
            "format",
            format!("must be {REPORT_FORMAT:?}"),
        ));
    }
    if report.batch_id.is_empty()
        || report.batch_id.len() > 200
        || report.batch_id.chars().any(char::is_control)
    {
        return Err(FieldError::new(
            "batch_id",
            "must be 1 to 200 characters, none of them control characters",
        ));
    }
    if report.entries.len() > MAX_ENTRIES_PER_REPORT {
        return Err(FieldError::new(
            "entries",
            format!("at most {MAX_ENTRIES_PER_REPORT} per report"),
        ));
    }
    for (position, entry) in report.entries.iter().enumerate() {
        if let Some(text) = &entry.provider_key {
            if ProviderKeyUse::parse(text).is_none() {
                return Err(FieldError::new(
                    format!("entries[{position}].provider_key"),
                    "must be <project|org>/<provider>",
                ));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn body() -> Vec<u8> {
        let report = UsageReport::new(
            "envoy-1",
            "envoy-1-7",
            vec![UsageEntry {
                key_id: "k1".to_owned(),
                project: Some("proj_a".to_owned()),
                cost_microusd: 1234,
                requests: 2,
                input_tokens: 10,
                output_tokens: 20,
                last_used_at: Some(1_700_000_000),
                key_windows: vec![],
                project_windows: vec![],
                provider_key: None,
            }],
        );
        serde_json::to_vec(&report).expect("serializes")
    }

    #[test]
    fn a_report_round_trips() {
        let report = parse_report(&body()).expect("parses");
        assert_eq!(report.batch_id, "envoy-1-7");
        assert_eq!(report.entries[0].cost_microusd, 1234);
    }

    #[test]
    fn the_provider_key_used_is_optional_and_names_no_secret() {
        use crate::provider::{KeyOwnerKind, Provider};
        let plain = String::from_utf8(body()).expect("utf-8");
        assert!(!plain.contains("provider_key"), "absent when none: {plain}");
        let mut report = parse_report(&body()).expect("parses");
        let used = ProviderKeyUse {
            provider: Provider::Openai,
            owner: KeyOwnerKind::Org,
        };
        report.entries[0].provider_key = Some(used.label());
        let text = serde_json::to_string(&report).expect("serializes");
        assert!(text.contains(r#""provider_key":"org/openai""#), "{text}");
        assert_eq!(parse_report(text.as_bytes()), Ok(report));
        assert_eq!(ProviderKeyUse::parse("org/openai"), Some(used));
        for bad in ["team/openai", "org/acme", "org", "org/openai/x"] {
            let unknown = text.replace("org/openai", bad);
            assert_eq!(
                parse_report(unknown.as_bytes()).map_err(|e| e.path),
                Err("entries[0].provider_key".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_wrong_format_bad_batch_id_or_unknown_field_is_invalid() {
        let body = br#"{"format":"other","reporter":"r","batch_id":"b","entries":[]}"#;
        assert_eq!(parse_report(body).map_err(|e| e.path), Err("format".into()));
        let body =
            br#"{"format":"keyward.usage-report.v1","reporter":"r","batch_id":"","entries":[]}"#;
        assert_eq!(
            parse_report(body).map_err(|e| e.path),
            Err("batch_id".into())
        );
        let body = br#"{"format":"keyward.usage-report.v1","reporter":"r","batch_id":"a\u0000b","entries":[]}"#;
        assert_eq!(
            parse_report(body).map_err(|e| e.path),
            Err("batch_id".into())
        );
        let body = br#"{"format":"keyward.usage-report.v1","reporter":"r","batch_id":"b","entries":[],"x":1}"#;
        assert!(parse_report(body).is_err());
    }
}
