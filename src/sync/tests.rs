//! The sync against the fake host: publication by the poller, the lease, and what followers
//! pick up, in the envelope and the chunked layouts.

use keyward_engine::chunked::{sign_manifest, split_snapshot, SplitSnapshot};
use keyward_engine::signed_snapshot::sign_snapshot;
use keyward_engine::snapshot::{KeyStatus, Policy, Snapshot};
use keyward_engine::sync::{
    LastGoodSource, Layout, Poller, SnapshotStamp, SyncSettings, LEASE_ENTRY, MANIFEST_ENTRY,
    SNAPSHOT_ENTRY, SNAPSHOT_STAMP_ENTRY,
};

use super::*;
use crate::host::{SetOutcome, SharedData, CREATE_ONLY};
use crate::metrics::{Metrics, RejectionReason, SyncOutcome};
use crate::test_support::{metrics, signing_key, FakeHost};

/// Signed snapshots in these tests expire long after anything the fake clock reaches.
const LIFETIME: u64 = 1_000_000_000;
const TOKEN: &str = "kwdp_sync_test_token";

fn settings(poller: Poller) -> SyncSettings {
    SyncSettings {
        cluster: "cp".into(),
        authority: "cp".into(),
        path: "/v1/snapshot".into(),
        layout: keyward_engine::sync::Layout::Envelope,
        chunk_path: "/v1/snapshot/chunks/".into(),
        interval_ms: 1000,
        jitter_ms: 0,
        timeout_ms: 1000,
        public_keys: vec![signing_key().public_key()],
        token: Some(TOKEN.into()),
        last_good: None,
        poller,
    }
}

fn envelope(version: u64, issued_at: u64) -> String {
    let snapshot = format!(
        r#"{{"version": {version}, "issued_at": {issued_at}, "expires_at": {}, "projects": [{{"id": "p", "org": "o", "status": "active"}}], "keys": []}}"#,
        issued_at + LIFETIME
    );
    sign_snapshot(&snapshot, &signing_key()).expect("signed")
}

/// Looks at the published snapshot until the follower is done (one slice per call).
fn follow(
    follower: &mut PolicyFollower,
    host: &FakeHost,
    settings: &SyncSettings,
    current: Option<SnapshotStamp>,
) -> Option<Policy> {
    for _ in 0..100_000 {
        match follower.refresh(host, settings, current, 0).expect("ok") {
            Followed::Loading => continue,
            Followed::Updated(policy) => return Some(*policy),
            Followed::Nothing | Followed::Rejected => return None,
        }
    }
    panic!("the follower never finished");
}

/// One poll: tick, then answer the call the tick made.
fn poll(poller: &mut SnapshotPoller, host: &FakeHost, metrics: &Metrics, status: &str, body: &str) {
    host.now_ms.set(host.now_ms.get() + 5_000);
    poller.on_tick(host, metrics).expect("tick");
    let token = host.calls.borrow().len() as u32;
    host.answer(status, &[("etag", &format!("\"{token}\""))], body);
    poller.on_response(host, metrics, token, body.len());
}

#[test]
fn publishes_verified_snapshots_and_followers_pick_them_up() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(settings(Poller::SyncService), "a".into());
    let mut follower = PolicyFollower::default();
    assert!(follow(&mut follower, &host, &settings(Poller::SyncService), None).is_none());

    poll(&mut poller, &host, &metrics, "200", &envelope(1, 100));
    assert_eq!(host.sync_count(&metrics, SyncOutcome::Published), 1);
    let policy =
        follow(&mut follower, &host, &settings(Poller::SyncService), None).expect("new policy");
    assert_eq!(policy.version, 1);
    let current = Some(SnapshotStamp {
        version: 1,
        issued_at: 100,
    });
    assert!(follow(
        &mut follower,
        &host,
        &settings(Poller::SyncService),
        current
    )
    .is_none());

    // The next poll sends the ETag; a 304 changes nothing.
    poll(&mut poller, &host, &metrics, "304", "");
    let last_call = host.calls.borrow().last().cloned().expect("a call");
    assert!(
        last_call.header("if-none-match") == Some("\"1\""),
        "{last_call:?}"
    );
    assert_eq!(host.sync_count(&metrics, SyncOutcome::NotModified), 1);

    poll(&mut poller, &host, &metrics, "200", &envelope(2, 90));
    let policy = follow(
        &mut follower,
        &host,
        &settings(Poller::SyncService),
        current,
    )
    .expect("v2");
    assert_eq!(policy.version, 2);
}

