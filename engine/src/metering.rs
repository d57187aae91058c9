//! Spend metering's pure parts: the `metering` configuration, the reservation estimate, the
//! admission rule for caps, and the shared-data records every worker of one Envoy updates with
//! compare-and-swap (spend counters per key and per project).
//!
//! A spend counter separates what the control plane already knows from what only this Envoy
//! knows. `settled` grows with every settled request; `reported` with every batch sent; each
//! acknowledged batch is remembered as `(version, reported-so-far)`: once a worker runs a
//! snapshot of at least that version, the snapshot's `spent_microusd` includes that spend, so the
//! worker stops adding it locally. No spend is counted twice and none is dropped while a newer
//! snapshot is on its way.

use serde::Deserialize;

use crate::field_error::FieldError;
use crate::pricing::{Price, TokenCounts};

pub const KEY_COUNTER_PREFIX: &str = "keyward/spend/key/";
pub const PROJECT_COUNTER_PREFIX: &str = "keyward/spend/project/";

/// Acknowledged batches a counter remembers before folding the oldest into its base: at one
/// report a second this covers workers that are a few seconds behind on snapshots.
const REMEMBERED_ACKS: usize = 4;

fn default_max_request_body_bytes() -> usize {
    1 << 20
}
fn default_max_output_tokens() -> u64 {
    4096
}
fn default_bytes_per_token() -> u64 {
    4
}
fn default_ceiling() -> u64 {
    1_000_000
}
fn default_report_path() -> String {
    "/v1/usage".to_owned()
}
fn default_report_interval_ms() -> u64 {
    1000
}
/// More tokens than any model reads and writes in one request today (context windows reach 2M):
/// a report above it is a broken or lying upstream.
fn default_max_tokens_per_request() -> u64 {
    10_000_000
}
fn default_warning_header() -> String {
    "x-keyward-spend-warning".to_owned()
}

/// What a response without usage numbers is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingUsageCharge {
    /// The request's reservation: the budget pays the estimate (the safe default).
    #[default]
    Reservation,
    /// Nothing; counted in `keyward.metering.usage_missing` only.
    Zero,
}

/// What a request for a model without a price does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnpricedModel {
    /// Refused (403 `model_not_allowed`) when a spend cap applies, since the cap could not be
    /// enforced; otherwise allowed and charged nothing (counted).
    #[default]
    DenyWhenCapped,
    /// Always allowed, charged nothing (counted).
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MeteringDoc {
    #[serde(default = "default_max_request_body_bytes")]
    max_request_body_bytes: usize,
    #[serde(default = "default_max_output_tokens")]
    default_max_output_tokens: u64,
    #[serde(default = "default_bytes_per_token")]
    bytes_per_token: u64,
    #[serde(default = "default_ceiling")]
    reservation_ceiling_microusd: u64,
    #[serde(default)]
    missing_usage: MissingUsageCharge,
    #[serde(default)]
    unpriced_model: UnpricedModel,
    #[serde(default = "default_report_path")]
    report_path: String,
    #[serde(default = "default_report_interval_ms")]
    report_interval_ms: u64,
    #[serde(default = "default_warning_header")]
    soft_cap_header: String,
    #[serde(default = "default_hold_headers")]
    hold_headers: bool,
    #[serde(default = "default_max_tokens_per_request")]
    max_tokens_per_request: u64,
}

fn default_hold_headers() -> bool {
    true
}

/// The validated `metering` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteringSettings {
    pub max_request_body_bytes: usize,
    pub default_max_output_tokens: u64,
    pub bytes_per_token: u64,
    pub reservation_ceiling_microusd: u64,
    pub missing_usage: MissingUsageCharge,
    pub unpriced_model: UnpricedModel,
    pub report_path: String,
    pub report_interval_ms: u64,
    pub soft_cap_header: String,
    /// Keep the request headers from the upstream until the body has been checked. Needs the
    /// Wasm filter's `allow_on_headers_stop_iteration: true` (Envoy 1.35+). Off (Istio's
    /// WasmPlugin cannot set that knob), the headers go upstream first and a refusal after the
    /// body resets the upstream request before its body is sent.
    pub hold_headers: bool,
    /// Reported usage above this many tokens is not believed: charged the reservation and
    /// counted as `usage_invalid`.
    pub max_tokens_per_request: u64,
}

