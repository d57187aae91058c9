//! Policy sync inside Envoy: the poller (a bootstrap singleton, or the lease holder among the
//! filter VMs) fetches signed snapshots and publishes verified ones to shared data; every filter
//! VM follows the published snapshot on its ticks. Host-agnostic, tested with a fake host.

use keyward_engine::request::Header;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::Policy;
use keyward_engine::sync::{
    lease_step, LeaseStep, Poller, SnapshotStamp, SyncSettings, INSTANCE_COUNTER_ENTRY,
    LEASE_ENTRY, SNAPSHOT_ENTRY, SNAPSHOT_STAMP_ENTRY,
};

pub use crate::host::SetOutcome;
use crate::host::{HostError, LogLevel, SharedData, Telemetry};
use crate::metrics::{Metrics, SyncOutcome};

/// What the sync needs from the host, besides metrics and logs.
pub trait SyncHost: Telemetry + SharedData {
    /// Starts a GET; returns the call's token.
    fn dispatch_get(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, HostError>;
    /// Starts a POST; returns the call's token.
    fn dispatch_post(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError>;
    fn call_response_headers(&self) -> Result<Vec<Header>, HostError>;
    fn call_response_body(&self, size: usize) -> Result<Vec<u8>, HostError>;
}

fn count_sync(host: &impl SyncHost, metrics: &Metrics, outcome: SyncOutcome) {
    if let Some(id) = metrics.sync_counter(outcome) {
        host.increment_metric(id, 1);
    }
}

/// CAS value that only succeeds while the entry is missing (see FACTS: cas 0 would overwrite).
const CREATE_ONLY: u32 = u32::MAX;

/// A number no other VM sharing this vm_id has been given: the lease needs holder ids that
/// differ between VMs, and worker VMs are clones that start in the same millisecond with the
/// same context ids, so neither can tell them apart. A CAS-incremented counter can.
pub fn claim_instance_number(host: &impl SyncHost) -> Result<u64, HostError> {
    // Each failed attempt means another VM just claimed a number; a few suffice.
    for _ in 0..64 {
        let current = host.shared_get(INSTANCE_COUNTER_ENTRY)?;
        let (next, cas) = match &current {
            Some((value, cas)) => {
                let text = core::str::from_utf8(value).unwrap_or("0");
                (text.parse::<u64>().unwrap_or(0) + 1, *cas)
            }
            None => (1, CREATE_ONLY),
        };
        let written = host.shared_set(
            INSTANCE_COUNTER_ENTRY,
            next.to_string().as_bytes(),
            Some(cas),
        )?;
        if written == SetOutcome::Written {
            return Ok(next);
        }
    }
    Err(HostError { status: 8 })
}

/// The poller's state in one VM.
#[derive(Debug)]
pub struct SnapshotPoller {
    pub settings: SyncSettings,
    /// Unique among the VMs sharing this vm_id.
    me: String,
    next_poll_ms: u64,
    in_flight: Option<u32>,
    etag: Option<String>,
    holds_lease: bool,
}

impl SnapshotPoller {
    pub fn new(settings: SyncSettings, me: String) -> Self {
        Self {
            settings,
            me,
            next_poll_ms: 0,
            in_flight: None,
            etag: None,
            holds_lease: false,
        }
    }

    pub fn holds_lease(&self) -> bool {
        self.holds_lease
    }

    /// One tick: renew or take the lease when the filter VMs poll, then poll when due.
    pub fn on_tick(&mut self, host: &impl SyncHost, metrics: &Metrics) -> Result<(), HostError> {
        let now = host.now_ms()?;
        if self.settings.poller == Poller::Lease {
            self.holds_lease = self.step_lease(host, now)?;
            if !self.holds_lease {
                return Ok(());
            }
        }
        if self.in_flight.is_some() || now < self.next_poll_ms {
            return Ok(());
        }
        self.next_poll_ms = now
            + self
                .settings
                .next_poll_delay_ms(now.wrapping_mul(2_654_435_761));
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.settings.path.as_str()),
            (":authority", self.settings.authority.as_str()),
            ("accept", "application/json"),
        ];
        if let Some(etag) = &self.etag {
            headers.push(("if-none-match", etag.as_str()));
        }
        match host.dispatch_get(&self.settings.cluster, &headers, self.settings.timeout_ms) {
            Ok(token) => self.in_flight = Some(token),
            Err(error) => {
                count_sync(host, metrics, SyncOutcome::Unreachable);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "keyward sync: cannot call cluster {:?} (host status {})",
                        self.settings.cluster, error.status
                    ),
                );
            }
        }
        Ok(())
    }

    fn step_lease(&self, host: &impl SyncHost, now: u64) -> Result<bool, HostError> {
        let current = host.shared_get(LEASE_ENTRY)?;
        let (value, cas) = match &current {
            Some((value, cas)) => (Some(value.as_slice()), *cas),
            None => (None, CREATE_ONLY),
        };
        match lease_step(value, &self.me, now, self.settings.lease_ttl_ms()) {
            LeaseStep::Wait => Ok(false),
            LeaseStep::Write(lease) => {
                let written = host.shared_set(LEASE_ENTRY, lease.encode().as_bytes(), Some(cas))?;
                Ok(written == SetOutcome::Written)
            }
        }
    }

    /// The control plane answered call `token`. Publishes a verified, newer snapshot.
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
        let outcome = self.handle_response(host, body_size);
        let outcome = outcome.unwrap_or_else(|error| {
            host.log(
                LogLevel::Warn,
                &format!("keyward sync: host call failed (status {})", error.status),
            );
            SyncOutcome::Unreachable
        });
        count_sync(host, metrics, outcome);
    }

    fn handle_response(
        &mut self,
        host: &impl SyncHost,
        body_size: usize,
    ) -> Result<SyncOutcome, HostError> {
        let headers = host.call_response_headers()?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| core::str::from_utf8(v).ok())
        };
        match header(":status") {
            Some("304") => return Ok(SyncOutcome::NotModified),
            Some("200") => {}
            None => return Ok(SyncOutcome::Unreachable),
            Some(status) => {
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: control plane answered {status}"),
                );
                return Ok(SyncOutcome::HttpError);
            }
        }
        let etag = header("etag").map(str::to_owned);
        let body = host.call_response_body(body_size)?;
        let policy = match verify_snapshot(&body, &self.settings.signing_keys) {
            Ok(policy) => policy,
            Err(rejected) => {
                host.log(
                    LogLevel::Error,
                    &format!("keyward sync: snapshot rejected, last good policy stays: {rejected}"),
                );
                return Ok(SyncOutcome::Rejected(rejected.reason()));
            }
        };
        let stamp = SnapshotStamp {
            version: policy.version,
            issued_at: policy.issued_at,
        };
        let published = host.shared_get(SNAPSHOT_STAMP_ENTRY)?;
        let published_stamp = published
            .as_ref()
            .and_then(|(value, _)| SnapshotStamp::decode(value));
        if !stamp.replaces(published_stamp) && Some(stamp) != published_stamp {
            host.log(
                LogLevel::Warn,
                &format!(
                    "keyward sync: control plane served version {} older than the published {}",
                    stamp.version,
                    published_stamp.map_or(0, |s| s.version)
                ),
            );
            return Ok(SyncOutcome::Rejected("stale_version"));
        }
        // The envelope first, then the stamp that tells followers to read it. An equal stamp is
        // written again too: it repairs an envelope a racing poller overwrote with an older one.
        host.shared_set(SNAPSHOT_ENTRY, &body, None)?;
        let cas = published.map_or(CREATE_ONLY, |(_, cas)| cas);
        if host.shared_set(SNAPSHOT_STAMP_ENTRY, stamp.encode().as_bytes(), Some(cas))?
            == SetOutcome::CasMismatch
        {
            // Another poller published meanwhile; fetch again next time instead of trusting
            // this ETag.
            return Ok(SyncOutcome::NotModified);
        }
        let newly_published = Some(stamp) != published_stamp;
        if !newly_published {
            self.etag = etag;
            return Ok(SyncOutcome::NotModified);
        }
        self.etag = etag;
        host.log(
            LogLevel::Info,
            &format!(
                "keyward sync: published policy version {} ({} keys)",
                policy.version,
                policy.keys().len()
            ),
        );
        Ok(SyncOutcome::Published)
    }
}

