//! The sync against a fake host whose shared data behaves like Envoy's (one CAS counter, a
//! missing key accepts any CAS, cas 0 overwrites).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use keyward_engine::signed_snapshot::{sign_snapshot, SigningKey};
use keyward_engine::sync::{Poller, SyncSettings};

use super::*;
use crate::host::{LogLevel, MetricKind, Telemetry};

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";

#[derive(Default)]
struct SharedMap {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
}

/// A canned control-plane answer: headers and body.
type CannedResponse = (Vec<(String, Vec<u8>)>, Vec<u8>);

#[derive(Default)]
struct FakeHost<'s> {
    shared: Option<&'s SharedMap>,
    now: Cell<u64>,
    calls: RefCell<Vec<Vec<(String, String)>>>,
    posted_bodies: RefCell<Vec<Vec<u8>>>,
    response: RefCell<Option<CannedResponse>>,
    metrics: RefCell<HashMap<u32, i64>>,
    logs: RefCell<Vec<String>>,
    cluster_missing: bool,
}

impl Telemetry for FakeHost<'_> {
    fn increment_metric(&self, id: u32, delta: i64) {
        *self.metrics.borrow_mut().entry(id).or_default() += delta;
    }
    fn record_metric(&self, _id: u32, _value: u64) {}
    fn log(&self, _level: LogLevel, message: &str) {
        self.logs.borrow_mut().push(message.to_owned());
    }
}

impl crate::host::SharedData for FakeHost<'_> {
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let shared = self.shared.ok_or(HostError { status: 10 })?;
        Ok(shared.entries.borrow().get(key).cloned())
    }
    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        let shared = self.shared.ok_or(HostError { status: 10 })?;
        let mut entries = shared.entries.borrow_mut();
        if let (Some((_, current)), Some(cas)) = (entries.get(key), cas) {
            if cas != 0 && *current != cas {
                return Ok(SetOutcome::CasMismatch);
            }
        }
        shared.next_cas.set(shared.next_cas.get() + 1);
        entries.insert(key.to_owned(), (value.to_vec(), shared.next_cas.get()));
        Ok(SetOutcome::Written)
    }
    fn now_ms(&self) -> Result<u64, HostError> {
        Ok(self.now.get())
    }
}

impl SyncHost for FakeHost<'_> {
    fn dispatch_get(
        &self,
        _cluster: &str,
        headers: &[(&str, &str)],
        _timeout_ms: u64,
    ) -> Result<u32, HostError> {
        if self.cluster_missing {
            return Err(HostError { status: 2 });
        }
        let mut calls = self.calls.borrow_mut();
        calls.push(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        );
        Ok(calls.len() as u32)
    }
    fn dispatch_post(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        self.posted_bodies.borrow_mut().push(body.to_vec());
        self.dispatch_get(cluster, headers, timeout_ms)
    }
    fn call_response_headers(&self) -> Result<Vec<Header>, HostError> {
        Ok(self
            .response
            .borrow()
            .as_ref()
            .map(|(h, _)| h.clone())
            .unwrap_or_default())
    }
    fn call_response_body(&self, _size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self
            .response
            .borrow()
            .as_ref()
            .map(|(_, b)| b.clone())
            .unwrap_or_default())
    }
}

impl FakeHost<'_> {
    fn respond(&self, status: &str, etag: &str, body: &str) {
        let headers = vec![
            (":status".to_owned(), status.as_bytes().to_vec()),
            ("etag".to_owned(), etag.as_bytes().to_vec()),
        ];
        *self.response.borrow_mut() = Some((headers, body.as_bytes().to_vec()));
    }
    fn count(&self, metrics: &Metrics, outcome: SyncOutcome) -> i64 {
        let id = metrics.sync_counter(outcome).expect("defined");
        self.metrics.borrow().get(&id).copied().unwrap_or(0)
    }
}

fn settings(poller: Poller) -> SyncSettings {
    SyncSettings {
        cluster: "cp".into(),
        authority: "cp".into(),
        path: "/v1/snapshot".into(),
        interval_ms: 1000,
        jitter_ms: 0,
        timeout_ms: 1000,
        signing_keys: vec![SigningKey::from_base64("k1", SECRET).expect("key")],
        poller,
    }
}

fn metrics() -> Metrics {
    let mut next = 0;
    Metrics::define(|_kind: MetricKind, _name: &str| {
        next += 1;
        Ok(next)
    })
    .expect("metrics")
}

fn envelope(version: u64, issued_at: u64) -> String {
    let snapshot = format!(
        r#"{{"version": {version}, "issued_at": {issued_at}, "projects": [{{"id": "p", "org": "o", "status": "active"}}], "keys": []}}"#
    );
    sign_snapshot(
        &snapshot,
        &SigningKey::from_base64("k1", SECRET).expect("key"),
    )
    .expect("signed")
}

/// One poll: tick, then answer the call the tick made.
fn poll(
    poller: &mut SnapshotPoller,
    host: &FakeHost<'_>,
    metrics: &Metrics,
    status: &str,
    body: &str,
) {
    host.now.set(host.now.get() + 5_000);
    poller.on_tick(host, metrics).expect("tick");
    let token = host.calls.borrow().len() as u32;
    host.respond(status, &format!("\"{token}\""), body);
    poller.on_response(host, metrics, token, body.len());
}

