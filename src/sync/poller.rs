//! The VM that polls (the sync singleton, or the lease holder among the filter VMs): fetches
//! signed envelopes, or signed manifests and their chunks, verifies them and publishes them to
//! shared data for every filter VM to follow.

use std::collections::{HashSet, VecDeque};

use keyward_engine::chunked::{verify_manifest, Manifest};
use keyward_engine::request::Header;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::Policy;
use keyward_engine::sync::{
    Layout, Poller, PublishedStamp, SnapshotStamp, SyncSettings, MANIFEST_ENTRY, SNAPSHOT_ENTRY,
    SNAPSHOT_STAMP_ENTRY,
};

use super::lease::hold_lease;
use crate::host::{header_text, HostError, LogLevel, SetOutcome, SyncHost, CREATE_ONLY};
use crate::metrics::{Metrics, RejectionReason, SyncOutcome};

/// How long one step of a load may spend checking chunks already in shared data.
const PROBE_BUDGET_MS: u64 = 10;

fn count_sync(host: &impl SyncHost, metrics: &Metrics, outcome: SyncOutcome) {
    if let Some(id) = metrics.sync_counter(outcome) {
        host.increment_metric(id, 1);
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
    /// The last-known-good envelope (`sync.last_good`), after the control plane failed.
    LastGood,
}

/// Where a signed envelope came from: said in the logs, since either can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    ControlPlane,
    LastGoodFile,
}

/// Whether the last-known-good source is still worth a call. Envoy reads the file it serves
/// once, at start, so one answer (used, refused or empty) settles it for this poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastGood {
    NotConfigured,
    Untried,
    Settled,
}

/// How the control plane answered a call.
#[derive(Debug)]
enum Answer {
    /// 200, with these headers.
    Fresh(Vec<Header>),
    /// 304.
    NotModified,
    /// Anything else, counted as this outcome.
    Failed(SyncOutcome),
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

/// The published stamp as shared data holds it, and the CAS token to replace it with.
struct Published {
    stamp: Option<PublishedStamp>,
    cas: u32,
}

impl Published {
    fn read(host: &impl SyncHost) -> Result<Published, HostError> {
        Ok(match host.shared_get(SNAPSHOT_STAMP_ENTRY)? {
            Some((value, cas)) => Published {
                stamp: PublishedStamp::decode(&value),
                cas,
            },
            None => Published {
                stamp: None,
                cas: CREATE_ONLY,
            },
        })
    }

    /// A warning when `stamp` is older than the published one (an equal stamp is fine: it
    /// repairs).
    fn staler_than(&self, stamp: SnapshotStamp) -> Option<String> {
        let published = self.stamp.map(|p| p.stamp);
        if stamp.replaces(published) || Some(stamp) == published {
            return None;
        }
        Some(format!(
            "keyward sync: control plane served version {} older than the published {}",
            stamp.version,
            published.map_or(0, |s| s.version)
        ))
    }

    fn layout(&self) -> Option<Layout> {
        self.stamp.map(|p| p.layout)
    }
}

/// The poller's state in one VM.
#[derive(Debug)]
pub struct SnapshotPoller {
    settings: SyncSettings,
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
    /// The policy this poller just verified and published (envelope layout), with its stamp
    /// entry: the VM's own follower takes it instead of parsing the same bytes a second time.
    fresh: Option<(Vec<u8>, Policy)>,
    last_good: LastGood,
}

impl SnapshotPoller {
    pub fn new(settings: SyncSettings, me: String) -> Self {
        let last_good = match settings.last_good {
            Some(_) => LastGood::Untried,
            None => LastGood::NotConfigured,
        };
        Self {
            last_good,
            settings,
            me,
            next_poll_ms: 0,
            in_flight: None,
            etag: None,
            holds_lease: false,
            load: None,
            unpublished: Vec::new(),
            fresh: None,
        }
    }

    pub fn holds_lease(&self) -> bool {
        self.holds_lease
    }

    /// The token of the call being waited for.
    #[cfg(test)]
    pub fn call_in_flight(&self) -> Option<u32> {
        self.in_flight.map(|(token, _)| token)
    }

