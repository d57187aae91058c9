//! Policy sync inside Envoy: the poller (a bootstrap singleton, or the lease holder among the
//! filter VMs) fetches signed snapshots and publishes verified ones to shared data; every filter
//! VM follows the published snapshot on its ticks. Host-agnostic, tested with a fake host.

use std::collections::{HashSet, VecDeque};

use keyward_engine::chunked::{verify_manifest, BuildError, ChunkedBuild, Manifest};
use keyward_engine::request::Header;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::Policy;
use keyward_engine::sync::{
    lease_step, Layout, LeaseStep, Poller, PublishedStamp, SnapshotStamp, SyncSettings,
    INSTANCE_COUNTER_ENTRY, LEASE_ENTRY, MANIFEST_ENTRY, SNAPSHOT_ENTRY, SNAPSHOT_STAMP_ENTRY,
};

pub use crate::host::SetOutcome;
use crate::host::{HostError, LogLevel, SharedData, Telemetry, CREATE_ONLY};
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

/// How long one step of a load may spend checking chunks already in shared data.
const PROBE_BUDGET_MS: u64 = 10;

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
    Err(HostError::Contended)
}

/// Counters of the chunked layout, defined by the root context (ids `None` in tests that do not
/// look at them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkMetrics {
    /// Chunks fetched from the control plane and stored in shared data.
    pub fetched: Option<u32>,
    /// Chunks of a new manifest already in shared data (not fetched again: the delta).
    pub reused: Option<u32>,
    /// Chunks whose bytes did not match the signed manifest (tampered or truncated): the load
    /// is abandoned, the last good policy stays.
    pub mismatched: Option<u32>,
    /// Signed snapshots a filter VM could not compile (bad key records inside verified chunks).
    pub invalid: Option<u32>,
}

fn bump(host: &impl SyncHost, id: Option<u32>, by: i64) {
    if let Some(id) = id {
        if by != 0 {
            host.increment_metric(id, by);
        }
    }
}

/// Which request the poller is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// The whole signed envelope (layout `envelope`).
    Envelope,
    /// The signed manifest (layout `chunked`).
    Manifest,
    /// A chunk of the manifest being loaded (index into its chunk list).
    Chunk(usize),
}

/// A verified manifest whose chunks are being fetched into shared data.
#[derive(Debug)]
struct ChunkLoad {
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    etag: Option<String>,
    /// Chunks still to fetch, as indexes into `manifest.chunks`.
    pending: VecDeque<usize>,
}