#[test]
fn publishes_verified_snapshots_and_followers_pick_them_up() {
    let shared = SharedMap::default();
    let host = FakeHost {
        shared: Some(&shared),
        ..FakeHost::default()
    };
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(settings(Poller::SyncService), "a".into());
    let mut follower = PolicyFollower::default();
    assert!(follower
        .refresh(&host, &settings(Poller::SyncService), None)
        .expect("ok")
        .is_none());

    poll(&mut poller, &host, &metrics, "200", &envelope(1, 100));
    assert_eq!(host.count(&metrics, SyncOutcome::Published), 1);
    let policy = follower
        .refresh(&host, &settings(Poller::SyncService), None)
        .expect("ok")
        .expect("new policy");
    assert_eq!(policy.version, 1);
    let current = Some(SnapshotStamp {
        version: 1,
        issued_at: 100,
    });
    assert!(follower
        .refresh(&host, &settings(Poller::SyncService), current)
        .expect("ok")
        .is_none());

    // The next poll sends the ETag; a 304 changes nothing.
    poll(&mut poller, &host, &metrics, "304", "");
    let last_call = host.calls.borrow().last().cloned().expect("a call");
    assert!(
        last_call.contains(&("if-none-match".to_owned(), "\"1\"".to_owned())),
        "{last_call:?}"
    );
    assert_eq!(host.count(&metrics, SyncOutcome::NotModified), 1);

    poll(&mut poller, &host, &metrics, "200", &envelope(2, 90));
    let policy = follower
        .refresh(&host, &settings(Poller::SyncService), current)
        .expect("ok")
        .expect("v2");
    assert_eq!(policy.version, 2);
}

#[test]
fn bad_pushes_never_replace_the_last_good_snapshot() {
    let shared = SharedMap::default();
    let host = FakeHost {
        shared: Some(&shared),
        ..FakeHost::default()
    };
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(settings(Poller::SyncService), "a".into());
    poll(&mut poller, &host, &metrics, "200", &envelope(5, 100));
    let published = shared.entries.borrow().get(SNAPSHOT_ENTRY).cloned();

    let tampered = envelope(6, 100).replace("\"active\"", "\"archived\"");
    poll(&mut poller, &host, &metrics, "200", &tampered);
    assert_eq!(
        host.count(&metrics, SyncOutcome::Rejected("bad_signature")),
        1
    );
    let unsigned = r#"{"version": 7, "issued_at": 1}"#;
    poll(&mut poller, &host, &metrics, "200", unsigned);
    assert_eq!(
        host.count(&metrics, SyncOutcome::Rejected("not_an_envelope")),
        1
    );
    poll(&mut poller, &host, &metrics, "200", &envelope(4, 500));
    assert_eq!(
        host.count(&metrics, SyncOutcome::Rejected("stale_version")),
        1
    );
    poll(&mut poller, &host, &metrics, "503", "oops");
    assert_eq!(host.count(&metrics, SyncOutcome::HttpError), 1);
    assert_eq!(
        shared.entries.borrow().get(SNAPSHOT_ENTRY).cloned(),
        published
    );
    let stamp = shared
        .entries
        .borrow()
        .get(SNAPSHOT_STAMP_ENTRY)
        .map(|(v, _)| v.clone());
    assert_eq!(stamp.as_deref(), Some(&b"5:100"[..]));
}

#[test]
fn unreachable_control_plane_is_counted_not_fatal() {
    let shared = SharedMap::default();
    let host = FakeHost {
        shared: Some(&shared),
        cluster_missing: true,
        ..FakeHost::default()
    };
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(settings(Poller::SyncService), "a".into());
    poller.on_tick(&host, &metrics).expect("tick");
    assert_eq!(host.count(&metrics, SyncOutcome::Unreachable), 1);
}

#[test]
fn only_the_lease_holder_polls_and_the_lease_moves_when_it_stops() {
    let shared = SharedMap::default();
    let host = FakeHost {
        shared: Some(&shared),
        ..FakeHost::default()
    };
    host.now.set(10_000);
    let metrics = metrics();
    let mut first = SnapshotPoller::new(settings(Poller::Lease), "vm1".into());
    let mut second = SnapshotPoller::new(settings(Poller::Lease), "vm2".into());
    first.on_tick(&host, &metrics).expect("tick");
    second.on_tick(&host, &metrics).expect("tick");
    assert!(first.holds_lease() && !second.holds_lease());
    assert_eq!(host.calls.borrow().len(), 1, "only the holder polled");

    // The holder keeps renewing while it ticks.
    host.now.set(12_000);
    first.on_tick(&host, &metrics).expect("tick");
    second.on_tick(&host, &metrics).expect("tick");
    assert!(first.holds_lease() && !second.holds_lease());

    // It stops ticking (its worker is gone): after the TTL the other VM takes over.
    host.now
        .set(12_000 + settings(Poller::Lease).lease_ttl_ms() + 1);
    second.on_tick(&host, &metrics).expect("tick");
    assert!(second.holds_lease());
    first.on_tick(&host, &metrics).expect("tick");
    assert!(!first.holds_lease());
}

#[test]
fn racing_creators_get_one_lease() {
    let shared = SharedMap::default();
    let host = FakeHost {
        shared: Some(&shared),
        ..FakeHost::default()
    };
    host.now.set(1);
    // Both saw the lease missing; the second create must fail on the CAS.
    assert_eq!(
        host.shared_set(LEASE_ENTRY, b"vm1:3001", Some(CREATE_ONLY))
            .expect("set"),
        SetOutcome::Written
    );
    assert_eq!(
        host.shared_set(LEASE_ENTRY, b"vm2:3001", Some(CREATE_ONLY))
            .expect("set"),
        SetOutcome::CasMismatch
    );
}

#[test]
fn every_vm_claims_a_different_instance_number() {
    let shared = SharedMap::default();
    let host = FakeHost {
        shared: Some(&shared),
        ..FakeHost::default()
    };
    let numbers: Vec<u64> = (0..5)
        .map(|_| claim_instance_number(&host).expect("claim"))
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
}
