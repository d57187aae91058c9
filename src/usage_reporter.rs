//! Sends this Envoy's metered usage to the control plane: the VM that polls snapshots (the
//! sync singleton or the lease holder) takes the pending usage every interval, turns it into one
//! batch with a unique id, and POSTs it with the data-plane token (`sync.token`) until the
//! control plane acknowledges it. The
//! batch in flight lives in shared data, so a new lease holder retries the same batch (same id,
//! applied once) instead of sending its spend again under a new one.

use keyward_engine::metering::{key_counter_entry, project_counter_entry, SpendCounter};
use keyward_engine::sync::SyncSettings;
use keyward_engine::usage_report::{UsageAck, UsageReport, MAX_ENTRIES_PER_REPORT};
use serde::{Deserialize, Serialize};

use crate::host::{header_text, HostError, LogLevel, SetOutcome, SyncHost};
use crate::metrics::Metrics;
use crate::shared_record::{read, update, Record};
use crate::usage_activity::{PendingUsage, PENDING_ENTRY};
use crate::window_reports::{acknowledge_windows, mark_windows_reported, WindowTotal};

pub const INFLIGHT_ENTRY: &str = "keyward/usage/inflight";
pub const SEQUENCE_ENTRY: &str = "keyward/usage/sequence";

/// The batch being delivered: its exact body (a retry must send the same bytes), and the
/// reported totals to record on each counter once the control plane acknowledges it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InflightBatch {
    pub batch_id: String,
    pub body: String,
    pub key_totals: Vec<(String, u64)>,
    pub project_totals: Vec<(String, u64)>,
    /// The budget and quota window counters the batch names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub window_totals: Vec<WindowTotal>,
}

impl Record for Option<InflightBatch> {
    fn encode(&self) -> Vec<u8> {
        match self {
            Some(batch) => serde_json::to_vec(batch).unwrap_or_default(),
            None => Vec::new(),
        }
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(Some)
    }
}

/// `<reporter>:<next sequence number>`, created once per Envoy.
#[derive(Debug, Default)]
struct Sequence {
    reporter: String,
    next: u64,
}

impl Record for Sequence {
    fn encode(&self) -> Vec<u8> {
        format!("{}:{}", self.reporter, self.next).into_bytes()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = core::str::from_utf8(bytes).ok()?;
        let (reporter, next) = text.rsplit_once(':')?;
        Some(Sequence {
            reporter: reporter.to_owned(),
            next: next.parse().ok()?,
        })
    }
}

#[derive(Debug)]
pub struct UsageReporter {
    cluster: String,
    authority: String,
    path: String,
    timeout_ms: u64,
    interval_ms: u64,
    /// `Bearer <data-plane token>`, when the sync block has a token.
    authorization: Option<String>,
    next_report_ms: u64,
    in_flight: Option<u32>,
}

impl UsageReporter {
    pub fn new(sync: &SyncSettings, path: &str, interval_ms: u64) -> Self {
        Self {
            cluster: sync.cluster.clone(),
            authority: sync.authority.clone(),
            path: path.to_owned(),
            timeout_ms: sync.timeout_ms,
            interval_ms,
            authorization: sync.token.as_ref().map(|token| format!("Bearer {token}")),
            next_report_ms: 0,
            in_flight: None,
        }
    }

    pub fn owns_call(&self, token: u32) -> bool {
        self.in_flight == Some(token)
    }

    /// Called on the poller's ticks, only while this VM is the poller.
    pub fn on_tick(&mut self, host: &impl SyncHost, metrics: &Metrics) -> Result<(), HostError> {
        let now = host.now_ms()?;
        if self.in_flight.is_some() || now < self.next_report_ms {
            return Ok(());
        }
        self.next_report_ms = now.saturating_add(self.interval_ms);
        let batch = match read::<Option<InflightBatch>>(host, INFLIGHT_ENTRY)? {
            Some(batch) => batch,
            None => match self.form_batch(host, now)? {
                Some(batch) => batch,
                None => return Ok(()),
            },
        };
        let mut headers = vec![
            (":method", "POST"),
            (":path", self.path.as_str()),
            (":authority", self.authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(authorization) = &self.authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        match host.dispatch_post(
            &self.cluster,
            &headers,
            batch.body.as_bytes(),
            self.timeout_ms,
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(error) => {
                host.increment_metric(metrics.metering.reports_failed, 1);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "keyward usage: cannot call cluster {:?} ({error}); batch {} kept",
                        self.cluster, batch.batch_id
                    ),
                );
            }
        }
        Ok(())
    }