impl MeteringSettings {
    pub(crate) fn compile(doc: MeteringDoc) -> Result<MeteringSettings, FieldError> {
        if !(1024..=16 << 20).contains(&doc.max_request_body_bytes) {
            return Err(FieldError::new(
                "max_request_body_bytes",
                "must be from 1024 to 16777216",
            ));
        }
        if !(1..=16).contains(&doc.bytes_per_token) {
            return Err(FieldError::new("bytes_per_token", "must be from 1 to 16"));
        }
        if doc.reservation_ceiling_microusd == 0 {
            return Err(FieldError::new(
                "reservation_ceiling_microusd",
                "must be at least 1",
            ));
        }
        if !doc.report_path.starts_with('/') {
            return Err(FieldError::new("report_path", "must start with /"));
        }
        if !(100..=3_600_000).contains(&doc.report_interval_ms) {
            return Err(FieldError::new(
                "report_interval_ms",
                "must be from 100 to 3600000",
            ));
        }
        if doc.max_tokens_per_request == 0 {
            return Err(FieldError::new(
                "max_tokens_per_request",
                "must be at least 1",
            ));
        }
        if !crate::route::is_header_name(&doc.soft_cap_header) {
            return Err(FieldError::new(
                "soft_cap_header",
                "must be a lower-case header name",
            ));
        }
        Ok(MeteringSettings {
            max_request_body_bytes: doc.max_request_body_bytes,
            default_max_output_tokens: doc.default_max_output_tokens,
            bytes_per_token: doc.bytes_per_token,
            reservation_ceiling_microusd: doc.reservation_ceiling_microusd,
            missing_usage: doc.missing_usage,
            unpriced_model: doc.unpriced_model,
            report_path: doc.report_path,
            report_interval_ms: doc.report_interval_ms,
            soft_cap_header: doc.soft_cap_header,
            hold_headers: doc.hold_headers,
            max_tokens_per_request: doc.max_tokens_per_request,
        })
    }
}

/// What a request is expected to cost before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The priced estimate, capped by the per-request ceiling: what the budget holds back.
    pub reservation_microusd: u64,
}

impl Estimate {
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Input tokens from the body size (`bytes_per_token` bytes a token), output tokens from the
/// request's own largest output limit (or the configured default) times the completions it asks
/// for (`n`).
pub fn estimate(
    settings: &MeteringSettings,
    price: Option<Price>,
    body_bytes: usize,
    max_output_tokens: Option<u64>,
    choices: u64,
) -> Estimate {
    let input_tokens = (body_bytes as u64).div_ceil(settings.bytes_per_token);
    let output_tokens = max_output_tokens
        .unwrap_or(settings.default_max_output_tokens)
        .saturating_mul(choices.max(1));
    let cost = price.map_or(0, |price| {
        price.cost_microusd(&TokenCounts {
            input: input_tokens,
            output: output_tokens,
            ..TokenCounts::default()
        })
    });
    Estimate {
        input_tokens,
        output_tokens,
        reservation_microusd: cost.min(settings.reservation_ceiling_microusd),
    }
}

/// A budget as one worker sees it when admitting a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub cap_microusd: Option<u64>,
    pub soft_cap_microusd: Option<u64>,
    /// From the snapshot: what the control plane knows was spent.
    pub snapshot_spent_microusd: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit { past_soft_cap: bool },
    OverCap,
}

impl Budget {
    /// Whether admission can refuse or warn on this budget at all.
    pub fn is_limited(&self) -> bool {
        self.cap_microusd.is_some() || self.soft_cap_microusd.is_some()
    }

    /// Spent (snapshot plus local) plus reserved plus this request's reservation must stay
    /// within the cap. At the cap exactly, a request with a zero reservation is still refused:
    /// a spent budget is spent.
    pub fn admit(
        &self,
        counter: &SpendCounter,
        policy_version: u64,
        reservation: u64,
    ) -> Admission {
        let committed = self
            .snapshot_spent_microusd
            .saturating_add(counter.committed(policy_version));
        if let Some(cap) = self.cap_microusd {
            if committed >= cap || committed.saturating_add(reservation) > cap {
                return Admission::OverCap;
            }
        }
        let past_soft_cap = self
            .soft_cap_microusd
            .is_some_and(|soft| committed.saturating_add(reservation) >= soft);
        Admission::Admit { past_soft_cap }
    }
}