#[test]
fn bad_pushes_never_replace_the_last_good_snapshot() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(settings(Poller::SyncService), "a".into());
    poll(&mut poller, &host, &metrics, "200", &envelope(5, 100));
    let published = host.shared.borrow().get(SNAPSHOT_ENTRY).cloned();

    let tampered = envelope(6, 100).replace("\"active\"", "\"archived\"");
    poll(&mut poller, &host, &metrics, "200", &tampered);
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::BadSignature)
        ),
        1
    );
    let unsigned = r#"{"version": 7, "issued_at": 1}"#;
    poll(&mut poller, &host, &metrics, "200", unsigned);
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::NotAnEnvelope)
        ),
        1
    );
    poll(&mut poller, &host, &metrics, "200", &envelope(4, 500));
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::StaleVersion)
        ),
        1
    );
    // A newer version, but past its expiry at the poller's clock: a stale capture replayed.
    host.now_ms.set(2_000 * 1000);
    let expired = sign_snapshot(
        r#"{"version": 9, "issued_at": 1000, "expires_at": 2000, "projects": [], "keys": []}"#,
        &signing_key(),
    )
    .expect("signed");
    poll(&mut poller, &host, &metrics, "200", &expired);
    assert_eq!(
        host.sync_count(&metrics, SyncOutcome::Rejected(RejectionReason::Expired)),
        1
    );
    let symmetric = envelope(10, 100).replace("signed-snapshot.v2", "signed-snapshot.v1");
    poll(&mut poller, &host, &metrics, "200", &symmetric);
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::SymmetricSignature)
        ),
        1
    );
    let other_key = keyward_engine::signature::SigningKey::from_seed("k1", &[6; 32]).expect("key");
    let forged = sign_snapshot(
        r#"{"version": 11, "issued_at": 100, "expires_at": 9999999999, "projects": [], "keys": []}"#,
        &other_key,
    )
    .expect("signed");
    poll(&mut poller, &host, &metrics, "200", &forged);
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::BadSignature)
        ),
        2
    );
    // Every poll carried the data-plane token.
    assert!(host
        .calls
        .borrow()
        .iter()
        .all(|call| call.header("authorization") == Some(&format!("Bearer {TOKEN}")[..])));
    poll(&mut poller, &host, &metrics, "500", "oops");
    assert_eq!(host.sync_count(&metrics, SyncOutcome::HttpError), 1);
    // Envoy's own answer when the control plane does not answer: plain text, not JSON.
    let unreachable_before = host.sync_count(&metrics, SyncOutcome::Unreachable);
    poll(
        &mut poller,
        &host,
        &metrics,
        "503",
        "upstream connect error or disconnect/reset before headers",
    );
    assert_eq!(
        host.sync_count(&metrics, SyncOutcome::Unreachable),
        unreachable_before + 1
    );
    assert_eq!(host.shared.borrow().get(SNAPSHOT_ENTRY).cloned(), published);
    assert_eq!(stamp(&host).as_deref(), Some("5:100"));
}

#[test]
fn unreachable_control_plane_is_counted_not_fatal() {
    let host = FakeHost {
        cluster_missing: true,
        ..FakeHost::default()
    };
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(settings(Poller::SyncService), "a".into());
    poller.on_tick(&host, &metrics).expect("tick");
    assert_eq!(host.sync_count(&metrics, SyncOutcome::Unreachable), 1);
}