/// The poller's state in one VM.
#[derive(Debug)]
pub struct SnapshotPoller {
    pub settings: SyncSettings,
    /// Unique among the VMs sharing this vm_id.
    me: String,
    next_poll_ms: u64,
    in_flight: Option<(u32, CallKind)>,
    etag: Option<String>,
    holds_lease: bool,
    load: Option<ChunkLoad>,
    /// Chunk entries this poller wrote that no published manifest holds yet; cleared (emptied
    /// in shared data) at the next publication unless it uses them.
    unpublished: Vec<String>,
    pub chunk_metrics: ChunkMetrics,
    /// The policy this poller just verified and published (envelope layout), with its stamp
    /// entry: the VM's own follower takes it instead of parsing the same bytes a second time.
    fresh: Option<(Vec<u8>, Policy)>,
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
            load: None,
            unpublished: Vec::new(),
            chunk_metrics: ChunkMetrics::default(),
            fresh: None,
        }
    }

    pub fn holds_lease(&self) -> bool {
        self.holds_lease
    }

    /// Whether chunks of a new manifest are being fetched.
    pub fn is_loading(&self) -> bool {
        self.load.is_some()
    }

    /// The policy published by the last response, if this poller parsed one, and the stamp
    /// entry it was published under.
    pub fn take_fresh(&mut self) -> Option<(Vec<u8>, Policy)> {
        self.fresh.take()
    }

    /// One tick: renew or take the lease when the filter VMs poll, then poll when due, or fetch
    /// the next chunk of a manifest being loaded.
    pub fn on_tick(&mut self, host: &impl SyncHost, metrics: &Metrics) -> Result<(), HostError> {
        let now = host.now_ms()?;
        if self.settings.poller == Poller::Lease {
            self.holds_lease = self.step_lease(host, now)?;
            if !self.holds_lease {
                // Another VM polls now; it fetches whatever chunks it lacks itself.
                self.load = None;
                return Ok(());
            }
        }
        if self.in_flight.is_some() {
            return Ok(());
        }
        if now < self.next_poll_ms {
            // Between polls, a load in progress goes on (its chain may have stopped on a
            // failed dispatch or a spent budget).
            self.advance(host, metrics, now);
            return Ok(());
        }
        self.poll(host, metrics, now);
        Ok(())
    }

    fn poll(&mut self, host: &impl SyncHost, metrics: &Metrics, now: u64) {
        self.next_poll_ms = now
            + self
                .settings
                .next_poll_delay_ms(now.wrapping_mul(2_654_435_761));
        let kind = match self.settings.layout {
            Layout::Envelope => CallKind::Envelope,
            Layout::Chunked => CallKind::Manifest,
        };
        // While loading, ask whether the manifest being loaded is still the newest one.
        let etag = match &self.load {
            Some(load) => load.etag.clone(),
            None => self.etag.clone(),
        };
        let path = self.settings.path.clone();
        self.dispatch(host, metrics, &path, etag.as_deref(), kind);
    }

    /// Moves a load on: chunks already in shared data (written by an earlier holder of the
    /// lease, say) are checked against the manifest and kept; the first missing one is
    /// fetched; once none is missing, the manifest is published. Probing stops after
    /// `PROBE_BUDGET_MS`; the next tick goes on.
    fn advance(&mut self, host: &impl SyncHost, metrics: &Metrics, start_ms: u64) {
        loop {
            let Some(load) = &mut self.load else { return };
            let Some(&index) = load.pending.front() else {
                let outcome = self.publish_if_complete(host).unwrap_or_else(|error| {
                    host.log(
                        LogLevel::Warn,
                        &format!("keyward sync: cannot publish ({})", error),
                    );
                    Some(SyncOutcome::Unreachable)
                });
                if let Some(outcome) = outcome {
                    count_sync(host, metrics, outcome);
                }
                return;
            };
            let Some(chunk) = load.manifest.chunks.get(index).cloned() else {
                self.load = None;
                return;
            };
            let entry = chunk.entry();
            match host.shared_get(&entry) {
                Ok(Some((bytes, _))) if chunk.matches(&bytes) => {
                    load.pending.pop_front();
                    self.unpublished.push(entry);
                    bump(host, self.chunk_metrics.reused, 1);
                    let spent = host
                        .now_ms()
                        .map_or(u64::MAX, |now| now.saturating_sub(start_ms));
                    if spent >= PROBE_BUDGET_MS {
                        return;
                    }
                }
                Ok(_) => {
                    let path = format!("{}{}", self.settings.chunk_path, chunk.sha256);
                    self.dispatch(host, metrics, &path, None, CallKind::Chunk(index));
                    return;
                }
                Err(error) => {
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "keyward sync: cannot read shared data ({error}); load abandoned",
                        ),
                    );
                    self.load = None;
                    return;
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        host: &impl SyncHost,
        metrics: &Metrics,
        path: &str,
        etag: Option<&str>,
        kind: CallKind,
    ) {
        let accept = match kind {
            CallKind::Chunk(_) => "application/x-ndjson",
            _ => "application/json",
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", path),
            (":authority", self.settings.authority.as_str()),
            ("accept", accept),
        ];
        if let Some(etag) = etag {
            headers.push(("if-none-match", etag));
        }
        match host.dispatch_get(&self.settings.cluster, &headers, self.settings.timeout_ms) {
            Ok(token) => self.in_flight = Some((token, kind)),
            Err(error) => {
                count_sync(host, metrics, SyncOutcome::Unreachable);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "keyward sync: cannot call cluster {:?} ({error})",
                        self.settings.cluster
                    ),
                );
            }
        }
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

    /// The control plane answered call `token`. Publishes a verified, newer snapshot; in the
    /// chunked layout, stores a verified chunk and fetches the next one.
    pub fn on_response(
        &mut self,
        host: &impl SyncHost,
        metrics: &Metrics,
        token: u32,
        body_size: usize,
    ) {
        let kind = match self.in_flight {
            Some((expected, kind)) if expected == token => kind,
            _ => return,
        };
        self.in_flight = None;
        let outcome = match kind {
            CallKind::Envelope => self.handle_envelope(host, body_size).map(Some),
            CallKind::Manifest => self.handle_manifest(host, body_size),
            CallKind::Chunk(index) => self.handle_chunk(host, index, body_size),
        };
        let outcome = outcome.unwrap_or_else(|error| {
            host.log(
                LogLevel::Warn,
                &format!("keyward sync: host call failed ({error})"),
            );
            if kind != CallKind::Envelope {
                self.load = None;
            }
            Some(SyncOutcome::Unreachable)
        });
        if let Some(outcome) = outcome {
            count_sync(host, metrics, outcome);
        }
        // Chunks are fetched back to back, not one per tick; a poll that falls due meanwhile
        // goes first (a newer manifest replaces the one being loaded).
        if self.in_flight.is_none() && self.load.is_some() {
            match host.now_ms() {
                Ok(now) if now >= self.next_poll_ms => self.poll(host, metrics, now),
                Ok(now) => self.advance(host, metrics, now),
                Err(_) => {}
            }
        }
    }

    /// The answer's status, or the outcome to count when it is neither 200 nor 304.
    fn status(host: &impl SyncHost) -> Result<(Result<bool, SyncOutcome>, Vec<Header>), HostError> {
        let headers = host.call_response_headers()?;
        let status = headers
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| core::str::from_utf8(v).ok())
            .map(str::to_owned);
        let verdict = match status.as_deref() {
            Some("304") => Ok(false),
            Some("200") => Ok(true),
            None => Err(SyncOutcome::Unreachable),
            // Envoy answers a call it could not complete (connection refused, reset, timed out,
            // no healthy host) with its own plain-text 503; the control plane's errors are JSON.
            Some("503") if !is_json(&headers) => {
                host.log(LogLevel::Warn, "keyward sync: control plane unreachable");
                Err(SyncOutcome::Unreachable)
            }
            Some(status) => {
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: control plane answered {status}"),
                );
                Err(SyncOutcome::HttpError)
            }
        };
        Ok((verdict, headers))
    }

    fn etag_of(headers: &[Header]) -> Option<String> {
        headers
            .iter()
            .find(|(n, _)| n == "etag")
            .and_then(|(_, v)| core::str::from_utf8(v).ok())
            .map(str::to_owned)
    }

    fn handle_envelope(
        &mut self,
        host: &impl SyncHost,
        body_size: usize,
    ) -> Result<SyncOutcome, HostError> {
        let headers = match Self::status(host)? {
            (Ok(true), headers) => headers,
            (Ok(false), _) => return Ok(SyncOutcome::NotModified),
            (Err(outcome), _) => return Ok(outcome),
        };
        let etag = Self::etag_of(&headers);
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
        let stamp = PublishedStamp {
            stamp: SnapshotStamp {
                version: policy.version,
                issued_at: policy.issued_at,
            },
            layout: Layout::Envelope,
        };
        let published = host.shared_get(SNAPSHOT_STAMP_ENTRY)?;
        let published_stamp = published
            .as_ref()
            .and_then(|(value, _)| PublishedStamp::decode(value));
        if let Some(stale) = stale(stamp.stamp, published_stamp) {
            host.log(LogLevel::Warn, &stale);
            return Ok(SyncOutcome::Rejected("stale_version"));
        }
        // The envelope first, then the stamp that tells followers to read it. An equal stamp is
        // written again too: it repairs an envelope a racing poller overwrote with an older one.
        host.shared_set(SNAPSHOT_ENTRY, &body, None)?;
        let cas = published.map_or(CREATE_ONLY, |(_, cas)| cas);
        let stamp_bytes = stamp.encode().into_bytes();
        if host.shared_set(SNAPSHOT_STAMP_ENTRY, &stamp_bytes, Some(cas))?
            == SetOutcome::CasMismatch
        {
            // Another poller published meanwhile; fetch again next time instead of trusting
            // this ETag.
            return Ok(SyncOutcome::NotModified);
        }
        self.etag = etag;
        if published_stamp.is_some_and(|p| p.layout == Layout::Chunked) {
            self.retire(host, &HashSet::new(), true)?;
        }
        if Some(stamp) == published_stamp {
            return Ok(SyncOutcome::NotModified);
        }
        host.log(
            LogLevel::Info,
            &format!(
                "keyward sync: published policy version {} ({} keys)",
                policy.version,
                policy.keys().len()
            ),
        );
        self.fresh = Some((stamp_bytes, policy));
        Ok(SyncOutcome::Published)
    }

    /// Reads the published manifest (if the published snapshot is chunked).
    fn published_manifest(&self, host: &impl SyncHost) -> Result<Option<Manifest>, HostError> {
        let Some((bytes, _)) = host.shared_get(MANIFEST_ENTRY)? else {
            return Ok(None);
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        Ok(verify_manifest(&bytes, &self.settings.signing_keys).ok())
    }

    fn handle_manifest(
        &mut self,
        host: &impl SyncHost,
        body_size: usize,
    ) -> Result<Option<SyncOutcome>, HostError> {
        let headers = match Self::status(host)? {
            (Ok(true), headers) => headers,
            // Unchanged: a load in progress goes on.
            (Ok(false), _) => {
                return Ok(self.load.is_none().then_some(SyncOutcome::NotModified));
            }
            (Err(outcome), _) => return Ok(Some(outcome)),
        };
        let etag = Self::etag_of(&headers);
        let body = host.call_response_body(body_size)?;
        let manifest = match verify_manifest(&body, &self.settings.signing_keys) {
            Ok(manifest) => manifest,
            Err(rejected) => {
                host.log(
                    LogLevel::Error,
                    &format!("keyward sync: manifest rejected, last good policy stays: {rejected}"),
                );
                return Ok(Some(SyncOutcome::Rejected(rejected.reason())));
            }
        };
        if let Some(load) = &self.load {
            if load.manifest == manifest {
                return Ok(None);
            }
        }
        let published_stamp = host
            .shared_get(SNAPSHOT_STAMP_ENTRY)?
            .and_then(|(value, _)| PublishedStamp::decode(&value));
        if let Some(stale) = stale(manifest.stamp(), published_stamp) {
            host.log(LogLevel::Warn, &stale);
            return Ok(Some(SyncOutcome::Rejected("stale_version")));
        }
        // What shared data holds already: the published manifest's chunks, and those this
        // poller fetched for a manifest it did not publish (yet).
        let mut present: HashSet<String> = self.unpublished.iter().cloned().collect();
        if published_stamp.is_some_and(|p| p.layout == Layout::Chunked) {
            if let Some(published) = self.published_manifest(host)? {
                present.extend(published.chunks.iter().map(|chunk| chunk.entry()));
            }
        }
        let pending: VecDeque<usize> = manifest
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, chunk)| !present.contains(&chunk.entry()))
            .map(|(index, _)| index)
            .collect();
        bump(
            host,
            self.chunk_metrics.reused,
            (manifest.chunks.len() - pending.len()) as i64,
        );
        if self.load.is_some() {
            host.log(
                LogLevel::Info,
                &format!(
                    "keyward sync: a newer manifest (version {}) replaces the one being loaded",
                    manifest.version
                ),
            );
        }
        self.load = Some(ChunkLoad {
            manifest_bytes: body,
            manifest,
            etag,
            pending,
        });
        Ok(None)
    }

    fn handle_chunk(
        &mut self,
        host: &impl SyncHost,
        index: usize,
        body_size: usize,
    ) -> Result<Option<SyncOutcome>, HostError> {
        let Some(load) = &mut self.load else {
            return Ok(None);
        };
        if load.pending.front() != Some(&index) {
            // An answer for a manifest that was replaced meanwhile.
            return Ok(None);
        }
        let Some(chunk) = load.manifest.chunks.get(index) else {
            self.load = None;
            return Ok(None);
        };
        match Self::status(host)? {
            (Ok(true), _) => {}
            (Ok(false), _) | (Err(_), _) => {
                // Gone (the control plane moved on) or failing: start over from the manifest
                // at the next poll; the last good policy stays.
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "keyward sync: chunk {} of version {} could not be fetched; load abandoned",
                        chunk.sha256, load.manifest.version
                    ),
                );
                self.load = None;
                return Ok(Some(SyncOutcome::HttpError));
            }
        }
        let body = host.call_response_body(body_size)?;
        if !chunk.matches(&body) {
            host.log(
                LogLevel::Error,
                &format!(
                    "keyward sync: chunk {} of version {} does not match the signed manifest; load abandoned, last good policy stays",
                    chunk.sha256, load.manifest.version
                ),
            );
            bump(host, self.chunk_metrics.mismatched, 1);
            self.load = None;
            return Ok(Some(SyncOutcome::Rejected("bad_signature")));
        }
        let entry = chunk.entry();
        host.shared_set(&entry, &body, None)?;
        self.unpublished.push(entry);
        load.pending.pop_front();
        bump(host, self.chunk_metrics.fetched, 1);
        Ok(None)
    }

    /// Publishes the loaded manifest once all its chunks are in shared data: the manifest, then
    /// the stamp (with CAS). Followers start reading only after the stamp moved, so none of
    /// them ever sees part of a snapshot.
    fn publish_if_complete(
        &mut self,
        host: &impl SyncHost,
    ) -> Result<Option<SyncOutcome>, HostError> {
        match &self.load {
            Some(load) if load.pending.is_empty() => {}
            _ => return Ok(None),
        }
        let Some(load) = self.load.take() else {
            return Ok(None);
        };
        let stamp = PublishedStamp {
            stamp: load.manifest.stamp(),
            layout: Layout::Chunked,
        };
        let published = host.shared_get(SNAPSHOT_STAMP_ENTRY)?;
        let published_stamp = published
            .as_ref()
            .and_then(|(value, _)| PublishedStamp::decode(value));
        if let Some(stale) = stale(stamp.stamp, published_stamp) {
            host.log(LogLevel::Warn, &stale);
            return Ok(Some(SyncOutcome::Rejected("stale_version")));
        }
        let previous = match published_stamp.map(|p| p.layout) {
            Some(Layout::Chunked) => self.published_manifest(host)?,
            _ => None,
        };
        host.shared_set(MANIFEST_ENTRY, &load.manifest_bytes, None)?;
        let cas = published.map_or(CREATE_ONLY, |(_, cas)| cas);
        if host.shared_set(SNAPSHOT_STAMP_ENTRY, stamp.encode().as_bytes(), Some(cas))?
            == SetOutcome::CasMismatch
        {
            return Ok(Some(SyncOutcome::NotModified));
        }
        self.etag = load.etag;
        let keep: HashSet<String> = load.manifest.chunks.iter().map(|c| c.entry()).collect();
        // Free what the new snapshot does not use: the previous manifest's other chunks, chunks
        // of abandoned loads, and an envelope published before.
        if let Some(previous) = previous {
            self.unpublished
                .extend(previous.chunks.iter().map(|chunk| chunk.entry()));
        }
        if published_stamp.is_some_and(|p| p.layout == Layout::Envelope) {
            host.shared_set(SNAPSHOT_ENTRY, b"", None)?;
        }
        self.retire(host, &keep, false)?;
        if Some(stamp) == published_stamp {
            return Ok(Some(SyncOutcome::NotModified));
        }
        host.log(
            LogLevel::Info,
            &format!(
                "keyward sync: published policy version {} ({} keys in {} chunks)",
                load.manifest.version,
                load.manifest.keys,
                load.manifest.chunks.len()
            ),
        );
        Ok(Some(SyncOutcome::Published))
    }

    /// Empties the chunk entries in `unpublished` that `keep` does not hold (proxy-wasm cannot
    /// delete an entry; an empty one costs only its name).
    fn retire(
        &mut self,
        host: &impl SyncHost,
        keep: &HashSet<String>,
        drop_manifest: bool,
    ) -> Result<(), HostError> {
        if drop_manifest {
            if let Some(previous) = self.published_manifest(host)? {
                self.unpublished
                    .extend(previous.chunks.iter().map(|chunk| chunk.entry()));
                host.shared_set(MANIFEST_ENTRY, b"", None)?;
            }
        }
        let mut done = HashSet::new();
        for entry in std::mem::take(&mut self.unpublished) {
            if !keep.contains(&entry) && done.insert(entry.clone()) {
                host.shared_set(&entry, b"", None)?;
            }
        }
        Ok(())
    }
}

