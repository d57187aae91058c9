//! The usage reporter against a fake host: batches, retries with the same id, acknowledgements.

use keyward_engine::metering::{key_counter_entry, project_counter_entry};
use keyward_engine::usage_report::parse_report;

use super::*;
use crate::host::SharedData;
use crate::test_support::{metrics, FakeHost};
use crate::usage_activity::{flush, used, Activity, Usage};
use keyward_engine::calendar::Window;
use keyward_engine::window_counter::{
    window_counter_entry, CountedWindows, OwnerKind, WindowCounter,
};

const TOKEN: &str = "kwdp_test_token_0123456789";

fn reporter() -> UsageReporter {
    let config = keyward_engine::config::PluginConfig::from_json(
        format!(
            r#"{{"sync": {{"cluster": "cp", "token": "{TOKEN}", "public_keys": [{{"id": "ops-1", "public_key_base64": "{}"}}], "poller": "lease"}}}}"#,
            crate::test_support::public_key_base64()
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
    let usage = Usage {
        cost_microusd: cost,
        requests: 1,
        input_tokens: 10,
        output_tokens: 5,
    };
    activity.record(
        &used("k1", Some("p1"), &CountedWindows::default(), usage),
        1_800_000_000,
    );
    flush(host, &mut activity);
    assert!(activity.is_empty(), "flushed");
}

#[test]
fn a_batch_carries_the_token_is_resent_with_the_same_id_and_acknowledged_once() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut reporter = reporter();
    spend(&host, 700);
    reporter.on_tick(&host, &metrics).expect("tick");
    let (headers, body) = host.posts()[0].clone();
    let authorization = headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.clone());
    assert_eq!(authorization, Some(format!("Bearer {TOKEN}")));
    let report = parse_report(&body).expect("a report");
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
    let (_, body) = host.posts()[2].clone();
    let next = parse_report(&body).expect("a report");
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

#[test]
fn window_counters_named_by_a_batch_are_marked_sent_and_acknowledged() {
    let host = FakeHost::default();
    let metrics = metrics();
    let mut reporter = reporter();
    let day = Window::parse("2026-11-30").expect("day");
    let month = Window::parse("2026-11").expect("month");
    // The request was counted on the key's day and the project's month.
    let mut names = Vec::new();
    for (owner, id, window) in [
        (OwnerKind::Key, "k1", day),
        (OwnerKind::Project, "p1", month),
    ] {
        let name = window_counter_entry(owner, id, window);
        let mut counter = WindowCounter::default();
        counter.roll_to(window.index);
        counter.spend.settle(0, 700);
        counter.requests.settle(0, 1);
        counter.tokens.settle(0, 15);
        host.shared_set(&name, &counter.encode(), None)
            .expect("set");
        names.push(name);
    }
    let mut activity = Activity::default();
    let counted = CountedWindows {
        key: [Some(day.index), None, None],
        project: [None, None, Some(month.index)],
    };
    let usage = Usage {
        cost_microusd: 700,
        requests: 1,
        input_tokens: 10,
        output_tokens: 5,
    };
    activity.record(&used("k1", Some("p1"), &counted, usage), 1_800_000_000);
    flush(&host, &mut activity);
    reporter.on_tick(&host, &metrics).expect("tick");
    let (_, body) = host.posts()[0].clone();
    let report: keyward_engine::usage_report::UsageReport =
        serde_json::from_slice(&body).expect("json");
    assert_eq!(report.entries[0].key_windows, ["2026-11-30"]);
    assert_eq!(report.entries[0].project_windows, ["2026-11"]);
    let read = |name: &str| {
        let (bytes, _) = host.shared_get(name).expect("get").expect("present");
        WindowCounter::decode(&bytes).expect("counter")
    };
    assert_eq!(read(&names[0]).spend.reported, 700);
    assert_eq!(read(&names[1]).tokens.reported, 15);
    host.answer(
        "200",
        &[],
        &format!(r#"{{"batch_id":"{}","version":12}}"#, report.batch_id),
    );
    reporter.on_response(&host, &metrics, 1, 0);
    for name in &names {
        let counter = read(name);
        assert_eq!(
            (
                counter.spend.committed(12),
                counter.requests.committed(12),
                counter.tokens.committed(12)
            ),
            (0, 0, 0),
            "version 12 includes the window's usage"
        );
        assert_eq!(counter.requests.committed(11), 1);
    }
}