const LAST_GOOD_AUTHORITY: &str = "keyward-last-good";
const ENVOY_UNREACHABLE: &str = "upstream connect error or disconnect/reset before headers";

fn last_good_settings() -> SyncSettings {
    SyncSettings {
        last_good: Some(LastGoodSource {
            cluster: "last_good".into(),
            authority: LAST_GOOD_AUTHORITY.into(),
            path: "/last-good.json".into(),
        }),
        ..settings(Poller::SyncService)
    }
}

fn last_good_calls(host: &FakeHost) -> usize {
    host.calls
        .borrow()
        .iter()
        .filter(|call| call.cluster == "last_good")
        .count()
}

/// Answers the call dispatched last (the fallback after a failed poll).
fn answer_last(
    poller: &mut SnapshotPoller,
    host: &FakeHost,
    metrics: &Metrics,
    status: &str,
    body: &str,
) {
    let token = host.calls.borrow().len() as u32;
    host.answer(status, &[], body);
    poller.on_response(host, metrics, token, body.len());
}

#[test]
fn a_start_without_the_control_plane_publishes_the_last_good_file_once() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(last_good_settings(), "a".into());
    poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
    assert_eq!(last_good_calls(&host), 1);
    let last = host.calls.borrow().last().cloned().expect("a call");
    assert_eq!(last.cluster, "last_good");
    assert_eq!(last.header(":authority"), Some(LAST_GOOD_AUTHORITY));
    assert_eq!(last.header(":path"), Some("/last-good.json"));
    // Envoy serves the file only to the data-plane token.
    assert_eq!(
        last.header("authorization"),
        Some(&format!("Bearer {TOKEN}")[..])
    );
    answer_last(&mut poller, &host, &metrics, "200", &envelope(3, 100));
    assert_eq!(stamp(&host).as_deref(), Some("3:100"));
    assert_eq!(host.sync_count(&metrics, SyncOutcome::Published), 1);
    assert!(host
        .log_lines()
        .iter()
        .any(|line| line.contains("version 3") && line.contains("last-known-good file")));
    let (_, fresh) = poller
        .take_fresh()
        .expect("the poller's own follower gets it");
    assert_eq!(fresh.version, 3);
    // Still down: nothing more is asked of the file.
    poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
    assert_eq!(last_good_calls(&host), 1);
    // The control plane is back with a newer snapshot: it replaces the file's.
    poll(&mut poller, &host, &metrics, "200", &envelope(4, 200));
    assert_eq!(stamp(&host).as_deref(), Some("4:200"));
}

#[test]
fn a_published_policy_is_never_replaced_from_the_file() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(last_good_settings(), "a".into());
    poll(&mut poller, &host, &metrics, "200", &envelope(5, 100));
    poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
    poll(&mut poller, &host, &metrics, "500", "{}");
    assert_eq!(last_good_calls(&host), 0);
    assert_eq!(stamp(&host).as_deref(), Some("5:100"));
}

#[test]
fn a_tampered_expired_or_empty_file_leaves_the_filter_failing_closed() {
    let expired = sign_snapshot(
        r#"{"version": 9, "issued_at": 1, "expires_at": 2, "projects": [], "keys": []}"#,
        &signing_key(),
    )
    .expect("signed");
    let cases = [
        (
            envelope(6, 100).replace("\"active\"", "\"archived\""),
            Some(RejectionReason::BadSignature),
            "last-known-good file rejected (bad_signature)",
        ),
        (
            expired,
            Some(RejectionReason::Expired),
            "last-known-good file rejected (expired)",
        ),
        (
            r#"{"version": 7, "issued_at": 1}"#.to_owned(),
            Some(RejectionReason::NotAnEnvelope),
            "last-known-good file rejected (not_an_envelope)",
        ),
        (String::new(), None, "the last-known-good file is empty"),
    ];
    for (body, reason, log) in cases {
        let host = FakeHost::default();
        let metrics = metrics();
        let mut poller = SnapshotPoller::new(last_good_settings(), "a".into());
        poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
        answer_last(&mut poller, &host, &metrics, "200", &body);
        assert_eq!(stamp(&host), None, "{log}");
        assert_eq!(host.entry(SNAPSHOT_ENTRY), None, "{log}");
        if let Some(reason) = reason {
            assert_eq!(host.sync_count(&metrics, SyncOutcome::Rejected(reason)), 1);
        }
        assert!(
            host.log_lines().iter().any(|line| line.contains(log)),
            "{log}: {:?}",
            host.log_lines()
        );
        // Envoy read the file once at start: it is not asked again.
        poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
        assert_eq!(last_good_calls(&host), 1, "{log}");
    }
}