/// A warning when `stamp` is older than the published one (an equal stamp is fine: it repairs).
fn stale(stamp: SnapshotStamp, published: Option<PublishedStamp>) -> Option<String> {
    let published = published.map(|p| p.stamp);
    if stamp.replaces(published) || Some(stamp) == published {
        return None;
    }
    Some(format!(
        "keyward sync: control plane served version {} older than the published {}",
        stamp.version,
        published.map_or(0, |s| s.version)
    ))
}

/// What a look at the published snapshot found.
#[derive(Debug)]
pub enum Followed {
    /// Nothing new (or nothing usable yet).
    Nothing,
    /// A chunked snapshot is being compiled; more work is left for the next ticks, which
    /// should come quickly.
    Loading,
    /// A newer policy, complete and verified.
    Updated(Box<Policy>),
    /// The published snapshot verified but does not compile; it is skipped for good.
    Rejected,
}

/// A chunked snapshot being compiled by a filter VM.
#[derive(Debug)]
struct Building {
    stamp_bytes: Vec<u8>,
    build: ChunkedBuild,
    /// The bytes of the chunk being worked on.
    chunk: Option<Vec<u8>>,
}

/// A filter VM's view of the published snapshot.
#[derive(Debug, Default)]
pub struct PolicyFollower {
    seen: Option<Vec<u8>>,
    building: Option<Building>,
}

