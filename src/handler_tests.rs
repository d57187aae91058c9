//! The glue against a fake host: what is removed, added, replied and counted.

use keyward_engine::denial::DenyCode;
use keyward_engine::gate::SHADOW_HEADER;
use keyward_engine::hash::sha256;

use super::*;
use crate::test_support::{filter_state, FakeHost};

const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";
const KEY: &str = "ak_good1.s3cr3tS3cr3tS3cr3tXY";

/// Runs the headers step of one request.
fn headers_step(host: &FakeHost, state: &Arc<FilterState>) -> Flow {
    RequestFlow::new(Arc::clone(state)).on_request_headers(host, &mut SharedLedger(host), true)
}

fn state(extra: &str) -> Arc<FilterState> {
    let json = format!(
        r#"{{ {extra} "routes": [{{"name": "q", "match": {{"path_prefix": "/q"}}, "query_parameter": "api_key"}},
                                {{"name": "health", "match": {{"path_prefix": "/healthz"}}, "exempt": true}}],
          "policy": {{"version": 4, "issued_at": 1799999999,
            "projects": [{{"id": "proj_a", "org": "org_1", "status": "active"}}],
            "keys": [{{"id": "good1", "secret_sha256": "{}", "project": "proj_a", "status": "active", "label": "svc"}},
                     {{"id": "gone1", "secret_sha256": "{}", "project": "proj_a", "status": "revoked"}}]}}}}"#,
        hex::encode(sha256(SECRET.as_bytes())),
        hex::encode(sha256(SECRET.as_bytes())),
    );
    filter_state(&json, false)
}

#[test]
fn allowed_request_loses_its_key_and_gains_trusted_identity() {
    let state = state("");
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("authorization", &format!("Bearer {KEY}")),
        ("x-keyward-key-id", "spoofed"),
        ("x-keyward-project", "spoofed"),
    ]);
    assert_eq!(headers_step(&host, &state), Flow::Continue);
    assert_eq!(host.header("authorization"), None);
    assert_eq!(host.header("x-keyward-key-id").as_deref(), Some("good1"));
    assert_eq!(host.header("x-keyward-project").as_deref(), Some("proj_a"));
    assert_eq!(host.header("x-keyward-org").as_deref(), Some("org_1"));
    assert_eq!(
        host.header("x-keyward-environment").as_deref(),
        Some("live")
    );
    assert_eq!(host.count(state.metrics.allowed), 1);
    assert!(host.reply.borrow().is_none());
}

#[test]
fn identity_headers_turned_off_are_not_written_and_client_copies_still_go() {
    let state = state(r#""identity_headers": {"org": null, "environment": null},"#);
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("authorization", &format!("Bearer {KEY}")),
        ("x-keyward-org", "spoofed"),
        ("x-keyward-environment", "spoofed"),
    ]);
    assert_eq!(headers_step(&host, &state), Flow::Continue);
    assert_eq!(host.header("authorization"), None);
    assert_eq!(host.header("x-keyward-key-id").as_deref(), Some("good1"));
    assert_eq!(host.header("x-keyward-project").as_deref(), Some("proj_a"));
    assert_eq!(host.header("x-keyward-org"), None);
    assert_eq!(host.header("x-keyward-environment"), None);
    assert_eq!(host.count(state.metrics.allowed), 1);
}

#[test]
fn denied_request_gets_a_local_json_reply_and_a_log_line() {
    let state = state("");
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("x-request-id", "req-9"),
        ("authorization", &format!("Bearer ak_gone1.{SECRET}")),
    ]);
    assert_eq!(headers_step(&host, &state), Flow::Pause);
    let reply = host.reply.borrow().clone().expect("a local reply");
    assert_eq!(reply.0, 401);
    assert!(reply
        .1
        .contains(&("x-keyward-error".to_owned(), "key_revoked".to_owned())));
    assert!(reply.1.contains(&(
        "www-authenticate".to_owned(),
        "Bearer realm=\"keyward\"".to_owned()
    )));
    let body: serde_json::Value = serde_json::from_str(&reply.2).expect("json body");
    assert_eq!(body["error"]["code"], "key_revoked");
    assert_eq!(body["error"]["request_id"], "req-9");
    let denied = state.metrics.denied(DenyCode::KeyRevoked).expect("defined");
    assert_eq!(host.count(denied), 1);
    let logs = host.log_lines();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].contains(r#""key_id":"gone1""#) && logs[0].contains(r#""request_id":"req-9""#));
    assert!(!logs[0].contains(SECRET));
}

#[test]
fn shadow_mode_lets_denials_through_without_identity() {
    let state = state(r#""mode": "shadow","#);
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("x-api-key", "ak_nobody.wrongwrongwrongwrong"),
    ]);
    assert_eq!(headers_step(&host, &state), Flow::Continue);
    assert_eq!(host.header("x-api-key"), None);
    assert_eq!(
        host.header(SHADOW_HEADER).as_deref(),
        Some("invalid_api_key")
    );
    assert_eq!(host.header("x-keyward-key-id"), None);
    assert_eq!(host.count(state.metrics.shadow_denied), 1);
    assert!(host.reply.borrow().is_none());
}

#[test]
fn query_parameter_key_is_removed_from_the_path() {
    let state = state("");
    let host = FakeHost::with(&[(":path", &format!("/q/x?a=1&api_key={KEY}&b=2"))]);
    assert_eq!(headers_step(&host, &state), Flow::Continue);
    assert_eq!(host.header(":path").as_deref(), Some("/q/x?a=1&b=2"));
}

#[test]
fn a_refused_request_loses_its_query_parameter_key_too() {
    // The revoked key: refused, and Envoy's access log must not see it in `:path`.
    let state = state("");
    let host = FakeHost::with(&[(":path", &format!("/q/x?api_key=ak_gone1.{SECRET}&b=2"))]);
    assert_eq!(headers_step(&host, &state), Flow::Pause);
    assert_eq!(host.reply.borrow().as_ref().map(|r| r.0), Some(401));
    assert_eq!(host.header(":path").as_deref(), Some("/q/x?b=2"));
}

#[test]
fn exempt_route_still_drops_keys_and_spoofed_identity() {
    let state = state("");
    let host = FakeHost::with(&[
        (":path", "/healthz"),
        ("x-keyward-key-id", "spoofed"),
        ("authorization", &format!("Bearer {KEY}")),
    ]);
    assert_eq!(headers_step(&host, &state), Flow::Continue);
    assert_eq!(host.header("x-keyward-key-id"), None);
    assert_eq!(
        host.header("authorization"),
        None,
        "keys never go upstream, even when exempt"
    );
    assert_eq!(host.count(state.metrics.exempt), 1);
}

#[test]
fn host_failure_fails_closed() {
    let state = state("");
    let host = FakeHost {
        fail_header_read: true,
        ..FakeHost::default()
    };
    assert_eq!(headers_step(&host, &state), Flow::Pause);
    let reply = host.reply.borrow().clone().expect("a local reply");
    assert_eq!(reply.0, 500);
}
