//! Envoy stats for keyward, defined once per root context.

use keyward_engine::denial::DenyCode;
use keyward_engine::effects::Count;

use crate::host::{HostError, MetricKind};

/// Metric ids as returned by the host. Names appear in Envoy's `/stats` (with Envoy's prefix for
/// Wasm metrics, e.g. `wasmcustom.keyward.requests.allowed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub allowed: u32,
    pub exempt: u32,
    pub fail_open: u32,
    pub shadow_denied: u32,
    pub policy_version: u32,
    pub metering: MeteringMetrics,
    denied: Vec<(DenyCode, u32)>,
    sync: Vec<(SyncOutcome, u32)>,
}

/// Counters of spend metering, rate limits and usage reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeteringMetrics {
    /// Metered requests that reserved budget.
    pub reservations: u32,
    /// Micro-USD charged by settled requests.
    pub settled_microusd: u32,
    /// Responses that reached the client without usage numbers.
    pub usage_missing: u32,
    /// Usage with negative, fractional or implausible counts (charged the reservation).
    pub usage_invalid: u32,
    /// Encoded (compressed) responses whose usage could not be read (charged the reservation).
    pub usage_unreadable: u32,
    /// Responses that ended before their last byte (upstream reset, client gone).
    pub incomplete: u32,
    /// Metered requests for a model without a price.
    pub unpriced: u32,
    pub soft_cap_warnings: u32,
    /// Settlements that failed (the reservation stays held).
    pub settle_failures: u32,
    pub reports_acknowledged: u32,
    pub reports_duplicate: u32,
    pub reports_failed: u32,
}

/// How one poll of the control plane ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A newer verified snapshot was published to shared data.
    Published,
    /// 304, or the same snapshot again.
    NotModified,
    /// The control plane answered with an unexpected status.
    HttpError,
    /// The call failed: no cluster, connection refused, timeout.
    Unreachable,
    /// Verification failed; the reason is one of [`REJECTION_REASONS`].
    Rejected(&'static str),
}

/// Every reason a fetched snapshot can be rejected for, each with its own counter.
pub const REJECTION_REASONS: [&str; 6] = [
    "not_an_envelope",
    "unknown_format",
    "unknown_signing_key",
    "bad_signature",
    "invalid_snapshot",
    "stale_version",
];

impl SyncOutcome {
    fn metric_name(self) -> String {
        match self {
            SyncOutcome::Published => "keyward.sync.published".to_owned(),
            SyncOutcome::NotModified => "keyward.sync.not_modified".to_owned(),
            SyncOutcome::HttpError => "keyward.sync.http_error".to_owned(),
            SyncOutcome::Unreachable => "keyward.sync.unreachable".to_owned(),
            SyncOutcome::Rejected(reason) => format!("keyward.sync.rejected.{reason}"),
        }
    }

    fn all() -> Vec<SyncOutcome> {
        let mut all = vec![
            SyncOutcome::Published,
            SyncOutcome::NotModified,
            SyncOutcome::HttpError,
            SyncOutcome::Unreachable,
        ];
        all.extend(
            REJECTION_REASONS
                .iter()
                .map(|reason| SyncOutcome::Rejected(reason)),
        );
        all
    }
}

impl Metrics {
    /// Defines every metric through `define`; any failure fails the configuration.
    pub fn define(
        mut define: impl FnMut(MetricKind, &str) -> Result<u32, HostError>,
    ) -> Result<Metrics, HostError> {
        let mut counter = |name: &str| define(MetricKind::Counter, name);
        let allowed = counter("keyward.requests.allowed")?;
        let exempt = counter("keyward.requests.exempt")?;
        let fail_open = counter("keyward.requests.fail_open")?;
        let shadow_denied = counter("keyward.requests.shadow_denied")?;
        let mut denied = Vec::with_capacity(DenyCode::ALL.len());
        for code in DenyCode::ALL {
            denied.push((
                code,
                counter(&format!("keyward.requests.denied.{}", code.as_str()))?,
            ));
        }
        let metering = MeteringMetrics {
            reservations: counter("keyward.metering.reservations")?,
            settled_microusd: counter("keyward.metering.settled_microusd")?,
            usage_missing: counter("keyward.metering.usage_missing")?,
            usage_invalid: counter("keyward.metering.usage_invalid")?,
            usage_unreadable: counter("keyward.metering.usage_unreadable")?,
            incomplete: counter("keyward.metering.incomplete")?,
            unpriced: counter("keyward.metering.unpriced_model")?,
            soft_cap_warnings: counter("keyward.metering.soft_cap_warnings")?,
            settle_failures: counter("keyward.metering.settle_failures")?,
            reports_acknowledged: counter("keyward.usage_reports.acknowledged")?,
            reports_duplicate: counter("keyward.usage_reports.duplicate")?,
            reports_failed: counter("keyward.usage_reports.failed")?,
        };
        let mut sync = Vec::new();
        for outcome in SyncOutcome::all() {
            sync.push((
                outcome,
                define(MetricKind::Counter, &outcome.metric_name())?,
            ));
        }
        let policy_version = define(MetricKind::Gauge, "keyward.policy.version")?;
        Ok(Metrics {
            sync,
            allowed,
            exempt,
            fail_open,
            shadow_denied,
            policy_version,
            metering,
            denied,
        })
    }

    pub fn sync_counter(&self, outcome: SyncOutcome) -> Option<u32> {
        self.sync
            .iter()
            .find(|(defined, _)| *defined == outcome)
            .map(|(_, id)| *id)
    }

    /// The metric a counted event goes to, and by how much.
    pub fn counter_for(&self, count: Count) -> Option<(u32, i64)> {
        let metering = &self.metering;
        let one = |id: u32| Some((id, 1));
        match count {
            Count::Allowed => one(self.allowed),
            Count::Denied(code) => self.denied(code).map(|id| (id, 1)),
            Count::ShadowDenied => one(self.shadow_denied),
            Count::Exempt => one(self.exempt),
            Count::FailOpen => one(self.fail_open),
            Count::Reservation => one(metering.reservations),
            Count::Unpriced => one(metering.unpriced),
            Count::SoftCapWarning => one(metering.soft_cap_warnings),
            Count::UsageMissing => one(metering.usage_missing),
            Count::UsageInvalid => one(metering.usage_invalid),
            Count::UsageUnreadable => one(metering.usage_unreadable),
            Count::Incomplete => one(metering.incomplete),
            Count::SettledMicrousd(amount) => Some((
                metering.settled_microusd,
                i64::try_from(amount).unwrap_or(i64::MAX),
            )),
            Count::SettleFailure => one(metering.settle_failures),
        }
    }

    pub fn denied(&self, code: DenyCode) -> Option<u32> {
        self.denied
            .iter()
            .find(|(defined, _)| *defined == code)
            .map(|(_, id)| *id)
    }
}