#[test]
fn a_listener_refusing_the_token_is_said_once() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(last_good_settings(), "a".into());
    poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
    answer_last(&mut poller, &host, &metrics, "404", "");
    assert!(host
        .log_lines()
        .iter()
        .any(|line| line.contains("last-known-good listener answered 404")));
    poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
    assert_eq!(last_good_calls(&host), 1);
    assert_eq!(stamp(&host), None);
}

#[test]
fn a_file_not_served_yet_is_asked_again_after_the_next_failed_poll() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut poller = SnapshotPoller::new(last_good_settings(), "a".into());
    poll(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
    answer_last(&mut poller, &host, &metrics, "503", ENVOY_UNREACHABLE);
    assert_eq!(stamp(&host), None);
    poll(&mut poller, &host, &metrics, "500", "{}");
    assert_eq!(last_good_calls(&host), 2);
    answer_last(&mut poller, &host, &metrics, "200", &envelope(2, 100));
    assert_eq!(stamp(&host).as_deref(), Some("2:100"));
}

#[test]
fn only_the_lease_holder_polls_and_the_lease_moves_when_it_stops() {
    let host = FakeHost::default();
    host.now_ms.set(10_000);
    let metrics = metrics();
    let mut first = SnapshotPoller::new(settings(Poller::Lease), "vm1".into());
    let mut second = SnapshotPoller::new(settings(Poller::Lease), "vm2".into());
    first.on_tick(&host, &metrics).expect("tick");
    second.on_tick(&host, &metrics).expect("tick");
    assert!(first.holds_lease() && !second.holds_lease());
    assert_eq!(host.calls.borrow().len(), 1, "only the holder polled");

    // The holder keeps renewing while it ticks.
    host.now_ms.set(12_000);
    first.on_tick(&host, &metrics).expect("tick");
    second.on_tick(&host, &metrics).expect("tick");
    assert!(first.holds_lease() && !second.holds_lease());

    // It stops ticking (its worker is gone): after the TTL the other VM takes over.
    host.now_ms
        .set(12_000 + settings(Poller::Lease).lease_ttl_ms() + 1);
    second.on_tick(&host, &metrics).expect("tick");
    assert!(second.holds_lease());
    first.on_tick(&host, &metrics).expect("tick");
    assert!(!first.holds_lease());
}

#[test]
fn racing_creators_get_one_lease() {
    let host = FakeHost::default();
    host.now_ms.set(1);
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
    let host = FakeHost::default();
    let numbers: Vec<u64> = (0..5)
        .map(|_| claim_instance_number(&host).expect("claim"))
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
}

// ---- chunked layout -------------------------------------------------------------------------

const MANIFEST_PATH: &str = "/v1/snapshot/manifest";
const CHUNK_PATH: &str = "/v1/snapshot/chunks/";

fn chunked_settings(poller: Poller) -> SyncSettings {
    SyncSettings {
        path: MANIFEST_PATH.into(),
        layout: Layout::Chunked,
        ..settings(poller)
    }
}

/// `keys` keys, ids k0000.., those in `revoked` revoked, split into chunks of about `per`.
/// A sync service polling the chunked layout, on a fresh host.
fn chunked_service() -> (FakeHost, Metrics, SyncSettings, SnapshotPoller) {
    let settings = chunked_settings(Poller::SyncService);
    let poller = SnapshotPoller::new(settings.clone(), "a".into());
    (FakeHost::default(), metrics(), settings, poller)
}