/// One key's or project's spend in this Envoy, kept in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendCounter {
    /// Held by requests in flight.
    pub reserved: u64,
    /// Settled by finished requests since this Envoy started.
    pub settled: u64,
    /// Sent to the control plane in usage batches (a part of `settled`).
    pub reported: u64,
    /// Reported spend that every snapshot this Envoy still runs already includes.
    pub reflected_base: u64,
    /// Acknowledged batches: `(snapshot version that includes it, reported total after it)`.
    pub acks: Vec<(u64, u64)>,
}

impl SpendCounter {
    /// The part of this Envoy's spend that the snapshot `policy_version` already includes.
    pub fn reflected(&self, policy_version: u64) -> u64 {
        self.acks
            .iter()
            .filter(|(version, _)| *version <= policy_version)
            .map(|(_, total)| *total)
            .fold(self.reflected_base, u64::max)
    }

    /// Spend and reservations a worker on `policy_version` must add to the snapshot's figure.
    pub fn committed(&self, policy_version: u64) -> u64 {
        self.settled
            .saturating_sub(self.reflected(policy_version))
            .saturating_add(self.reserved)
    }

    pub fn reserve(&mut self, amount: u64) {
        self.reserved = self.reserved.saturating_add(amount);
    }

    /// Ends a request: its reservation is released and its actual cost added.
    pub fn settle(&mut self, reservation: u64, cost: u64) {
        self.reserved = self.reserved.saturating_sub(reservation);
        self.settled = self.settled.saturating_add(cost);
    }

    /// Records a batch as sent; returns the reported total to remember for its ack.
    pub fn mark_reported(&mut self, amount: u64) -> u64 {
        self.reported = self.reported.saturating_add(amount).min(self.settled);
        self.reported
    }

    pub fn acknowledge(&mut self, version: u64, reported_total: u64) {
        self.acks.push((version, reported_total));
        while self.acks.len() > REMEMBERED_ACKS {
            let (_, total) = self.acks.remove(0);
            self.reflected_base = self.reflected_base.max(total);
        }
    }

    /// `v1 <reserved> <settled> <reported> <reflected_base> [<version>:<total>]...`
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!(
            "v1 {} {} {} {}",
            self.reserved, self.settled, self.reported, self.reflected_base
        );
        for (version, total) in &self.acks {
            text.push_str(&format!(" {version}:{total}"));
        }
        text.into_bytes()
    }

    /// `None` for anything not written by [`SpendCounter::encode`]: the caller treats an
    /// unreadable counter as a host fault, never as zero spend.
    pub fn decode(bytes: &[u8]) -> Option<SpendCounter> {
        let text = core::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        if parts.next()? != "v1" {
            return None;
        }
        let mut number = || parts.next()?.parse::<u64>().ok();
        let reserved = number()?;
        let settled = number()?;
        let reported = number()?;
        let reflected_base = number()?;
        let mut acks = Vec::new();
        for part in parts {
            let (version, total) = part.split_once(':')?;
            acks.push((version.parse().ok()?, total.parse().ok()?));
            if acks.len() > REMEMBERED_ACKS {
                return None;
            }
        }
        Some(SpendCounter {
            reserved,
            settled,
            reported,
            reflected_base,
            acks,
        })
    }
}

pub fn key_counter_entry(key_id: &str) -> String {
    format!("{KEY_COUNTER_PREFIX}{key_id}")
}

pub fn project_counter_entry(project_id: &str) -> String {
    format!("{PROJECT_COUNTER_PREFIX}{project_id}")
}

