//! The usage reporter against a fake host: batches, retries with the same id, acknowledgements.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use keyward_engine::metering::{key_counter_entry, project_counter_entry, SpendCounter};
use keyward_engine::request::Header;
use keyward_engine::signed_snapshot::SigningKey;
use keyward_engine::usage_report::{verify_report, SIGNATURE_HEADER};

use super::*;
use crate::host::{LogLevel, MetricKind, SharedData, Telemetry};
use crate::test_support::SharedMap;
use crate::usage_activity::{flush, Activity, Usage};

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";

/// One POST as dispatched: headers and body.
type Post = (Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
struct Fake {
    shared: SharedMap,
    now: Cell<u64>,
    posts: RefCell<Vec<Post>>,
    answer: RefCell<(String, Vec<u8>)>,
    metrics: RefCell<HashMap<u32, i64>>,
}

impl SharedData for Fake {
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(self.shared.get(key))
    }
    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        Ok(self.shared.set(key, value, cas))
    }
    fn now_ms(&self) -> Result<u64, HostError> {
        Ok(self.now.get())
    }
}

impl Telemetry for Fake {
    fn increment_metric(&self, id: u32, delta: i64) {
        *self.metrics.borrow_mut().entry(id).or_default() += delta;
    }
    fn record_metric(&self, _id: u32, _value: u64) {}
    fn log(&self, _level: LogLevel, _message: &str) {}
}

impl SyncHost for Fake {
    fn dispatch_get(&self, _: &str, _: &[(&str, &str)], _: u64) -> Result<u32, HostError> {
        Err(HostError::Status(2))
    }
    fn dispatch_post(
        &self,
        _cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        _timeout_ms: u64,
    ) -> Result<u32, HostError> {
        let headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        self.posts.borrow_mut().push((headers, body.to_vec()));
        Ok(self.posts.borrow().len() as u32)
    }
    fn call_response_headers(&self) -> Result<Vec<Header>, HostError> {
        Ok(vec![(
            ":status".to_owned(),
            self.answer.borrow().0.as_bytes().to_vec(),
        )])
    }
    fn call_response_body(&self, _size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self.answer.borrow().1.clone())
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

fn counter(host: &Fake, entry: &str) -> SpendCounter {
    host.shared
        .entries
        .borrow()
        .get(entry)
        .and_then(|(bytes, _)| SpendCounter::decode(bytes))
        .unwrap_or_default()
}

/// One VM settles 700 micro-USD for k1 in project p1 and flushes it.
fn spend(host: &Fake, cost: u64) {
    for entry in [key_counter_entry("k1"), project_counter_entry("p1")] {
        let mut counter = counter(host, &entry);
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

fn answer(host: &Fake, status: &str, body: &str) {
    *host.answer.borrow_mut() = (status.to_owned(), body.as_bytes().to_vec());
}

#[test]
fn a_batch_is_signed_resent_with_the_same_id_and_acknowledged_once() {
    let host = Fake::default();
    let metrics = metrics();
    let mut reporter = reporter();
    spend(&host, 700);
    reporter.on_tick(&host, &metrics).expect("tick");
    let (headers, body) = host.posts.borrow()[0].clone();
    let signature = headers
        .iter()
        .find(|(n, _)| n == SIGNATURE_HEADER)
        .map(|(_, v)| v.clone());
    let key = SigningKey::from_base64("ops-1", SECRET).expect("key");
    let report = verify_report(&body, signature.as_deref(), &[key]).expect("signed report");
    assert_eq!(report.entries.len(), 1);
    assert_eq!(report.entries[0].cost_microusd, 700);
    assert_eq!(counter(&host, &key_counter_entry("k1")).reported, 700);

    // The acknowledgement is lost: the same bytes go again on the next interval.
    answer(&host, "503", "");
    reporter.on_response(&host, &metrics, 1, 0);
    spend(&host, 50); // new spend waits for the next batch
    host.now.set(1000);
    reporter.on_tick(&host, &metrics).expect("tick");
    assert_eq!(host.posts.borrow().len(), 2);
    assert_eq!(
        host.posts.borrow()[1].1,
        body,
        "a retry resends the same batch"
    );

    answer(
        &host,
        "200",
        &format!(
            r#"{{"batch_id":"{}","version":9,"duplicate":true}}"#,
            report.batch_id
        ),
    );
    reporter.on_response(&host, &metrics, 2, 0);
    let key_counter = counter(&host, &key_counter_entry("k1"));
    assert_eq!(key_counter.acks, vec![(9, 700)]);
    assert_eq!(
        key_counter.committed(9),
        50,
        "version 9 includes the 700, not the later 50"
    );
    assert_eq!(
        counter(&host, &project_counter_entry("p1")).acks,
        vec![(9, 700)]
    );
    assert_eq!(
        host.metrics
            .borrow()
            .get(&metrics.metering.reports_duplicate),
        Some(&1)
    );

    // The next batch carries only the new spend, under a new id.
    host.now.set(2000);
    reporter.on_tick(&host, &metrics).expect("tick");
    let next = verify_report(
        &host.posts.borrow()[2].1,
        host.posts.borrow()[2]
            .0
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
    let host = Fake::default();
    let metrics = metrics();
    let mut reporter = reporter();
    spend(&host, 700);
    reporter.on_tick(&host, &metrics).expect("tick");
    answer(&host, "400", r#"{"error":{"code":"invalid_report"}}"#);
    reporter.on_response(&host, &metrics, 1, 0);
    host.now.set(5000);
    reporter.on_tick(&host, &metrics).expect("tick");
    assert_eq!(host.posts.borrow().len(), 1, "nothing left to send");
    assert_eq!(
        counter(&host, &key_counter_entry("k1")).committed(100),
        700,
        "still counted here"
    );
}

#[test]
fn nothing_is_sent_without_usage() {
    let host = Fake::default();
    let metrics = metrics();
    let mut reporter = reporter();
    reporter.on_tick(&host, &metrics).expect("tick");
    assert!(host.posts.borrow().is_empty());
}