fn chunked(
    version: u64,
    issued_at: u64,
    keys: usize,
    revoked: &[usize],
    per: usize,
) -> SplitSnapshot {
    let records: Vec<String> = (0..keys)
        .map(|i| {
            let status = if revoked.contains(&i) { "revoked" } else { "active" };
            format!(
                r#"{{"id": "k{i:05}", "secret_sha256": "{}", "project": "p", "status": "{status}"}}"#,
                hex::encode(keyward_engine::hash::sha256(format!("s{i}").as_bytes()))
            )
        })
        .collect();
    let json = format!(
        r#"{{"version": {version}, "issued_at": {issued_at}, "expires_at": {}, "projects": [{{"id": "p", "org": "o", "status": "active"}}], "keys": [{}]}}"#,
        issued_at + LIFETIME,
        records.join(",")
    );
    let snapshot: Snapshot = serde_json::from_str(&json).expect("snapshot");
    split_snapshot(snapshot, per).expect("split")
}

/// Serves `split` as the control plane would: its signed manifest and its chunks.
fn serve_chunked(host: &FakeHost, split: &SplitSnapshot) {
    let json = serde_json::to_string(&split.manifest).expect("json");
    let envelope = sign_manifest(&json, &signing_key()).expect("signed");
    let etag = format!(
        "\"{}-{}\"",
        split.manifest.version, split.manifest.issued_at
    );
    host.route(MANIFEST_PATH, "200", &etag, envelope.as_bytes());
    for (chunk, body) in split.manifest.chunks.iter().zip(&split.chunks) {
        host.route(
            &format!("{CHUNK_PATH}{}", chunk.sha256),
            "200",
            "",
            body.as_bytes(),
        );
    }
}

/// The published stamp entry.
fn stamp(host: &FakeHost) -> Option<String> {
    host.entry(SNAPSHOT_STAMP_ENTRY)
        .map(|value| String::from_utf8(value).expect("utf-8"))
}

fn entry_len(host: &FakeHost, entry: &str) -> Option<usize> {
    host.entry(entry).map(|value| value.len())
}

/// Answers the poller's call in flight from the routes; false when nothing was in flight.
fn serve_one(poller: &mut SnapshotPoller, host: &FakeHost, metrics: &Metrics) -> bool {
    let Some(token) = poller.call_in_flight() else {
        return false;
    };
    let size = host.answer_from_routes(token);
    poller.on_response(host, metrics, token, size);
    true
}

/// A poll: time moves past the interval, a tick, then every call answered until none is left.
fn poll_all(poller: &mut SnapshotPoller, host: &FakeHost, metrics: &Metrics) {
    host.now_ms.set(host.now_ms.get() + 5_000);
    poller.on_tick(host, metrics).expect("tick");
    for _ in 0..10_000 {
        if !serve_one(poller, host, metrics) {
            return;
        }
    }
    panic!("the poller never stopped calling");
}

