//! Metering and rate limits through the glue and Envoy-like shared data (compare-and-swap):
//! reservations, settlement, release, limits. The rules themselves are tested in the engine
//! (`gate_tests`); these check that the glue carries them through a host.

use std::sync::Arc;

use keyward_engine::hash::sha256;
use keyward_engine::ledger::{Ledger, MemoryLedger};
use keyward_engine::metering::{key_counter_entry, project_counter_entry, SpendCounter};

use super::{FilterState, Flow, RequestFlow, SharedLedger, Stage};
use crate::test_support::{filter_state, FakeHost};

const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";
const KEY: &str = "ak_good1.s3cr3tS3cr3tS3cr3tXY";

/// $2 per 1M input tokens, $10 per 1M output tokens; a key capped at $1.00 with a soft cap.
fn state(key_extra: &str) -> Arc<FilterState> {
    state_with(
        r#""spend_cap_microusd": 5000000"#,
        &format!(r#""spend_cap_microusd": 1000000, "spend_soft_cap_microusd": 900000 {key_extra}"#),
    )
}

/// The metered route and prices above, with these fields on the project and on key `good1`.
fn state_with(project_fields: &str, key_fields: &str) -> Arc<FilterState> {
    let project_fields = if project_fields.is_empty() {
        String::new()
    } else {
        format!(", {project_fields}")
    };
    let key_fields = if key_fields.is_empty() {
        String::new()
    } else {
        format!(", {key_fields}")
    };
    let json = format!(
        r#"{{ "metering": {{"reservation_ceiling_microusd": 200000}},
          "routes": [{{"name": "chat", "match": {{"path_prefix": "/v1/"}}, "meter": true}}],
          "policy": {{"version": 4, "issued_at": 1799999999,
            "prices": [{{"model": "gpt-4o*", "input_microusd_per_mtok": 2000000, "output_microusd_per_mtok": 10000000}}],
            "projects": [{{"id": "proj_a", "org": "org_1", "status": "active" {project_fields}}}],
            "keys": [{{"id": "good1", "secret_sha256": "{}", "project": "proj_a", "status": "active" {key_fields}}}]}}}}"#,
        hex::encode(sha256(SECRET.as_bytes())),
    );
    filter_state(&json, true)
}

fn chat_host(body: &str) -> FakeHost {
    let host = FakeHost::with(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("authorization", &format!("Bearer {KEY}")),
        ("content-length", &body.len().to_string()),
    ]);
    *host.request_body.borrow_mut() = body.as_bytes().to_vec();
    host.now_ms.set(1_800_000_000_000);
    host
}

/// Runs one request through headers and body; returns its glue. The request headers are those
/// of `chat_host` again (the previous request stripped the key).
fn send(host: &FakeHost, state: &Arc<FilterState>) -> RequestFlow {
    send_counting_in(host, &mut SharedLedger(host), state)
}

/// `send`, with the counters in `ledger`.
fn send_counting_in(
    host: &FakeHost,
    ledger: &mut dyn Ledger,
    state: &Arc<FilterState>,
) -> RequestFlow {
    let body = host.request_body.borrow().clone();
    *host.headers.borrow_mut() = chat_host(&String::from_utf8_lossy(&body))
        .headers
        .borrow()
        .clone();
    host.reply.borrow_mut().take();
    let mut flow = RequestFlow::new(Arc::clone(state));
    let first = flow.on_request_headers(host, ledger, false);
    if matches!(flow.stage, Stage::AwaitingBody(_)) {
        assert_eq!(first, Flow::Pause, "the headers wait for the body");
        let size = host.request_body.borrow().len();
        flow.on_request_body(host, ledger, size, true);
    }
    flow
}

fn forwarded(flow: &RequestFlow) -> bool {
    matches!(flow.stage, Stage::Watching(_))
}

fn refused(flow: &RequestFlow, host: &FakeHost) -> bool {
    matches!(flow.stage, Stage::Done) && host.reply.borrow().is_some()
}

fn respond(host: &FakeHost, mut flow: RequestFlow, content_type: &str, body: &str, complete: bool) {
    assert!(forwarded(&flow), "expected a forwarded request: {flow:?}");
    *host.response_headers.borrow_mut() = vec![
        (":status".to_owned(), b"200".to_vec()),
        ("content-type".to_owned(), content_type.as_bytes().to_vec()),
    ];
    flow.on_response_headers(host, false);
    // Split the body into small chunks, as Envoy may.
    let bytes = body.as_bytes();
    for (index, chunk) in bytes.chunks(7).enumerate() {
        *host.response_chunk.borrow_mut() = chunk.to_vec();
        let last = complete && (index + 1) * 7 >= bytes.len();
        flow.on_response_body(host, chunk.len(), last);
    }
    flow.on_log(host, &mut SharedLedger(host));
}

const BODY: &str = r#"{"model": "gpt-4o-mini", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}"#;