impl PolicyFollower {
    /// Records that the snapshot under this stamp entry is in use already (the VM's own poller
    /// handed it over).
    pub fn mark_seen(&mut self, stamp_bytes: Vec<u8>) {
        self.seen = Some(stamp_bytes);
        self.building = None;
    }

    /// Whether a chunked snapshot is being compiled.
    pub fn is_building(&self) -> bool {
        self.building.is_some()
    }

    /// Looks for a newer policy than `current`. An envelope is verified and compiled at once
    /// (it is small); a chunked snapshot is compiled over several calls, each spending at most
    /// about `budget_ms` (checked between slices of a few hundred keys), so the VM keeps
    /// answering requests with its current policy meanwhile. Everything is verified again here:
    /// shared data is trusted, but a policy is never used without a signature check.
    pub fn refresh(
        &mut self,
        host: &impl SyncHost,
        settings: &SyncSettings,
        current: Option<SnapshotStamp>,
        budget_ms: u64,
    ) -> Result<Followed, HostError> {
        let Some((stamp_bytes, _)) = host.shared_get(SNAPSHOT_STAMP_ENTRY)? else {
            return Ok(Followed::Nothing);
        };
        if self.seen.as_deref() == Some(stamp_bytes.as_slice()) {
            self.building = None;
            return Ok(Followed::Nothing);
        }
        let Some(published) = PublishedStamp::decode(&stamp_bytes) else {
            return Ok(Followed::Nothing);
        };
        if !published.stamp.replaces(current) {
            self.mark_seen(stamp_bytes);
            return Ok(Followed::Nothing);
        }
        match published.layout {
            Layout::Envelope => {
                self.building = None;
                self.follow_envelope(host, settings, current, stamp_bytes, published.stamp)
            }
            Layout::Chunked => {
                self.follow_chunked(host, settings, stamp_bytes, published.stamp, budget_ms)
            }
        }
    }