    /// Takes the pending usage (at most one report's worth) and makes it the batch in flight.
    fn form_batch(
        &self,
        host: &impl SyncHost,
        now: u64,
    ) -> Result<Option<InflightBatch>, HostError> {
        let entries = update(host, PENDING_ENTRY, |pending: &mut PendingUsage| {
            if pending.0.is_empty() {
                return (false, Vec::new());
            }
            let take = pending.0.len().min(MAX_ENTRIES_PER_REPORT);
            let taken: Vec<_> = pending.0.drain(..take).collect();
            (true, taken)
        })?;
        if entries.is_empty() {
            return Ok(None);
        }
        let sequence = update(host, SEQUENCE_ENTRY, |sequence: &mut Sequence| {
            if sequence.reporter.is_empty() {
                // Unique enough within a fleet and across restarts: the first use's clock in
                // milliseconds, in hex. The control plane keeps each data-plane token's batch ids
                // apart, so fleets never collide.
                sequence.reporter = format!("envoy-{now:x}");
            }
            sequence.next = sequence.next.saturating_add(1);
            (true, (sequence.reporter.clone(), sequence.next))
        })?;
        let batch_id = format!("{}-{}", sequence.0, sequence.1);
        let mut key_totals: Vec<(String, u64)> = Vec::new();
        let mut project_totals: Vec<(String, u64)> = Vec::new();
        let mut window_totals = Vec::new();
        for entry in &entries {
            mark_windows_reported(host, entry, &mut window_totals)?;
            let total = update(
                host,
                &key_counter_entry(&entry.key_id),
                |counter: &mut SpendCounter| (true, counter.mark_reported(entry.cost_microusd)),
            )?;
            upsert(&mut key_totals, &entry.key_id, total);
            if let Some(project) = &entry.project {
                let total = update(
                    host,
                    &project_counter_entry(project),
                    |counter: &mut SpendCounter| (true, counter.mark_reported(entry.cost_microusd)),
                )?;
                upsert(&mut project_totals, project, total);
            }
        }
        let report = UsageReport::new(&sequence.0, &batch_id, entries);
        let body = serde_json::to_string(&report).map_err(|_| HostError::Malformed)?;
        let batch = InflightBatch {
            batch_id,
            body,
            key_totals,
            project_totals,
            window_totals,
        };
        update(host, INFLIGHT_ENTRY, |slot: &mut Option<InflightBatch>| {
            *slot = Some(batch.clone());
            (true, ())
        })?;
        Ok(Some(batch))
    }

    /// The control plane answered call `token`.
    pub fn on_response(
        &mut self,
        host: &impl SyncHost,
        metrics: &Metrics,
        token: u32,
        body_size: usize,
    ) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        if let Err(error) = self.handle_response(host, metrics, body_size) {
            host.increment_metric(metrics.metering.reports_failed, 1);
            host.log(
                LogLevel::Warn,
                &format!("keyward usage: report failed ({error}); will retry",),
            );
        }
    }

    fn handle_response(
        &mut self,
        host: &impl SyncHost,
        metrics: &Metrics,
        body_size: usize,
    ) -> Result<(), HostError> {
        let headers = host.call_response_headers()?;
        let status = header_text(&headers, ":status").unwrap_or("");
        if status == "400" || status == "413" {
            // The control plane can never accept these bytes: resending them would block every
            // later batch. The spend stays in this Envoy's counters (never acknowledged, so it
            // keeps counting against caps here); it is missing from the fleet-wide figure.
            host.increment_metric(metrics.metering.reports_failed, 1);
            let dropped = host
                .shared_get(INFLIGHT_ENTRY)?
                .map(|(_, cas)| host.shared_set(INFLIGHT_ENTRY, b"", Some(cas)))
                .transpose()?;
            host.log(
                LogLevel::Error,
                &format!(
                    "keyward usage: control plane refused the batch as invalid ({status}); dropped it ({})",
                    if dropped.is_some() { "its spend still counts in this Envoy" } else { "already gone" }
                ),
            );
            return Ok(());
        }
        if status != "200" {
            host.increment_metric(metrics.metering.reports_failed, 1);
            host.log(
                LogLevel::Warn,
                &format!(
                    "keyward usage: control plane answered {status:?}; the batch will be retried"
                ),
            );
            return Ok(());
        }
        let body = host.call_response_body(body_size)?;
        let Ok(ack) = serde_json::from_slice::<UsageAck>(&body) else {
            host.increment_metric(metrics.metering.reports_failed, 1);
            host.log(
                LogLevel::Warn,
                "keyward usage: unreadable acknowledgement; the batch will be retried",
            );
            return Ok(());
        };
        let Some((batch, cas)) = host
            .shared_get(INFLIGHT_ENTRY)?
            .and_then(|(bytes, cas)| Some((<Option<InflightBatch>>::decode(&bytes)??, cas)))
        else {
            return Ok(());
        };
        if batch.batch_id != ack.batch_id {
            host.log(
                LogLevel::Warn,
                "keyward usage: acknowledgement for another batch ignored",
            );
            return Ok(());
        }
        for (key_id, total) in &batch.key_totals {
            update(
                host,
                &key_counter_entry(key_id),
                |counter: &mut SpendCounter| {
                    counter.acknowledge(ack.version, *total);
                    (true, ())
                },
            )?;
        }
        for (project_id, total) in &batch.project_totals {
            update(
                host,
                &project_counter_entry(project_id),
                |counter: &mut SpendCounter| {
                    counter.acknowledge(ack.version, *total);
                    (true, ())
                },
            )?;
        }
        acknowledge_windows(host, &batch.window_totals, ack.version)?;
        // Only this batch is cleared; a CAS miss means another holder already did it.
        let _ = host.shared_set(INFLIGHT_ENTRY, b"", Some(cas))? == SetOutcome::Written;
        if ack.duplicate {
            host.increment_metric(metrics.metering.reports_duplicate, 1);
        }
        host.increment_metric(metrics.metering.reports_acknowledged, 1);
        host.log(
            LogLevel::Info,
            &format!(
                "keyward usage: batch {} acknowledged, included from snapshot version {}",
                ack.batch_id, ack.version
            ),
        );
        Ok(())
    }
}

fn upsert(totals: &mut Vec<(String, u64)>, id: &str, total: u64) {
    match totals.iter_mut().find(|(seen, _)| seen == id) {
        Some((_, existing)) => *existing = (*existing).max(total),
        None => totals.push((id.to_owned(), total)),
    }
}

#[cfg(test)]
#[path = "usage_reporter_tests.rs"]
mod tests;