#[test]
fn a_metered_request_reserves_then_settles_to_the_reported_usage() {
    let state = state("");
    let host = chat_host(BODY);
    let flow = send(&host, &state);
    let reserved = host.spend_counter(&key_counter_entry("good1")).reserved;
    // 24 input tokens (96 bytes / 4) at $2/M + 1000 output tokens at $10/M = 48 + 10000.
    assert_eq!(reserved, 10_048);
    assert_eq!(
        host.spend_counter(&project_counter_entry("proj_a"))
            .reserved,
        10_048
    );
    respond(
        &host,
        flow,
        "application/json",
        r#"{"id":"x","model":"gpt-4o-mini","usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200}}"#,
        true,
    );
    let key = host.spend_counter(&key_counter_entry("good1"));
    assert_eq!((key.reserved, key.settled), (0, 2000 + 2000));
    assert_eq!(
        host.spend_counter(&project_counter_entry("proj_a")).settled,
        4000
    );
    let activity = state
        .activity
        .as_ref()
        .expect("activity")
        .lock()
        .expect("activity")
        .clone();
    let entries = activity.into_entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].cost_microusd, 4000);
    assert_eq!(entries[0].project.as_deref(), Some("proj_a"));
    assert_eq!(entries[0].requests, 1);
}

#[test]
fn the_glue_hands_back_each_header_list_it_read_once_it_is_done_with_it() {
    let state = state("");
    let host = chat_host(BODY);
    let flow = send(&host, &state);
    let request_headers = host.recycled.borrow().clone();
    assert_eq!(
        request_headers.len(),
        1,
        "the request's list, after on_request_headers"
    );
    assert_eq!(
        request_headers[0].first().map(|(name, _)| name.as_str()),
        Some(":method")
    );
    respond(
        &host,
        flow,
        "application/json",
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        true,
    );
    let recycled = host.recycled.borrow();
    assert_eq!(
        recycled.len(),
        2,
        "and the response's, after on_response_headers"
    );
    assert_eq!(
        recycled[1].first().map(|(name, _)| name.as_str()),
        Some(":status")
    );
}

#[test]
fn the_cap_counts_what_other_requests_hold_and_spent() {
    let state = state("");
    // Spent $0.99 in this Envoy already: a request reserving $0.01 more fits, a second not.
    let host = chat_host(BODY);
    host.shared.borrow_mut().insert(
        key_counter_entry("good1"),
        (
            SpendCounter {
                settled: 980_000,
                ..SpendCounter::default()
            }
            .encode(),
            1,
        ),
    );
    let first = send(&host, &state);
    assert!(forwarded(&first), "{first:?}");
    assert!(
        host.response_headers.borrow().is_empty(),
        "nothing is sent to the response yet"
    );
    let second = send(&host, &state);
    assert!(refused(&second, &host));
    let reply = host.reply.borrow().clone().expect("a local reply");
    assert_eq!(reply.0, 403);
    assert!(reply.2.contains("spend_cap_exceeded"));
    // The refused request left no reservation behind.
    assert_eq!(
        host.spend_counter(&key_counter_entry("good1")).reserved,
        10_048
    );
}

#[test]
fn a_cut_stream_releases_its_reservation_and_pays_it_when_content_was_sent() {
    let state = state("");
    let host = chat_host(BODY);
    let flow = send(&host, &state);
    respond(
        &host,
        flow,
        "text/event-stream",
        "data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n",
        false,
    );
    let key = host.spend_counter(&key_counter_entry("good1"));
    assert_eq!(key.reserved, 0, "released");
    assert_eq!(
        key.settled, 10_048,
        "no usage seen: the reservation is charged"
    );
}

#[test]
fn a_request_that_never_got_a_response_is_not_charged() {
    let state = state("");
    let host = chat_host(BODY);
    let mut flow = send(&host, &state);
    assert!(forwarded(&flow));
    flow.on_log(&host, &mut SharedLedger(&host));
    let key = host.spend_counter(&key_counter_entry("good1"));
    assert_eq!((key.reserved, key.settled), (0, 0));
}