    /// Whether chunks of a new manifest are being fetched.
    #[cfg(test)]
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
            self.holds_lease = hold_lease(host, &self.me, now, self.settings.lease_ttl_ms())?;
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
                    host.increment_metric(metrics.chunks_reused, 1);
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

    /// After a failed poll: while this Envoy has published no policy yet, fetch the
    /// last-known-good envelope instead, so that a start during a control-plane outage enforces
    /// the last policy rather than refusing everything. Once anything is published, the control
    /// plane alone can replace it.
    fn fall_back_to_last_good(
        &mut self,
        host: &impl SyncHost,
        metrics: &Metrics,
    ) -> Result<(), HostError> {
        let Some(source) = self.settings.last_good.clone() else {
            return Ok(());
        };
        if self.last_good != LastGood::Untried || Published::read(host)?.stamp.is_some() {
            return Ok(());
        }
        // Envoy serves the file only to a request bearing the data-plane token, which
        // `dispatch` sends.
        self.dispatch(host, metrics, &source.path, None, CallKind::LastGood);
        Ok(())
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
        let authorization = self
            .settings
            .token
            .as_ref()
            .map(|token| format!("Bearer {token}"));
        let (cluster, authority) = match (kind, &self.settings.last_good) {
            (CallKind::LastGood, Some(source)) => (&source.cluster, &source.authority),
            _ => (&self.settings.cluster, &self.settings.authority),
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority.as_str()),
            ("accept", accept),
        ];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        if let Some(etag) = etag {
            headers.push(("if-none-match", etag));
        }
        match host.dispatch_get(cluster, &headers, self.settings.timeout_ms) {
            Ok(token) => self.in_flight = Some((token, kind)),
            Err(error) => {
                count_sync(host, metrics, SyncOutcome::Unreachable);
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: cannot call cluster {cluster:?} ({error})"),
                );
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
            CallKind::LastGood => self.handle_last_good(host, body_size),
            CallKind::Manifest => self.handle_manifest(host, metrics, body_size),
            CallKind::Chunk(index) => self.handle_chunk(host, metrics, index, body_size),
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
            let failed = !matches!(outcome, SyncOutcome::Published | SyncOutcome::NotModified);
            if failed && kind == CallKind::Envelope {
                if let Err(error) = self.fall_back_to_last_good(host, metrics) {
                    host.log(
                        LogLevel::Warn,
                        &format!("keyward sync: cannot read shared data ({error})"),
                    );
                }
            }
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

    /// How the control plane answered the call being handled.
    fn answer(host: &impl SyncHost) -> Result<Answer, HostError> {
        let headers = host.call_response_headers()?;
        let answer = match header_text(&headers, ":status") {
            Some("304") => Answer::NotModified,
            Some("200") => Answer::Fresh(headers),
            None => Answer::Failed(SyncOutcome::Unreachable),
            // Envoy answers a call it could not complete (connection refused, reset, timed out,
            // no healthy host) with its own plain-text 503; the control plane's errors are JSON.
            Some("503") if !is_json(&headers) => {
                host.log(LogLevel::Warn, "keyward sync: control plane unreachable");
                Answer::Failed(SyncOutcome::Unreachable)
            }
            Some(status) => {
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: control plane answered {status}"),
                );
                Answer::Failed(SyncOutcome::HttpError)
            }
        };
        Ok(answer)
    }

    fn handle_envelope(
        &mut self,
        host: &impl SyncHost,
        body_size: usize,
    ) -> Result<SyncOutcome, HostError> {
        let headers = match Self::answer(host)? {
            Answer::Fresh(headers) => headers,
            Answer::NotModified => return Ok(SyncOutcome::NotModified),
            Answer::Failed(outcome) => return Ok(outcome),
        };
        let etag = header_text(&headers, "etag").map(str::to_owned);
        let body = host.call_response_body(body_size)?;
        self.publish_envelope(host, body, etag, Source::ControlPlane)
    }

