//! Envoy stats for keyward, defined once per root context.

use keyward_engine::denial::DenyCode;
use keyward_engine::effects::Count;
use keyward_engine::signed_snapshot::SnapshotRejected;

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
    /// Chunks fetched from the control plane and stored in shared data.
    pub chunks_fetched: u32,
    /// Chunks of a new manifest found in shared data already (not fetched again: the delta).
    pub chunks_reused: u32,
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
    /// A snapshot was refused; the last good policy stays.
    Rejected(RejectionReason),
}

/// Why a fetched (or published) snapshot was refused, each with its own counter
/// `keyward.sync.rejected.<name>` (docs/configuration.md lists them; tests read them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionReason {
    NotAnEnvelope,
    UnknownFormat,
    UnknownSigningKey,
    BadSignature,
    InvalidSnapshot,
    /// Older than the snapshot published already.
    StaleVersion,
    /// A chunk's bytes do not match the signed manifest (tampered or truncated).
    ChunkMismatch,
    /// A signed snapshot a filter VM could not compile (bad key records inside verified chunks).
    UncompilableSnapshot,
}

impl RejectionReason {
    pub const ALL: [RejectionReason; 8] = [
        RejectionReason::NotAnEnvelope,
        RejectionReason::UnknownFormat,
        RejectionReason::UnknownSigningKey,
        RejectionReason::BadSignature,
        RejectionReason::InvalidSnapshot,
        RejectionReason::StaleVersion,
        RejectionReason::ChunkMismatch,
        RejectionReason::UncompilableSnapshot,
    ];

    /// The metric's last name part.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::NotAnEnvelope => "not_an_envelope",
            RejectionReason::UnknownFormat => "unknown_format",
            RejectionReason::UnknownSigningKey => "unknown_signing_key",
            RejectionReason::BadSignature => "bad_signature",
            RejectionReason::InvalidSnapshot => "invalid_snapshot",
            RejectionReason::StaleVersion => "stale_version",
            RejectionReason::ChunkMismatch => "chunk_mismatch",
            RejectionReason::UncompilableSnapshot => "uncompilable_snapshot",
        }
    }
}

impl From<&SnapshotRejected> for RejectionReason {
    fn from(rejected: &SnapshotRejected) -> Self {
        // Exhaustive: a new way to reject in the engine must get its counter here.
        match rejected {
            SnapshotRejected::NotAnEnvelope(_) => RejectionReason::NotAnEnvelope,
            SnapshotRejected::UnknownFormat => RejectionReason::UnknownFormat,
            SnapshotRejected::UnknownSigningKey => RejectionReason::UnknownSigningKey,
            SnapshotRejected::BadSignature => RejectionReason::BadSignature,
            SnapshotRejected::InvalidSnapshot(_) => RejectionReason::InvalidSnapshot,
        }
    }
}

impl SyncOutcome {
    fn metric_name(self) -> String {
        match self {
            SyncOutcome::Published => "keyward.sync.published".to_owned(),
            SyncOutcome::NotModified => "keyward.sync.not_modified".to_owned(),
            SyncOutcome::HttpError => "keyward.sync.http_error".to_owned(),
            SyncOutcome::Unreachable => "keyward.sync.unreachable".to_owned(),
            SyncOutcome::Rejected(reason) => format!("keyward.sync.rejected.{}", reason.as_str()),
        }
    }

    fn all() -> impl Iterator<Item = SyncOutcome> {
        [
            SyncOutcome::Published,
            SyncOutcome::NotModified,
            SyncOutcome::HttpError,
            SyncOutcome::Unreachable,
        ]
        .into_iter()
        .chain(RejectionReason::ALL.map(SyncOutcome::Rejected))
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
        let chunks_fetched = define(MetricKind::Counter, "keyward.sync.chunks_fetched")?;
        let chunks_reused = define(MetricKind::Counter, "keyward.sync.chunks_reused")?;
        let policy_version = define(MetricKind::Gauge, "keyward.policy.version")?;
        Ok(Metrics {
            sync,
            allowed,
            exempt,
            fail_open,
            shadow_denied,
            policy_version,
            metering,
            chunks_fetched,
            chunks_reused,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name `define` gives the host, in order.
    fn defined_names() -> Vec<String> {
        let mut names = Vec::new();
        Metrics::define(|_kind, name| {
            names.push(name.to_owned());
            Ok(names.len() as u32)
        })
        .expect("defined");
        names
    }

    #[test]
    fn sync_rejections_keep_the_metric_names_docs_and_dashboards_read() {
        let names = defined_names();
        let rejected: Vec<&str> = names
            .iter()
            .filter_map(|name| name.strip_prefix("keyward.sync.rejected."))
            .collect();
        assert_eq!(
            rejected,
            [
                "not_an_envelope",
                "unknown_format",
                "unknown_signing_key",
                "bad_signature",
                "invalid_snapshot",
                "stale_version",
                "chunk_mismatch",
                "uncompilable_snapshot",
            ]
        );
        for name in [
            "keyward.sync.published",
            "keyward.sync.not_modified",
            "keyward.sync.http_error",
            "keyward.sync.unreachable",
            "keyward.sync.chunks_fetched",
            "keyward.sync.chunks_reused",
        ] {
            assert!(names.iter().any(|defined| defined == name), "{name}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "no metric is defined twice");
    }

    #[test]
    fn every_engine_rejection_counts_under_the_engines_own_name() {
        use keyward_engine::field_error::FieldError;
        let all = [
            SnapshotRejected::NotAnEnvelope("x".to_owned()),
            SnapshotRejected::UnknownFormat,
            SnapshotRejected::UnknownSigningKey,
            SnapshotRejected::BadSignature,
            SnapshotRejected::InvalidSnapshot(FieldError::new("keys", "bad")),
        ];
        for rejected in &all {
            assert_eq!(RejectionReason::from(rejected).as_str(), rejected.reason());
        }
    }

    #[test]
    fn each_outcome_has_its_own_counter() {
        let mut next = 0;
        let metrics = Metrics::define(|_kind, _name| {
            next += 1;
            Ok(next)
        })
        .expect("defined");
        let ids: Vec<u32> = SyncOutcome::all()
            .map(|outcome| metrics.sync_counter(outcome).expect("defined"))
            .collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert_eq!(ids.len(), 4 + RejectionReason::ALL.len());
    }
}