#[test]
fn chunked_snapshots_publish_only_when_complete_and_fetch_only_changed_chunks() {
    let (host, metrics, settings, mut poller) = chunked_service();
    let v1 = chunked(1, 100, 2000, &[], 250);
    assert_eq!(v1.manifest.chunks.len(), 8);
    serve_chunked(&host, &v1);

    // Manifest and three chunks: nothing is published yet, followers see nothing.
    host.now_ms.set(5_000);
    poller.on_tick(&host, &metrics).expect("tick");
    for _ in 0..4 {
        assert!(serve_one(&mut poller, &host, &metrics));
    }
    assert_eq!(stamp(&host), None);
    let mut follower = PolicyFollower::default();
    assert!(follow(&mut follower, &host, &settings, None).is_none());
    assert_eq!(host.count(metrics.chunks_fetched), 3);

    while serve_one(&mut poller, &host, &metrics) {}
    assert_eq!(stamp(&host).as_deref(), Some("1:100:chunked"));
    assert_eq!(host.sync_count(&metrics, SyncOutcome::Published), 1);
    assert_eq!(host.count(metrics.chunks_fetched), 8);

    // The follower builds it a slice at a time (budget 0: one slice per look).
    let mut slices = 0;
    let policy = loop {
        slices += 1;
        match follower.refresh(&host, &settings, None, 0).expect("ok") {
            Followed::Loading => continue,
            Followed::Updated(policy) => break *policy,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(slices > 8, "{slices} slices");
    assert_eq!(policy.keys().len(), 2000);
    assert_eq!(
        policy.key_by_id("k00005").map(|k| k.status),
        Some(KeyStatus::Active)
    );
    let current = Some(SnapshotStamp {
        version: 1,
        issued_at: 100,
    });
    assert!(follow(&mut follower, &host, &settings, current).is_none());

    // Unchanged: a conditional poll, nothing fetched.
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(host.sync_count(&metrics, SyncOutcome::NotModified), 1);
    assert_eq!(host.count(metrics.chunks_fetched), 8);

    // One key revoked: one chunk changes, only it is fetched; the replaced one is emptied.
    let v2 = chunked(2, 200, 2000, &[5], 250);
    let replaced: Vec<_> = v1
        .manifest
        .chunks
        .iter()
        .filter(|c| !v2.manifest.chunks.contains(c))
        .collect();
    assert_eq!(replaced.len(), 1);
    serve_chunked(&host, &v2);
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(stamp(&host).as_deref(), Some("2:200:chunked"));
    assert_eq!(host.count(metrics.chunks_fetched), 9);
    assert_eq!(host.count(metrics.chunks_reused), 7);
    assert_eq!(entry_len(&host, &replaced[0].entry()), Some(0));
    let policy = follow(&mut follower, &host, &settings, current).expect("v2");
    assert_eq!(policy.version, 2);
    assert_eq!(
        policy.key_by_id("k00005").map(|k| k.status),
        Some(KeyStatus::Revoked)
    );
}

#[test]
fn tampered_or_missing_chunks_never_replace_the_last_good_policy() {
    let (host, metrics, settings, mut poller) = chunked_service();
    serve_chunked(&host, &chunked(1, 100, 600, &[], 100));
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(stamp(&host).as_deref(), Some("1:100:chunked"));

    // v2 with one chunk's bytes altered in transit.
    let v2 = chunked(2, 200, 600, &[1, 2, 3], 100);
    serve_chunked(&host, &v2);
    let victim = &v2.manifest.chunks[v2.manifest.chunks.len() - 1];
    let path = format!("{CHUNK_PATH}{}", victim.sha256);
    let tampered = v2.chunks[v2.chunks.len() - 1].replace("revoked", "active ");
    host.route(&path, "200", "", tampered.as_bytes());
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::ChunkMismatch)
        ),
        1
    );
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::BadSignature)
        ),
        1
    );
    assert_eq!(stamp(&host).as_deref(), Some("1:100:chunked"));

    // The chunk is gone from the control plane: counted, nothing changes.
    host.routes.borrow_mut().remove(&path);
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(host.sync_count(&metrics, SyncOutcome::HttpError), 1);
    assert_eq!(stamp(&host).as_deref(), Some("1:100:chunked"));

    // A tampered manifest is refused outright.
    let json = serde_json::to_string(&v2.manifest).expect("json");
    let envelope = sign_manifest(&json, &signing_key())
        .expect("signed")
        .replace("\"version\":2", "\"version\":3");
    host.route(MANIFEST_PATH, "200", "\"x\"", envelope.as_bytes());
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(
        host.sync_count(
            &metrics,
            SyncOutcome::Rejected(RejectionReason::BadSignature)
        ),
        2
    );

    // Repaired: v2 goes through, reusing the chunks fetched by the failed attempts.
    serve_chunked(&host, &v2);
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(stamp(&host).as_deref(), Some("2:200:chunked"));
    let mut follower = PolicyFollower::default();
    let policy = follow(&mut follower, &host, &settings, None).expect("v2");
    assert_eq!(policy.version, 2);
}