    fn follow_envelope(
        &mut self,
        host: &impl SyncHost,
        settings: &SyncSettings,
        current: Option<SnapshotStamp>,
        stamp_bytes: Vec<u8>,
        stamp: SnapshotStamp,
    ) -> Result<Followed, HostError> {
        let Some((envelope, _)) = host.shared_get(SNAPSHOT_ENTRY)? else {
            return Ok(Followed::Nothing);
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
                Ok(if envelope_stamp.replaces(current) {
                    Followed::Updated(Box::new(policy))
                } else {
                    Followed::Nothing
                })
            }
            Err(rejected) => {
                // Not marked as seen: the stamp may have been published ahead of its envelope.
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: shared snapshot not usable yet: {rejected}"),
                );
                Ok(Followed::Nothing)
            }
        }
    }

    fn follow_chunked(
        &mut self,
        host: &impl SyncHost,
        settings: &SyncSettings,
        stamp_bytes: Vec<u8>,
        stamp: SnapshotStamp,
        budget_ms: u64,
    ) -> Result<Followed, HostError> {
        let start = host.now_ms()?;
        if self
            .building
            .as_ref()
            .is_some_and(|building| building.stamp_bytes != stamp_bytes)
        {
            // A newer snapshot was published mid-build: start over with it.
            self.building = None;
        }
        if self.building.is_none() {
            let Some((bytes, _)) = host.shared_get(MANIFEST_ENTRY)? else {
                return Ok(Followed::Nothing);
            };
            let manifest = match verify_manifest(&bytes, &settings.signing_keys) {
                Ok(manifest) => manifest,
                Err(rejected) => {
                    host.log(
                        LogLevel::Warn,
                        &format!("keyward sync: shared manifest not usable yet: {rejected}"),
                    );
                    return Ok(Followed::Nothing);
                }
            };
            if manifest.stamp() != stamp {
                // Mid-publication: the stamp moves after the manifest.
                return Ok(Followed::Nothing);
            }
            let build = match ChunkedBuild::new(&manifest) {
                Ok(build) => build,
                Err(error) => {
                    self.mark_seen(stamp_bytes);
                    host.log(
                        LogLevel::Error,
                        &format!("keyward sync: published snapshot unusable: {error}"),
                    );
                    return Ok(Followed::Rejected);
                }
            };
            self.building = Some(Building {
                stamp_bytes: stamp_bytes.clone(),
                build,
                chunk: None,
            });
        }
        let deadline = start.saturating_add(budget_ms);
        let out_of_time = || host.now_ms().map_or(true, |now| now >= deadline);
        loop {
            let Some(building) = &mut self.building else {
                return Ok(Followed::Nothing);
            };
            let Some(entry) = building.build.next_chunk().map(|chunk| chunk.entry()) else {
                let Some(building) = self.building.take() else {
                    return Ok(Followed::Nothing);
                };
                self.seen = Some(stamp_bytes);
                return Ok(match building.build.finish() {
                    Some(policy) => Followed::Updated(Box::new(policy)),
                    None => Followed::Nothing,
                });
            };
            if building.chunk.is_none() {
                match host.shared_get(&entry)? {
                    Some((bytes, _)) if !bytes.is_empty() => building.chunk = Some(bytes),
                    // Not there: retired by a newer publication (the next look starts over
                    // with it) or not written yet. Try again on a later tick.
                    _ => return Ok(Followed::Nothing),
                }
            }
            let bytes = building.chunk.as_deref().unwrap_or_default();
            match building.build.work(bytes, out_of_time) {
                Ok(true) => building.chunk = None,
                Ok(false) => return Ok(Followed::Loading),
                Err(BuildError::ChunkMismatch) => {
                    building.chunk = None;
                    return Ok(Followed::Nothing);
                }
                Err(BuildError::Invalid(error)) => {
                    self.mark_seen(stamp_bytes);
                    host.log(
                        LogLevel::Error,
                        &format!(
                            "keyward sync: published snapshot version {} unusable, last good policy stays: {error}",
                            stamp.version
                        ),
                    );
                    return Ok(Followed::Rejected);
                }
            }
            if out_of_time() {
                return Ok(Followed::Loading);
            }
        }
    }
}

fn is_json(headers: &[Header]) -> bool {
    headers.iter().any(|(name, value)| {
        name == "content-type"
            && value
                .get(..16)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"application/json"))
    })
}

#[cfg(test)]
#[path = "sync_agent_tests.rs"]
mod tests;