#[test]
fn openai_chat_streams_get_include_usage_added() {
    let state = state("");
    let host = chat_host(r#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
    let flow = send(&host, &state);
    assert!(forwarded(&flow));
    let body: serde_json::Value =
        serde_json::from_slice(&host.request_body.borrow()).expect("json body");
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(
        host.header("content-length"),
        Some(host.request_body.borrow().len().to_string())
    );
}

#[test]
fn unpriced_models_are_refused_for_capped_keys() {
    let state = state("");
    let host = chat_host(r#"{"model":"llama-3","messages":[]}"#);
    let flow = send(&host, &state);
    assert!(refused(&flow, &host));
    let reply = host.reply.borrow().clone().expect("reply");
    assert_eq!(reply.0, 403);
    assert!(reply.2.contains("model_not_allowed"));
}

#[test]
fn bodies_that_are_not_json_or_too_large_are_refused() {
    let state = state("");
    let host = chat_host("not json");
    let flow = send(&host, &state);
    assert!(refused(&flow, &host));
    assert_eq!(host.reply.borrow().as_ref().map(|r| r.0), Some(400));
    let host = chat_host(&format!(
        "{{\"model\":\"gpt-4o\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    ));
    let flow = send(&host, &state);
    assert!(refused(&flow, &host));
    assert_eq!(host.reply.borrow().as_ref().map(|r| r.0), Some(413));
}

#[test]
fn the_request_past_the_rpm_limit_gets_429_with_retry_after() {
    let state = state(r#", "rate_limits": {"requests_per_minute": 2}"#);
    let host = chat_host(BODY);
    for remaining in ["1", "0"] {
        let mut flow = send(&host, &state);
        assert!(forwarded(&flow), "allowed");
        host.response_headers.borrow_mut().clear();
        flow.on_response_headers(&host, false);
        let headers = host.response_headers.borrow().clone();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(value("x-ratelimit-limit-requests").as_deref(), Some("2"));
        assert_eq!(
            value("x-ratelimit-remaining-requests").as_deref(),
            Some(remaining)
        );
        flow.on_log(&host, &mut SharedLedger(&host));
    }
    let flow = send(&host, &state);
    assert!(refused(&flow, &host));
    let reply = host.reply.borrow().clone().expect("reply");
    assert_eq!(reply.0, 429);
    assert!(reply.1.iter().any(|(n, v)| n == "retry-after" && v == "30"));
    assert!(reply.2.contains("rate_limited"));
    assert_eq!(
        host.spend_counter(&key_counter_entry("good1")).reserved,
        0,
        "the refused request released its reservation"
    );
    host.now_ms.set(host.now_ms.get() + 30_000);
    assert!(forwarded(&send(&host, &state)));
}

#[test]
fn passing_the_soft_cap_warns_without_refusing() {
    let state = state("");
    let host = chat_host(BODY);
    host.shared.borrow_mut().insert(
        key_counter_entry("good1"),
        (
            SpendCounter {
                settled: 899_000,
                ..SpendCounter::default()
            }
            .encode(),
            1,
        ),
    );
    let mut flow = send(&host, &state);
    assert!(forwarded(&flow), "allowed");
    flow.on_response_headers(&host, false);
    assert!(host
        .response_headers
        .borrow()
        .iter()
        .any(|(n, v)| n == "x-keyward-spend-warning" && v == b"key-soft-cap"));
}

#[test]
fn budgets_without_a_cap_are_not_counted_per_request() {
    // No cap on the key, none on the project: nothing to enforce, so no shared-data write per
    // request; the spend still goes to the usage report.
    let state = state_with("", "");
    let host = chat_host(BODY);
    let flow = send(&host, &state);
    respond(
        &host,
        flow,
        "application/json",
        r#"{"usage":{"prompt_tokens":10,"completion_tokens":20}}"#,
        true,
    );
    assert!(host.shared.borrow().is_empty(), "no counter was touched");
    let entries = state
        .activity
        .as_ref()
        .expect("activity")
        .lock()
        .expect("activity")
        .clone()
        .into_entries();
    assert_eq!(
        entries[0].cost_microusd,
        20 + 200,
        "the spend is still reported"
    );
}

#[test]
fn a_host_with_its_own_ledger_keeps_the_counters_there() {
    // A native host keeps spend and rate counters in process memory, not in shared data.
    let state = state("");
    let host = chat_host(BODY);
    let mut ledger = MemoryLedger {
        now_ms: host.now_ms.get(),
        ..MemoryLedger::default()
    };
    let mut flow = send_counting_in(&host, &mut ledger, &state);
    assert!(forwarded(&flow));
    assert_eq!(ledger.total_reserved(), 2 * 10_048, "key and project");
    assert!(host.shared.borrow().is_empty(), "shared data untouched");
    flow.on_log(&host, &mut ledger);
    assert_eq!(
        ledger.total_reserved(),
        0,
        "released at the end of the stream"
    );

    // A ledger that fails refuses the request: never let through uncounted.
    let mut failing = MemoryLedger {
        fail_on: Some(1),
        ..MemoryLedger::default()
    };
    let flow = send_counting_in(&host, &mut failing, &state);
    assert!(refused(&flow, &host), "{flow:?}");
    assert_eq!(failing.total_reserved(), 0);
}

#[test]
fn a_body_ending_with_trailers_is_decided_before_it_goes_upstream() {
    // HTTP/2: the last body frame without end-of-stream, then trailers.
    let state = state("");
    let host = chat_host(r#"{"model":"o3","messages":[]}"#);
    let mut flow = RequestFlow::new(Arc::clone(&state));
    assert_eq!(
        flow.on_request_headers(&host, &mut SharedLedger(&host), false),
        Flow::Pause
    );
    let size = host.request_body.borrow().len();
    assert_eq!(
        flow.on_request_body(&host, &mut SharedLedger(&host), size, false),
        Flow::Pause
    );
    assert_eq!(
        flow.on_request_trailers(&host, &mut SharedLedger(&host)),
        Flow::Pause
    );
    let reply = host
        .reply
        .borrow()
        .clone()
        .expect("refused at the trailers");
    assert_eq!(reply.0, 403);
}