    /// The last-known-good source answered. Its envelope goes through the same checks as one
    /// from the control plane; a refused or empty file leaves the filter failing closed.
    fn handle_last_good(
        &mut self,
        host: &impl SyncHost,
        body_size: usize,
    ) -> Result<Option<SyncOutcome>, HostError> {
        let headers = host.call_response_headers()?;
        match header_text(&headers, ":status") {
            Some("200") => {}
            // Envoy's own answer: its listener is not up yet; try again after the next failed
            // poll.
            Some("503") if !is_json(&headers) => return Ok(None),
            status => {
                // A 404 is the listener refusing the token: no later call would differ.
                self.last_good = LastGood::Settled;
                host.log(
                    LogLevel::Error,
                    &format!(
                        "keyward sync: the last-known-good listener answered {}, not the file \
                         (is the data-plane token the one it was rendered with?)",
                        status.unwrap_or("nothing")
                    ),
                );
                return Ok(None);
            }
        }
        self.last_good = LastGood::Settled;
        let body = host.call_response_body(body_size)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            host.log(
                LogLevel::Warn,
                "keyward sync: the last-known-good file is empty; no policy until the control \
                 plane answers",
            );
            return Ok(None);
        }
        self.publish_envelope(host, body, None, Source::LastGoodFile)
            .map(Some)
    }