/// A filter VM's view of the published snapshot.
#[derive(Debug, Default)]
pub struct PolicyFollower {
    seen: Option<Vec<u8>>,
}

impl PolicyFollower {
    /// Returns a newer policy than `current` when one was published since the last look. The
    /// envelope is verified again here: shared data is trusted, but a policy is never used
    /// without a signature check.
    pub fn refresh(
        &mut self,
        host: &impl SyncHost,
        settings: &SyncSettings,
        current: Option<SnapshotStamp>,
    ) -> Result<Option<Policy>, HostError> {
        let Some((stamp_bytes, _)) = host.shared_get(SNAPSHOT_STAMP_ENTRY)? else {
            return Ok(None);
        };
        if self.seen.as_deref() == Some(stamp_bytes.as_slice()) {
            return Ok(None);
        }
        let Some(stamp) = SnapshotStamp::decode(&stamp_bytes) else {
            return Ok(None);
        };
        if !stamp.replaces(current) {
            self.seen = Some(stamp_bytes);
            return Ok(None);
        }
        let Some((envelope, _)) = host.shared_get(SNAPSHOT_ENTRY)? else {
            return Ok(None);
        };
        match verify_snapshot(&envelope, &settings.signing_keys) {
            Ok(policy) => {
                let envelope_stamp = SnapshotStamp {
                    version: policy.version,
                    issued_at: policy.issued_at,
                };
                // An envelope that does not match its stamp is mid-publication: look again on
                // the next tick rather than settle on it.
                if envelope_stamp == stamp {
                    self.seen = Some(stamp_bytes);
                }
                Ok(envelope_stamp.replaces(current).then_some(policy))
            }
            Err(rejected) => {
                // Not marked as seen: the stamp may have been published ahead of its envelope.
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: shared snapshot not usable yet: {rejected}"),
                );
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
#[path = "sync_agent_tests.rs"]
mod tests;