/// The `x-keyward-spend-warning` value: which budget passed its soft cap.
pub fn soft_cap_warning(key_past: bool, project_past: bool) -> Option<&'static str> {
    match (key_past, project_past) {
        (true, true) => Some("key-and-project-soft-cap"),
        (true, false) => Some("key-soft-cap"),
        (false, true) => Some("project-soft-cap"),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn settings() -> MeteringSettings {
        MeteringSettings::compile(
            serde_json::from_str(r#"{"reservation_ceiling_microusd": 200000}"#).expect("doc"),
        )
        .expect("valid")
    }

    #[test]
    fn estimate_prices_input_and_output_and_caps_at_the_ceiling() {
        let price = Price {
            input: 2_000_000,
            output: 10_000_000,
            cached_input: 0,
            cache_write: 0,
        };
        let small = estimate(&settings(), Some(price), 400, Some(100), 1);
        assert_eq!((small.input_tokens, small.output_tokens), (100, 100));
        assert_eq!(small.reservation_microusd, 200 + 1000);
        let large = estimate(&settings(), Some(price), 400, Some(1_000_000), 1);
        assert_eq!(large.reservation_microusd, 200_000, "the ceiling bounds it");
        let default_output = estimate(&settings(), Some(price), 0, None, 1);
        assert_eq!(default_output.output_tokens, 4096);
        assert_eq!(
            estimate(&settings(), None, 400, None, 1).reservation_microusd,
            0
        );
        let many = estimate(&settings(), Some(price), 0, Some(10), 128);
        assert_eq!(many.output_tokens, 1280, "n multiplies the output");
        let absurd = estimate(&settings(), Some(price), 0, Some(u64::MAX), u64::MAX);
        assert_eq!(
            absurd.reservation_microusd, 200_000,
            "saturates, then the ceiling"
        );
    }

    #[test]
    fn admission_counts_spent_reserved_and_the_new_reservation() {
        let budget = Budget {
            cap_microusd: Some(1_000_000),
            soft_cap_microusd: Some(800_000),
            snapshot_spent_microusd: 500_000,
        };
        let mut counter = SpendCounter::default();
        assert_eq!(
            budget.admit(&counter, 1, 100_000),
            Admission::Admit {
                past_soft_cap: false
            }
        );
        counter.reserve(300_000);
        assert_eq!(
            budget.admit(&counter, 1, 100_000),
            Admission::Admit {
                past_soft_cap: true
            }
        );
        assert_eq!(budget.admit(&counter, 1, 200_001), Admission::OverCap);
        assert_eq!(
            budget.admit(&counter, 1, 200_000),
            Admission::Admit {
                past_soft_cap: true
            }
        );
        counter.settle(300_000, 500_000);
        assert_eq!(
            budget.admit(&counter, 1, 0),
            Admission::OverCap,
            "at the cap"
        );
        let uncapped = Budget {
            cap_microusd: None,
            soft_cap_microusd: None,
            snapshot_spent_microusd: u64::MAX,
        };
        assert_eq!(
            uncapped.admit(&counter, 1, u64::MAX),
            Admission::Admit {
                past_soft_cap: false
            }
        );
    }

    #[test]
    fn acknowledged_spend_stops_counting_once_the_snapshot_includes_it() {
        let mut counter = SpendCounter::default();
        counter.settle(0, 700);
        assert_eq!(counter.committed(5), 700);
        let total = counter.mark_reported(700);
        assert_eq!(counter.committed(5), 700, "sent is not yet included");
        counter.acknowledge(6, total);
        assert_eq!(counter.committed(5), 700, "a worker still on version 5");
        assert_eq!(counter.committed(6), 0, "version 6 includes it");
        counter.settle(0, 50);
        assert_eq!(counter.committed(6), 50);
    }

    #[test]
    fn old_acks_fold_into_the_base() {
        let mut counter = SpendCounter::default();
        for round in 1..=10u64 {
            counter.settle(0, 10);
            let total = counter.mark_reported(10);
            counter.acknowledge(round, total);
        }
        assert_eq!(counter.acks.len(), REMEMBERED_ACKS);
        assert_eq!(counter.reflected_base, 60);
        assert_eq!(counter.committed(10), 0);
        assert_eq!(counter.committed(7), 30);
    }

    #[test]
    fn counters_round_trip_and_reject_garbage() {
        let counter = SpendCounter {
            reserved: 1,
            settled: 2,
            reported: 2,
            reflected_base: 0,
            acks: vec![(7, 2)],
        };
        assert_eq!(SpendCounter::decode(&counter.encode()), Some(counter));
        for bad in [
            &b""[..],
            b"v2 1 2 3 4",
            b"v1 1 2 3",
            b"v1 a 2 3 4",
            b"v1 1 2 3 4 7",
            b"\xff",
        ] {
            assert_eq!(SpendCounter::decode(bad), None);
        }
    }

    #[test]
    fn settings_are_validated() {
        for bad in [
            r#"{"max_request_body_bytes": 10}"#,
            r#"{"bytes_per_token": 0}"#,
            r#"{"reservation_ceiling_microusd": 0}"#,
            r#"{"report_path": "v1"}"#,
            r#"{"soft_cap_header": "X-Bad"}"#,
            r#"{"max_tokens_per_request": 0}"#,
        ] {
            let doc: MeteringDoc = serde_json::from_str(bad).expect("doc");
            assert!(MeteringSettings::compile(doc).is_err(), "{bad}");
        }
    }
}