    /// Verifies `body` (signature, expiry) and publishes it unless it is older than the
    /// published snapshot: the envelope first, then the stamp entry followers watch.
    fn publish_envelope(
        &mut self,
        host: &impl SyncHost,
        body: Vec<u8>,
        etag: Option<String>,
        source: Source,
    ) -> Result<SyncOutcome, HostError> {
        let now = host.now_ms()? / 1000;
        let policy = match verify_snapshot(&body, &self.settings.public_keys, now) {
            Ok(policy) => policy,
            Err(rejected) => {
                let message = match source {
                    Source::ControlPlane => {
                        format!(
                            "keyward sync: snapshot rejected, last good policy stays: {rejected}"
                        )
                    }
                    Source::LastGoodFile => format!(
                        "keyward sync: last-known-good file rejected ({}): {rejected}; no policy \
                         until the control plane answers",
                        rejected.reason()
                    ),
                };
                host.log(LogLevel::Error, &message);
                return Ok(SyncOutcome::Rejected(RejectionReason::from(&rejected)));
            }
        };
        let stamp = PublishedStamp {
            stamp: SnapshotStamp {
                version: policy.version,
                issued_at: policy.issued_at,
            },
            layout: Layout::Envelope,
        };
        let published = Published::read(host)?;
        if let Some(stale) = published.staler_than(stamp.stamp) {
            host.log(LogLevel::Warn, &stale);
            return Ok(SyncOutcome::Rejected(RejectionReason::StaleVersion));
        }
        // The envelope first, then the stamp that tells followers to read it. An equal stamp is
        // written again too: it repairs an envelope a racing poller overwrote with an older one.
        host.shared_set(SNAPSHOT_ENTRY, &body, None)?;
        let stamp_bytes = stamp.encode().into_bytes();
        if host.shared_set(SNAPSHOT_STAMP_ENTRY, &stamp_bytes, Some(published.cas))?
            == SetOutcome::CasMismatch
        {
            // Another poller published meanwhile; fetch again next time instead of trusting
            // this ETag.
            return Ok(SyncOutcome::NotModified);
        }
        self.etag = etag;
        if published.layout() == Some(Layout::Chunked) {
            self.retire(host, &HashSet::new(), true)?;
        }
        if Some(stamp) == published.stamp {
            return Ok(SyncOutcome::NotModified);
        }
        let from = match source {
            Source::ControlPlane => "",
            Source::LastGoodFile => {
                " from the last-known-good file (the control plane could not be reached)"
            }
        };
        host.log(
            LogLevel::Info,
            &format!(
                "keyward sync: published policy version {} ({} keys){from}",
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
        let now = host.now_ms()? / 1000;
        Ok(verify_manifest(&bytes, &self.settings.public_keys, now).ok())
    }

    fn handle_manifest(
        &mut self,
        host: &impl SyncHost,
        metrics: &Metrics,
        body_size: usize,
    ) -> Result<Option<SyncOutcome>, HostError> {
        let headers = match Self::answer(host)? {
            Answer::Fresh(headers) => headers,
            // Unchanged: a load in progress goes on.
            Answer::NotModified => {
                return Ok(self.load.is_none().then_some(SyncOutcome::NotModified));
            }
            Answer::Failed(outcome) => return Ok(Some(outcome)),
        };
        let etag = header_text(&headers, "etag").map(str::to_owned);
        let body = host.call_response_body(body_size)?;
        let now = host.now_ms()? / 1000;
        let manifest = match verify_manifest(&body, &self.settings.public_keys, now) {
            Ok(manifest) => manifest,
            Err(rejected) => {
                host.log(
                    LogLevel::Error,
                    &format!("keyward sync: manifest rejected, last good policy stays: {rejected}"),
                );
                return Ok(Some(SyncOutcome::Rejected(RejectionReason::from(
                    &rejected,
                ))));
            }
        };
        if let Some(load) = &self.load {
            if load.manifest == manifest {
                return Ok(None);
            }
        }
        let published = Published::read(host)?;
        if let Some(stale) = published.staler_than(manifest.stamp()) {
            host.log(LogLevel::Warn, &stale);
            return Ok(Some(SyncOutcome::Rejected(RejectionReason::StaleVersion)));
        }
        // What shared data holds already: the published manifest's chunks, and those this
        // poller fetched for a manifest it did not publish (yet).
        let mut present: HashSet<String> = self.unpublished.iter().cloned().collect();
        if published.layout() == Some(Layout::Chunked) {
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
        let reused = manifest.chunks.len() - pending.len();
        if reused > 0 {
            host.increment_metric(metrics.chunks_reused, reused as i64);
        }
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
        metrics: &Metrics,
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
        if !matches!(Self::answer(host)?, Answer::Fresh(_)) {
            // Gone (the control plane moved on) or failing: start over from the manifest at the
            // next poll; the last good policy stays.
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
        let body = host.call_response_body(body_size)?;
        if !chunk.matches(&body) {
            host.log(
                LogLevel::Error,
                &format!(
                    "keyward sync: chunk {} of version {} does not match the signed manifest; load abandoned, last good policy stays",
                    chunk.sha256, load.manifest.version
                ),
            );
            // Counted as what it is, and as a failed signature check (the manifest signs it).
            count_sync(
                host,
                metrics,
                SyncOutcome::Rejected(RejectionReason::ChunkMismatch),
            );
            self.load = None;
            return Ok(Some(SyncOutcome::Rejected(RejectionReason::BadSignature)));
        }
        let entry = chunk.entry();
        host.shared_set(&entry, &body, None)?;
        self.unpublished.push(entry);
        load.pending.pop_front();
        host.increment_metric(metrics.chunks_fetched, 1);
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
        let published = Published::read(host)?;
        if let Some(stale) = published.staler_than(stamp.stamp) {
            host.log(LogLevel::Warn, &stale);
            return Ok(Some(SyncOutcome::Rejected(RejectionReason::StaleVersion)));
        }
        let previous = match published.layout() {
            Some(Layout::Chunked) => self.published_manifest(host)?,
            _ => None,
        };
        host.shared_set(MANIFEST_ENTRY, &load.manifest_bytes, None)?;
        if host.shared_set(
            SNAPSHOT_STAMP_ENTRY,
            stamp.encode().as_bytes(),
            Some(published.cas),
        )? == SetOutcome::CasMismatch
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
        if published.layout() == Some(Layout::Envelope) {
            host.shared_set(SNAPSHOT_ENTRY, b"", None)?;
        }
        self.retire(host, &keep, false)?;
        if Some(stamp) == published.stamp {
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

fn is_json(headers: &[Header]) -> bool {
    headers.iter().any(|(name, value)| {
        name == "content-type"
            && value
                .get(..16)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"application/json"))
    })
}