#[test]
fn followers_never_use_a_torn_set_and_restart_on_a_newer_stamp() {
    let (host, metrics, settings, mut poller) = chunked_service();
    let v1 = chunked(1, 100, 1000, &[], 200);
    serve_chunked(&host, &v1);
    poll_all(&mut poller, &host, &metrics);

    // A chunk entry goes missing under a follower: it waits, and never yields a policy.
    let mut follower = PolicyFollower::default();
    for _ in 0..3 {
        assert!(matches!(
            follower.refresh(&host, &settings, None, 0).expect("ok"),
            Followed::Loading
        ));
    }
    let last = v1.manifest.chunks.last().expect("a chunk").entry();
    let saved = host.shared.borrow().get(&last).cloned().expect("stored");
    host.shared_set(&last, b"", None).expect("set");
    assert!(follow(&mut follower, &host, &settings, None).is_none());
    assert!(
        follower.is_building(),
        "keeps what it has, waits for the chunk"
    );
    // A different (wrong) chunk under that name: still nothing.
    host.shared_set(&last, b"{\"id\":\"x\"}\n", None)
        .expect("set");
    assert!(follow(&mut follower, &host, &settings, None).is_none());
    host.shared.borrow_mut().insert(last, saved);
    assert_eq!(
        follow(&mut follower, &host, &settings, None).map(|p| p.keys().len()),
        Some(1000)
    );

    // Mid-build, a newer snapshot is published: the follower drops its half-built one.
    let mut second = PolicyFollower::default();
    for _ in 0..3 {
        second.refresh(&host, &settings, None, 0).expect("ok");
    }
    serve_chunked(&host, &chunked(2, 200, 1000, &[7], 200));
    poll_all(&mut poller, &host, &metrics);
    let policy = follow(&mut second, &host, &settings, None).expect("v2");
    assert_eq!(policy.version, 2);
    assert_eq!(
        policy.key_by_id("k00007").map(|k| k.status),
        Some(KeyStatus::Revoked)
    );
}

#[test]
fn a_newer_manifest_mid_load_replaces_the_one_being_loaded() {
    let (host, metrics, settings, mut poller) = chunked_service();
    let v1 = chunked(1, 100, 1600, &[], 200);
    serve_chunked(&host, &v1);
    host.now_ms.set(5_000);
    poller.on_tick(&host, &metrics).expect("tick");
    for _ in 0..3 {
        assert!(serve_one(&mut poller, &host, &metrics));
    }
    assert!(poller.is_loading());

    // The control plane moves on to v2 (different keys in every chunk); it still serves v1's
    // chunks for a while, as `keyward serve` does.
    let v2 = chunked(2, 200, 900, &[], 200);
    serve_chunked(&host, &v2);
    host.now_ms.set(host.now_ms.get() + 5_000);
    for _ in 0..1000 {
        if !serve_one(&mut poller, &host, &metrics) {
            break;
        }
    }
    assert_eq!(stamp(&host).as_deref(), Some("2:200:chunked"));
    assert_eq!(host.sync_count(&metrics, SyncOutcome::Published), 1);
    // The v1 chunks fetched before were emptied when v2 was published.
    for chunk in &v1.manifest.chunks[..3] {
        assert_ne!(entry_len(&host, &chunk.entry()), Some(chunk.bytes as usize));
    }
    let mut follower = PolicyFollower::default();
    let policy = follow(&mut follower, &host, &settings, None).expect("v2");
    assert_eq!((policy.version, policy.keys().len()), (2, 900));
}

