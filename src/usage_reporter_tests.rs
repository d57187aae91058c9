//! The usage reporter against a fake host: batches, retries with the same id, acknowledgements.

use keyward_engine::metering::{key_counter_entry, project_counter_entry};
use keyward_engine::signed_snapshot::SigningKey;
use keyward_engine::usage_report::{verify_report, SIGNATURE_HEADER};

use super::*;
use crate::host::SharedData;
use crate::test_support::{metrics, FakeHost};
use crate::usage_activity::{flush, Activity, Usage};

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";

fn reporter() -> UsageReporter {
    let config = keyward_engine::config::PluginConfig::from_json(
        format!(
            r#"{{"sync": {{"cluster": "cp", "signing_keys": [{{"id": "ops-1", "secret_base64": "{SECRET}"}}], "poller": "lease"}}}}"#
        )
        .as_bytes(),
    )
    .expect("config");
    let sync = config.sync.expect("sync block");
    UsageReporter::new(&sync, "/v1/usage", 1000)
}

/// One VM settles 700 micro-USD for k1 in project p1 and flushes it.
fn spend(host: &FakeHost, cost: u64) {
    for entry in [key_counter_entry("k1"), project_counter_entry("p1")] {
        let mut counter = host.spend_counter(&entry);
        counter.settle(0, cost);
        host.shared_set(&entry, &counter.encode(), None)
            .expect("set");
    }
    let mut activity = Activity::default();
    activity.record(
        "k1",
        Some("p1"),
        Usage {
            cost_microusd: cost,
            requests: 1,
            input_tokens: 10,
            output_tokens: 5,
        },
        1_800_000_000,
    );
    flush(host, &mut activity);
    assert!(activity.is_empty(), "flushed");
}

#[test]
fn a_batch_is_signed_resent_with_the_same_id_and_acknowledged_once() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut reporter = reporter();
    spend(&host, 700);
    reporter.on_tick(&host, &metrics).expect("tick");
    let (headers, body) = host.posts()[0].clone();
    let signature = headers
        .iter()
        .find(|(n, _)| n == SIGNATURE_HEADER)
        .map(|(_, v)| v.clone());
    let key = SigningKey::from_base64("ops-1", SECRET).expect("key");
    let report = verify_report(&body, signature.as_deref(), &[key]).expect("signed report");
    assert_eq!(report.entries.len(), 1);
    assert_eq!(report.entries[0].cost_microusd, 700);
    assert_eq!(host.spend_counter(&key_counter_entry("k1")).reported, 700);

    // The acknowledgement is lost: the same bytes go again on the next interval.
    host.answer("503", &[], "");
    reporter.on_response(&host, &metrics, 1, 0);
    spend(&host, 50); // new spend waits for the next batch
    host.now_ms.set(1000);
    reporter.on_tick(&host, &metrics).expect("tick");
    assert_eq!(host.posts().len(), 2);
    assert_eq!(host.posts()[1].1, body, "a retry resends the same batch");

    host.answer(
        "200",
        &[],
        &format!(
            r#"{{"batch_id":"{}","version":9,"duplicate":true}}"#,
            report.batch_id
        ),
    );
    reporter.on_response(&host, &metrics, 2, 0);
    let key_counter = host.spend_counter(&key_counter_entry("k1"));
    assert_eq!(key_counter.acks, vec![(9, 700)]);
    assert_eq!(
        key_counter.committed(9),
        50,
        "version 9 includes the 700, not the later 50"
    );
    assert_eq!(
        host.spend_counter(&project_counter_entry("p1")).acks,
        vec![(9, 700)]
    );
    assert_eq!(host.count(metrics.metering.reports_duplicate), 1);

    // The next batch carries only the new spend, under a new id.
    host.now_ms.set(2000);
    reporter.on_tick(&host, &metrics).expect("tick");
    let (headers, body) = host.posts()[2].clone();
    let next = verify_report(
        &body,
        headers
            .iter()
            .find(|(n, _)| n == SIGNATURE_HEADER)
            .map(|(_, v)| v.as_str()),
        &[SigningKey::from_base64("ops-1", SECRET).expect("key")],
    )
    .expect("signed");
    assert_ne!(next.batch_id, report.batch_id);
    assert_eq!(next.entries[0].cost_microusd, 50);
}

#[test]
fn a_batch_the_control_plane_refuses_as_invalid_is_dropped_not_resent_forever() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut reporter = reporter();
    spend(&host, 700);
    reporter.on_tick(&host, &metrics).expect("tick");
    host.answer("400", &[], r#"{"error":{"code":"invalid_report"}}"#);
    reporter.on_response(&host, &metrics, 1, 0);
    host.now_ms.set(5000);
    reporter.on_tick(&host, &metrics).expect("tick");
    assert_eq!(host.posts().len(), 1, "nothing left to send");
    assert_eq!(
        host.spend_counter(&key_counter_entry("k1")).committed(100),
        700,
        "still counted here"
    );
}

#[test]
fn nothing_is_sent_without_usage() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut reporter = reporter();
    reporter.on_tick(&host, &metrics).expect("tick");
    assert!(host.posts().is_empty());
}