#[test]
fn lease_handover_mid_load_keeps_the_fetched_chunks() {
    let host = FakeHost::default();
    let metrics = metrics();
    let settings = chunked_settings(Poller::Lease);
    let mut first = SnapshotPoller::new(settings.clone(), "vm1".into());
    let mut second = SnapshotPoller::new(settings.clone(), "vm2".into());
    let v1 = chunked(1, 100, 1600, &[], 200);
    serve_chunked(&host, &v1);
    host.now_ms.set(10_000);
    first.on_tick(&host, &metrics).expect("tick");
    second.on_tick(&host, &metrics).expect("tick");
    assert!(first.holds_lease() && !second.holds_lease());
    // The manifest and three chunks, then the holder's worker stops.
    for _ in 0..4 {
        assert!(serve_one(&mut first, &host, &metrics));
    }
    assert_eq!(stamp(&host), None);

    host.now_ms.set(10_000 + settings.lease_ttl_ms() + 1);
    second.on_tick(&host, &metrics).expect("tick");
    assert!(second.holds_lease());
    while serve_one(&mut second, &host, &metrics) {}
    assert_eq!(stamp(&host).as_deref(), Some("1:100:chunked"));
    // Three chunks were found in shared data and checked, the rest fetched.
    assert_eq!(host.count(metrics.chunks_reused), 3);
    assert_eq!(host.count(metrics.chunks_fetched), 8);

    // The old holder comes back: it waits, and its late answers change nothing.
    first.on_tick(&host, &metrics).expect("tick");
    assert!(!first.holds_lease());
    let mut follower = PolicyFollower::default();
    let policy = follow(&mut follower, &host, &settings, None).expect("v1");
    assert_eq!(policy.keys().len(), 1600);
}

#[test]
fn switching_layouts_frees_the_other_layouts_entries() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut envelope_poller = SnapshotPoller::new(settings(Poller::SyncService), "a".into());
    poll(
        &mut envelope_poller,
        &host,
        &metrics,
        "200",
        &envelope(1, 100),
    );
    // The envelope poller hands its parsed policy over instead of a second parse.
    let (fresh_stamp, policy) = envelope_poller.take_fresh().expect("fresh");
    assert_eq!((fresh_stamp.as_slice(), policy.version), (&b"1:100"[..], 1));

    let settings = chunked_settings(Poller::SyncService);
    let mut poller = SnapshotPoller::new(settings.clone(), "a".into());
    let v2 = chunked(2, 100, 300, &[], 100);
    serve_chunked(&host, &v2);
    poll_all(&mut poller, &host, &metrics);
    assert_eq!(stamp(&host).as_deref(), Some("2:100:chunked"));
    assert_eq!(entry_len(&host, SNAPSHOT_ENTRY), Some(0));
    let mut follower = PolicyFollower::default();
    let current = Some(SnapshotStamp {
        version: 1,
        issued_at: 100,
    });
    assert_eq!(
        follow(&mut follower, &host, &settings, current).map(|p| p.version),
        Some(2)
    );

    // And back: the manifest and its chunks are emptied.
    poll(
        &mut envelope_poller,
        &host,
        &metrics,
        "200",
        &envelope(3, 100),
    );
    assert_eq!(stamp(&host).as_deref(), Some("3:100"));
    assert_eq!(entry_len(&host, MANIFEST_ENTRY), Some(0));
    for chunk in &v2.manifest.chunks {
        assert_eq!(entry_len(&host, &chunk.entry()), Some(0));
    }
}

#[test]
fn an_expired_published_snapshot_is_not_followed_and_warned_about_once() {
    let host = FakeHost::default();
    let expired = sign_snapshot(
        r#"{"version": 3, "issued_at": 10, "expires_at": 20, "projects": [], "keys": []}"#,
        &signing_key(),
    )
    .expect("signed");
    host.shared_set(SNAPSHOT_ENTRY, expired.as_bytes(), None)
        .expect("set");
    host.shared_set(SNAPSHOT_STAMP_ENTRY, b"3:10", None)
        .expect("set");
    host.now_ms.set(30_000);
    let settings = settings(Poller::SyncService);
    let mut follower = PolicyFollower::default();
    for _ in 0..5 {
        assert!(follow(&mut follower, &host, &settings, None).is_none());
    }
    let warnings = host
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("not usable") && line.contains("expired"))
        .count();
    assert_eq!(warnings, 1, "{:?}", host.log_lines());
}
